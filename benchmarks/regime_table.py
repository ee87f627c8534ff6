"""The regime table: several experiments' tasks side by side, each with its measured properties and
who won (README, Headline results).

    python benchmarks/regime_table.py runs/benchmark runs/benchmark-mines [runs/benchmark-chain]

Each folder is a finished `prefixrl experiment`; its report's summary.json holds its task's row
(prefixrl.regime: read from the experiment's own screening, collection, calibration and runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefixrl.regime import regime_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="finished experiment folders")
    args = parser.parse_args(argv)
    rows = []
    for folder in args.folders:
        summary = folder / "report" / "summary.json"
        if not summary.exists():
            print(f"{folder}: no report/summary.json; finish the experiment first "
                  f"(prefixrl experiment CONFIG --out {folder})", file=sys.stderr)
            return 2
        row = json.loads(summary.read_text()).get("regime")
        if row is None:
            print(f"{summary}: written before the regime row existed; rerun with --report-only", file=sys.stderr)
            return 2
        rows.append(row)
    print(regime_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
