"""Hydra multirun over the whole chain, one job per combination, each under the sweep folder.

    python pipeline/sweep.py -m model=rnn,gru trainer.gradient_clip_val=0,1
    python pipeline/sweep.py -m model=rnn,gru hydra/launcher=joblib hydra.launcher.n_jobs=2
    python pipeline/sweep.py -m +experiment=clipping          (a preset's own sweep)
    python pipeline/sweep.py -m +experiment=tune_clipping     (an Optuna study: hydra/sweeper=optuna, rnnlab.search)

Every job runs the same stage functions as `dvc repro` (rnnlab.stages: prepare → vocab → train →
sample → evaluate); jobs with the same corpus/vocabulary settings share the prepared data. All runs are
children of one MLflow parent run, and the comparison report (multirun/<time>/report/report.md) is
logged to it. The work is in rnnlab.sweep.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from rnnlab import sweep, tracking
from rnnlab.config import check_overrides
from rnnlab.errors import entry_point


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def job(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    params = sweep.job_params(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task),
                              hc.launcher.get("n_jobs", 1) or 1)
    from rnnlab import search  # lightning, optuna: after the cheap checks of main()

    trial = search.job_trial(hc.sweeper)  # None unless the optuna sweeper launched this job
    with sweep.prefixed_output(f"[job {hc.job.num} {params.tracking.run_name}] "):  # parallel logs interleave
        return entry_point(sweep.run_job)(params, trial)  # a user error ends the job with one line, exit 2


@entry_point
def main() -> None:
    first = check_overrides([a for a in sys.argv[1:] if not a.startswith(("-", "hydra"))])  # one-line errors
    uri = tracking.tracking_uri(first.tracking)
    tracking.check_store(uri)
    try:
        job()
    except BaseException as err:  # a job's error or Ctrl-C: the parent run must not stay RUNNING
        sweep.end_parent(uri, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise


if __name__ == "__main__":
    main()
