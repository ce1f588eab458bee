"""`labquant-report <folder>`: rebuild the report and every figure of a lab folder, of an
ablation sweep folder or of a quantization sweep folder from the results already there (no
training, no quantization)."""

from __future__ import annotations

import argparse
import sys

from labquant.cli.app import fail
from labquant.errors import UserError
from labquant.reports.rebuild import rebuild_report

PROG = "labquant-report"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rebuild report.md / report.json and the figures of a labquant-lab folder, "
        "ablation.md / .csv / _curves.png of a labquant-train sweep folder, or pareto.md / .csv "
        "/ .png of a labquant-quantize sweep folder (PTQ / QAT jobs), from its results.json "
        "files.",
    )
    parser.add_argument("folder", help="a labquant-lab folder or a multirun sweep folder")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = rebuild_report(args.folder)
    except UserError as error:
        fail(PROG, error)
    print(report)


if __name__ == "__main__":
    main()
