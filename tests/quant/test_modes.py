"""The mode matrix really runs, and its table covers every combination (CPU half, ~2 s)."""

from __future__ import annotations

import faulthandler
import itertools
import multiprocessing as mp
import os
import signal
from collections.abc import Iterator

import pytest
import torch
from scripts import mode_matrix as modes
from scripts.mode_matrix import NO_GPU, STEPS, Cell, render_markdown, run_isolated, run_matrix

Results = dict[modes.Key, Cell]


@pytest.fixture(scope="module")
def results() -> Results:
    return run_matrix("x86")


def test_every_combination_has_a_cell(results: Results) -> None:
    expected = set(itertools.product(modes.DEVICES, modes.FUSIONS, modes.MODES, STEPS))
    assert set(results) == expected


def test_unfused_ptq_works_in_eval_on_cpu(results: Results) -> None:
    """The lab's baseline: observers, convert, int8 forward, no fusion needed."""
    for step in ("prepare", "convert_ptq", "int8_ptq"):
        assert results[("cpu", "unfused", "eval", step)] == Cell(True, "ok"), step


def test_recommended_recipes_work_on_cpu(results: Results) -> None:
    """What workflow.prepare_ptq / prepare_qat do: eval fusion for PTQ, QAT fusion in train."""
    assert results[("cpu", "fused (eval)", "eval", "int8_ptq")].ok
    assert results[("cpu", "fused (QAT)", "train", "int8_qat")].ok


def test_prepare_qat_in_eval_fails_with_torchs_message(results: Results) -> None:
    cell = results[("cpu", "unfused", "eval", "prepare_qat")]
    assert cell.ok is False
    assert cell.text.startswith("FAIL: AssertionError:")
    assert results[("cpu", "unfused", "eval", "convert_qat")].text == "skipped (prepare failed)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU wording")
def test_cuda_cells_without_gpu_say_so(results: Results) -> None:
    cuda = [c for (d, *_), c in results.items() if d == "cuda"]
    assert cuda and all(c == Cell(None, NO_GPU) for c in cuda)
    assert f"CUDA: not tested ({NO_GPU})." in modes.summarize(results)


def test_markdown_has_a_row_per_fusion_and_mode(results: Results) -> None:
    text = render_markdown(results, "x86", machine="test box")
    assert "## CPU" in text and "## CUDA" in text and "## What this means" in text
    for fusion in modes.FUSIONS:
        for mode in modes.MODES:
            rows = [line for line in text.splitlines() if line.startswith(f"| {fusion} | {mode} |")]
            assert len(rows) == len(modes.DEVICES)
            assert all(row.count(" | ") == len(STEPS) + 1 for row in rows)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_a_crashing_step_becomes_a_cell() -> None:
    """A segfault in a kernel must cost one cell, not the whole matrix."""

    def steps() -> Iterator[Cell]:
        yield Cell(True, "ok")
        faulthandler.disable()  # in the child only: keeps pytest's traceback dump out of the log
        os.kill(os.getpid(), signal.SIGSEGV)
        yield Cell(True, "ok")  # never reached

    cells = run_isolated(steps, 3)
    assert cells[0] == Cell(True, "ok")
    assert cells[1].ok is False and "SIGSEGV" in cells[1].text
    assert cells[2] == Cell(None, "skipped (process crashed)")
