"""Compare runs, read back from MLflow: a table under 120 columns here, a Markdown report with plots in --out.

    python pipeline/report.py --sweep multirun/2026-11-27_10-00-00     # the runs of a Hydra sweep
    python pipeline/report.py --dvc                                    # every DVC experiment's run
    python pipeline/report.py --dvc elfin-ship toxic-loft --out reports/vanishing

With a sweep, the report is also logged to the sweep's MLflow parent run. The work is rnnlab.report.compare.
"""

import argparse
from pathlib import Path

from rnnlab.errors import entry_point
from rnnlab.params import load


@entry_point
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--sweep", type=Path, help="a Hydra sweep folder (multirun/...)")
    group.add_argument("--dvc", nargs="*", metavar="EXP", help="DVC experiment names (none: all)")
    parser.add_argument("--out", type=Path, help="output folder (default: <sweep>/report or reports/dvc)")
    args = parser.parse_args()

    from rnnlab import report

    table, count, path = report.compare(load().tracking, args.sweep, args.dvc, args.out)
    print(f"{table}\n\n{count} run{'s' * (count != 1)}; val_* are the saved (best) model's; the full report with "
          f"samples and plots: {path}")


if __name__ == "__main__":
    main()
