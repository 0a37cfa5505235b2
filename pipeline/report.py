"""Compare runs, read back from MLflow: a table under 120 columns here, a Markdown report with plots in --out.

    python pipeline/report.py --sweep multirun/2026-11-27_10-00-00     # the runs of a Hydra sweep
    python pipeline/report.py --dvc                                    # every DVC experiment's run
    python pipeline/report.py --dvc elfin-ship toxic-loft --out reports/vanishing

With a sweep, the report is also logged to the sweep's MLflow parent run.
"""

import argparse
from pathlib import Path

from rnnlab.config import load_params, section
from rnnlab.errors import UserError, entry_point


@entry_point
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--sweep", type=Path, help="a Hydra sweep folder (multirun/...)")
    group.add_argument("--dvc", nargs="*", metavar="EXP", help="DVC experiment names (none: all)")
    parser.add_argument("--out", type=Path, help="output folder (default: <sweep>/report or reports/dvc)")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    from rnnlab import report, tracking

    spec = section(load_params(), tracking.TrackingSpec, "tracking")
    client = MlflowClient(tracking.tracking_uri(spec))
    parent = None
    if args.sweep:
        experiment = client.get_experiment_by_name(spec.experiment)
        found = client.search_runs([experiment.experiment_id] if experiment else [],
                                   f"tags.`rnnlab.sweep_dir` = '{args.sweep.resolve()}'")
        if not found:
            raise UserError(f"no MLflow parent run for the sweep {args.sweep}; give the folder "
                            "`python pipeline/sweep.py -m ...` printed (multirun/<date>_<time>)")
        parent = found[0].info.run_id
        runs = report.children(client, parent)
    else:
        runs = report.dvc_experiments(client, spec.experiment, args.dvc)
    if not runs:
        raise UserError("no runs to compare; run a sweep or `dvc exp run` first")
    out = args.out or (args.sweep / "report" if args.sweep else Path("reports/dvc"))
    table = report.write(client, runs, out, title=f"Comparison of {len(runs)} runs")
    if parent:
        client.log_artifacts(parent, str(out), "report")
    print(f"{table}\n\n{len(runs)} runs; val_* are the saved (best) model's; the full report with samples and "
          f"plots: {out / 'report.md'}")


if __name__ == "__main__":
    main()
