"""Hydra multirun over the whole chain, one job per combination, each under the sweep folder.

    python pipeline/sweep.py -m model=rnn,gru trainer.gradient_clip_val=0,1
    python pipeline/sweep.py -m model=rnn,gru hydra/launcher=joblib hydra.launcher.n_jobs=2
    python pipeline/sweep.py -m +experiment=clipping          (a preset's own sweep)

Every job runs the same stage functions as `dvc repro` (prepare → vocab → train → sample → evaluate);
jobs with the same corpus/vocabulary settings share the prepared data. All runs are children of one
MLflow parent run, and the comparison report (multirun/<time>/report/report.md) is logged to it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stage scripts beside this one

import evaluate  # noqa: E402
import hydra  # noqa: E402
import prepare  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402
import vocab  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from rnnlab import sweep  # noqa: E402
from rnnlab import tracking  # noqa: E402
from rnnlab.config import check_overrides, section  # noqa: E402
from rnnlab.errors import UserError, entry_point  # noqa: E402
from rnnlab.lit import NonFiniteError  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def job(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    n_jobs = hc.launcher.get("n_jobs", 1) or 1
    with open_dict(cfg):
        cfg.pop("hydra", None)
    params = sweep.job_params(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task), n_jobs)
    try:
        sweep.once(params.paths.prepared, lambda: prepare.run(params))
        sweep.once(params.paths.vocab, lambda: vocab.run(params))
        metrics = train.run(params)
        sample.run(params)
        evaluate.run(params)
    except NonFiniteError as err:  # a diverged run is a result of the sweep (e.g. no clipping), not a mistake
        print(f"job diverged: {err}", file=sys.stderr)
        return float("nan")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return metrics.get("val_loss")  # what an optimising sweeper (e.g. Optuna) would minimise


@entry_point
def main() -> None:
    first = check_overrides([a for a in sys.argv[1:] if not a.startswith(("-", "hydra"))])  # one-line errors
    tracking.check_reachable(tracking.tracking_uri(section(first, tracking.TrackingSpec, "tracking")))
    job()


if __name__ == "__main__":
    main()
