"""Really try every fuse / prepare / convert / int8 x CPU-CUDA x train-eval combination.

Writes docs/quantization-modes.md from what the installed torch actually does (see
scripts/mode_matrix.py, a documentation tool kept out of the package). Needs no Hydra, so it
runs with `PYTHONPATH=src:scripts python3 scripts/quantization_modes.py` on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mode_matrix import QCONFIGS, render_markdown, run_matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/quantization-modes.md"))
    parser.add_argument("--qconfig", choices=list(QCONFIGS), default="x86")
    args = parser.parse_args()
    start = time.perf_counter()
    results = run_matrix(args.qconfig)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render_markdown(results, args.qconfig))
    print(f"wrote {args.output} ({len(results)} cells, {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
