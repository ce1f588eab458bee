"""Golden vectors: the reference's codes for a few test images, and the checker beside them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from labquant.hw import check_golden
from labquant.hw.program import IntegerProgram
from labquant.hw.reference import RunResult

GOLDEN_FILE = "golden.npz"
CHECKER_FILE = "check_golden.py"


def write_golden(
    folder: Path, program: IntegerProgram, images: np.ndarray, result: RunResult
) -> Path:
    """golden.npz (input, input_codes, every layer's output codes, index.json) and the
    standalone checker script next to it; `result` is the reference's run on `images`."""
    folder.mkdir(parents=True, exist_ok=True)
    layers = [op["output"] for op in program.ops if op["op"] != "quantize"]
    first = program.ops[0]["output"]
    index = {
        "layers": layers,
        "images": len(images),
        "input_codes": f"output of {first} (uint8)",
        "check": f"python {CHECKER_FILE} {GOLDEN_FILE} yours.npz",
    }
    arrays = {name: result.codes[name] for name in layers}
    path = folder / GOLDEN_FILE
    np.savez_compressed(
        path,
        **{"index.json": np.array(json.dumps(index))},
        input=np.asarray(images, dtype=np.float32),
        input_codes=result.codes[first],
        **arrays,
    )
    shutil.copyfile(check_golden.__file__, folder / CHECKER_FILE)
    return path
