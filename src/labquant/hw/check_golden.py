"""Check a hardware implementation's outputs against labquant golden vectors (numpy only).

    python check_golden.py golden.npz yours.npz

golden.npz (written by `labquant-export golden=N`) holds `input` (the float images, N x C x H x
W), `input_codes` (their uint8 codes after the input quantization) and, for every layer of the
integer model in execution order, its output codes under the layer's name (uint8, N x C x H x
W, or N x classes for the last one); `index.json` lists the layers in order. yours.npz must hold
the same layer names with the same shapes; a layer you do not produce may be left out (it is
reported as skipped), but every layer you include is compared code for code.
Exit status: 0 when every compared code matches, 1 otherwise.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def compare(golden_path: str, yours_path: str) -> list[str]:
    """One line per layer (`ok`, `skipped` or its mismatches); a line starting `FAIL` fails."""
    lines = []
    with np.load(golden_path, allow_pickle=False) as golden, np.load(yours_path) as yours:
        layers = json.loads(str(golden["index.json"]))["layers"]
        for name in ["input_codes", *layers]:
            if name not in yours.files:
                lines.append(f"skipped {name}: not in {yours_path}")
                continue
            want, got = golden[name], yours[name]
            if want.shape != got.shape:
                lines.append(f"FAIL {name}: shape {got.shape}, expected {want.shape}")
                continue
            diff = np.abs(want.astype(np.int64) - got.astype(np.int64))
            wrong = int((diff > 0).sum())
            if wrong:
                first = tuple(int(i) for i in np.argwhere(diff > 0)[0])
                lines.append(
                    f"FAIL {name}: {wrong} of {diff.size} codes differ (max {int(diff.max())}); "
                    f"first at {first}: {int(got[first])}, expected {int(want[first])}"
                )
            else:
                lines.append(f"ok {name}: {diff.size} codes")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    lines = compare(*argv)
    print("\n".join(lines))
    failed = any(line.startswith("FAIL") for line in lines)
    compared = any(line.startswith(("ok", "FAIL")) for line in lines)
    print("golden check: " + ("FAILED" if failed or not compared else "passed"))
    return 1 if failed or not compared else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
