"""Hydra multirun over the whole chain, one job per combination, each under the sweep folder.

    python pipeline/sweep.py -m model=rnn,gru trainer.gradient_clip_val=0,1
    python pipeline/sweep.py -m model=rnn,gru hydra/launcher=joblib hydra.launcher.n_jobs=2
    python pipeline/sweep.py -m +experiment=clipping          (a preset's own sweep)
    python pipeline/sweep.py -m +experiment=tune_clipping     (an Optuna study: hydra/sweeper=optuna, rnnlab.search)

Every job runs the same stage functions as `dvc repro` (rnnlab.stages: prepare → vocab → train →
sample → evaluate); jobs with the same corpus/vocabulary settings share the prepared data. All runs are
children of one MLflow parent run, and the comparison report (multirun/<time>/report/report.md) is
logged to it. The work is in rnnlab.sweep.

SIGTERM or SIGINT (Ctrl-C) stops the whole sweep, whatever the launcher: the jobs' processes are killed,
unfinished runs marked KILLED (and an Optuna study's unfinished trials FAIL), the parent run KILLED; one
line (for a study: the command that resumes it), exit 128 + signal.
"""

import signal
import sys
from pathlib import Path

from rnnlab import runtime
from rnnlab.errors import Stopped, entry_point

if __name__ == "__main__":
    runtime.catch_signals()  # first: a signal during the seconds of imports below is one line too
try:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, open_dict

    from rnnlab import sweep, tracking
    from rnnlab.config import check_overrides
except Stopped as stop:
    print(f"error: stopped by {signal.Signals(stop.exit_status - 128).name} before the sweep started",
          file=sys.stderr)
    sys.exit(stop.exit_status)


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def job(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    params = sweep.job_params(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task),
                              hc.launcher.get("n_jobs", 1) or 1)
    from rnnlab import trial as optuna_trial  # lightning, optuna: after the cheap checks of main()

    trial = optuna_trial.job_trial(hc.sweeper)  # None unless the optuna sweeper launched this job
    with sweep.prefixed_output(f"[job {hc.job.num} {params.tracking.run_name}] "):  # parallel logs interleave
        return sweep.checked_job(params, trial)  # a user error ends the job with one line, exit 2


@entry_point
def main() -> None:
    uri = None
    try:
        first = check_overrides([a for a in sys.argv[1:] if not a.startswith(("-", "hydra"))])  # one-line errors
        uri = tracking.tracking_uri(first.tracking)
        tracking.check_store(uri)
        job()
    except (Stopped, KeyboardInterrupt) as err:  # no job computes on, nothing stays RUNNING
        sweep.ignore_signals()  # the way out must not be cut short by a second Ctrl-C
        sweep.stop_workers()
        if uri:
            sweep.end_parent(uri, "KILLED")
        raise sweep.stopped(err) from None
    except BaseException:  # a job's error: the parent run must not stay RUNNING
        if uri:
            sweep.end_parent(uri, "FAILED")
        raise


if __name__ == "__main__":
    main()
