"""Hyper-parameter search: an Optuna study run through Hydra's sweeper interface.

    python pipeline/sweep.py -m hydra/sweeper=optuna +experiment=tune_awd_small
    python pipeline/sweep.py -m hydra/sweeper=optuna hydra.sweeper.n_trials=20 \
        'optim.lr=tag(log, interval(1e-4, 1e-2))' 'trainer.gradient_clip_val=choice(0.25, 1, 5)'

The sweeper (`hydra_plugins.rnnlab_optuna`, a thin shell: Hydra only loads plugins from that namespace)
calls `run`. Every setting and the search space are checked first (rnnlab.studyspec: one line each).
Each trial is one job of the usual sweep (rnnlab.sweep.run_job, through the configured launcher: basic,
joblib for parallel trials, submitit for SLURM) and one child MLflow run of the sweep's parent run; the
job finds its trial through the environment (rnnlab.trial). The study lives in an Optuna RDB storage: by
default `optuna.db` beside the MLflow SQLite file, or any URL (`hydra.sweeper.storage=postgresql://…` on
a team server), so that parallel or resumed sweeps with the same `hydra.sweeper.study_name` share it.
`n_trials` is the study's size: a resumed study runs the trials it still lacks.

A life cycle like a run's: SIGTERM or SIGINT stops every job (the sweep kills the processes it started:
joblib's workers would train on), marks the unfinished trials FAIL (user attribute `rnnlab.interrupted`:
not counted as finished) and their MLflow runs KILLED, prints one line with the exact command that
resumes the study, and exits 128 + signal. A study in which no trial completes is an error (exit 2).

Pruning: each validation of a trial reports its loss at that training step (rnnlab.trial.Pruning); when
the study's pruner (MedianPruner by default; `hydra.sweeper.pruner=null`: none) says so, the training
stops, the trial is PRUNED in Optuna and its MLflow run KILLED with the tag `optuna.state=PRUNED`.

At the end: the trials ranked (printed, and study/trials.md), the best params and value on the parent
run, with the optimisation history and parameter importances as PNGs (study/), and, when
`tracking.register_model` names a registered model, the alias `champion` on the best trial's version.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rnnlab import studyspec
from rnnlab.errors import Stopped, UserError
from rnnlab.files import make_folder, write_text
from rnnlab.studyspec import STORAGE_ENV, STUDY_ENV, TRIAL_ENV, Spec, assignment, quote
from rnnlab.sweep import PARENT_ENV, client_for, ignore_signals, stop_workers

INTERRUPTED = "rnnlab.interrupted"  # user attribute of a trial a signal ended: FAIL, but not finished


# ---- the study (the sweeper's side) -----------------------------------------------------------------------

def storage_url(config: DictConfig) -> str:
    """The sweeper's `storage`, else optuna.db beside the MLflow SQLite file (else in the working folder)."""
    from rnnlab.params import build
    from rnnlab.schema import TrackingSpec
    from rnnlab.tracking import tracking_uri

    given = config.hydra.sweeper.get("storage")
    if given:
        return str(given)
    uri = tracking_uri(build(TrackingSpec, "tracking", OmegaConf.to_container(config.tracking, resolve=True)))
    db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else Path("mlflow.db").resolve()
    return f"sqlite:///{db.with_name('optuna.db')}"


def open_study(spec: Spec, config: DictConfig, storage: str):
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    name = spec.study_name or Path(config.hydra.sweep.dir).name
    try:
        return optuna.create_study(study_name=name, storage=storage, sampler=spec.sampler, pruner=spec.pruner,
                                   direction=spec.direction, load_if_exists=True)
    except (SQLAlchemyError, ValueError, ImportError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"cannot open the Optuna study {name!r} in {storage} ({first}); give "
                        "hydra.sweeper.storage=<a database URL, e.g. sqlite:///optuna.db> (or another "
                        "hydra.sweeper.study_name)") from None


def batch_size(spec: Spec, config: DictConfig) -> int:
    """Trials launched together: the sweeper's n_jobs, else the launcher's (joblib), else 1."""
    n = spec.n_jobs or config.hydra.launcher.get("n_jobs") or 1
    return max(1, int(n))


def run(sweeper, arguments: list[str]) -> list:
    """The study: check everything, then ask a batch of trials, launch them as jobs, tell their results
    until the study has n_trials finished; then `finish`."""
    config = sweeper.config
    spec = studyspec.checked(sweeper.settings(), list(arguments))
    for note in spec.notes:
        print(note, flush=True)
    sweep_dir = Path(config.hydra.sweep.dir)
    make_folder(sweep_dir)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    storage = storage_url(config)
    study = open_study(spec, config, storage)
    studyspec.check_same_space(study, spec.dists, storage)
    before = len(finished(study))
    left = max(0, spec.n_trials - before)
    print(f"Optuna study {study.study_name!r} in {storage}: {left} of {spec.n_trials} trials to run "
          f"({before} finished before), {batch_size(spec, config)} at a time", flush=True)
    asked = []
    try:
        returns = trials(sweeper, study, spec, storage, left, asked)
        finish(study, config, storage, sweep_dir)
    except (Stopped, KeyboardInterrupt) as err:
        ignore_signals()
        stop_workers()
        raise stopped(err, study, spec, storage, abandon(study, asked)) from None
    if best_trial(study) is None:
        from collections import Counter

        counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        raise UserError(f"no trial of the Optuna study {study.study_name!r} completed ({states}; a FAIL trial "
                        "diverged: see its job's log); narrow the search, e.g. a lower optim.lr range or "
                        "trainer.gradient_clip_val")
    return returns


def trials(sweeper, study, spec: Spec, storage: str, left: int, asked: list) -> list:
    """Launch `left` trials, a batch at a time (each trial asked is added to `asked`). A batch that ends by
    a job's error leaves no trial RUNNING; a signal is `run`'s to handle."""
    returns, done = [], 0
    while done < left:
        batch = []
        for _ in range(min(batch_size(spec, sweeper.config), left - done)):
            batch.append(study.ask(spec.dists))
            asked.append(batch[-1])
        try:
            returns.append(launch(sweeper, study, spec, storage, batch, done))
        except (Exception, SystemExit):  # a job's error: the sweep ends as a basic sweep does, its trials FAIL
            abandon(study, batch)
            raise
        done += len(batch)
    return returns


def launch(sweeper, study, spec: Spec, storage: str, batch: list, done: int) -> list:
    jobs = [spec.fixed + [assignment(k, v) for k, v in t.params.items()] + job_env(storage, study.study_name, t)
            for t in batch]
    sweeper.validate_batch_is_legal(jobs)
    results = sweeper.launcher.launch(jobs, initial_job_idx=done)
    for trial, result in zip(batch, results):
        tell(study, trial, result)
    return results


def abandon(study, batch: list) -> int:
    """Mark the trials of `batch` still RUNNING as FAIL (attribute rnnlab.interrupted); returns how many."""
    from optuna.trial import TrialState

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    left = [t for t in batch if t.number in running]
    for trial in left:
        trial.set_user_attr(INTERRUPTED, True)
        study.tell(trial, state=TrialState.FAIL)
    return len(left)


def finished(study) -> list:
    """The study's finished trials: COMPLETE, PRUNED, or FAIL (diverged), not those a signal ended."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get(INTERRUPTED)]


def stopped(err: BaseException, study, spec: Spec, storage: str, interrupted: int) -> Stopped:
    """The one line of a stopped study: what is kept and the command that resumes it."""
    signum = err.exit_status - 128 if isinstance(err, Stopped) else signal.SIGINT
    stop = Stopped(signum)
    stop.args = (f"stopped by {signal.Signals(signum).name}; the Optuna study {study.study_name!r} in {storage} "
                 f"keeps its {len(finished(study))} finished trials ({interrupted} interrupted: FAIL, their MLflow "
                 f"runs KILLED); resume it with: {resume_command(spec, study.study_name)}",)
    stop.study_line = True  # rnnlab.sweep.stopped passes it on as it is
    return stop


def resume_command(spec: Spec, name: str) -> str:
    """This command again, naming the study when its name was the sweep folder's (a new one each sweep)."""
    args = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]  # a folder is one sweep's only
    if spec.study_name is None:
        args.append(assignment("hydra.sweeper.study_name", name))
    return shlex.join(["python", sys.argv[0], *args])


def job_env(storage: str, study: str, trial) -> list[str]:
    """How a job finds its trial: environment variables Hydra sets around the job (hydra.job.env_set)."""
    return [f"+hydra.job.env_set.{STORAGE_ENV}={quote(storage)}", f"+hydra.job.env_set.{STUDY_ENV}={quote(study)}",
            f"+hydra.job.env_set.{TRIAL_ENV}={trial._trial_id}"]


def tell(study, trial, result) -> None:
    """A job's outcome to the study: COMPLETE with its best validation loss, PRUNED, or FAIL (diverged)."""
    from optuna.trial import TrialState

    outcome = result.return_value  # a job that raised re-raises here: the sweep ends as a basic sweep does
    if outcome.get("run_id"):
        trial.set_user_attr("mlflow_run_id", outcome["run_id"])
    if outcome["state"] == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif outcome["value"] is None or math.isnan(outcome["value"]):
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, outcome["value"])


def ranked(study) -> list:
    """Finished trials best first (COMPLETE by value), then PRUNED (by their last report), then the rest."""
    from optuna.trial import TrialState

    def key(t):
        last = t.intermediate_values[t.last_step] if t.last_step is not None else math.inf
        order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}.get(t.state, 2)
        value = t.value if t.state == TrialState.COMPLETE else last
        sign = 1 if study.direction.name == "MINIMIZE" else -1
        return order, sign * value if value is not None else math.inf, t.number

    return sorted(study.get_trials(deepcopy=False), key=key)


def table(study) -> str:
    """The trials ranked, as a Markdown table."""
    trials = ranked(study)
    keys = sorted({k for t in trials for k in t.params})
    lines = ["| rank | trial | state | val loss | pruned at step | " + " | ".join(keys) + " |",
             "|" + "---|" * (5 + len(keys))]
    for rank, t in enumerate(trials, 1):
        value = f"{t.value:.4f}" if t.value is not None else "–"
        pruned = str(t.last_step) if t.state.name == "PRUNED" else "–"
        cells = [f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "–"))
                 for k in keys]
        lines.append(f"| {rank} | {t.number} | {t.state.name} | {value} | {pruned} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finish(study, config: DictConfig, storage: str, sweep_dir: Path) -> None:
    """The ranked table, best.yaml and the two plots under <sweep>/study/, all logged to the parent run;
    the registry alias `champion` on the best trial's model version when tracking.register_model is set."""
    out = sweep_dir / "study"
    make_folder(out)
    text = table(study)
    write_text(out / "trials.md", f"# Optuna study {study.study_name}\n\nstorage: {storage}\n\n{text}\n")
    print(f"Optuna study {study.study_name!r}, trials ranked:\n{text}", flush=True)
    best = best_trial(study)
    if best is not None:
        summary = {"study": study.study_name, "storage": storage, "best_trial": best.number,
                   "best_value": best.value, "best_params": best.params}
        write_text(out / "best.yaml", OmegaConf.to_yaml(summary))
        print(f"best: trial {best.number}, val loss {best.value:.4f}, {best.params}", flush=True)
    plots(study, out)
    run_id = os.environ.get(PARENT_ENV)
    client, spec = client_for(config)
    if run_id:
        client.set_tag(run_id, "optuna.study", study.study_name)
        client.set_tag(run_id, "optuna.storage", storage)
        if best is not None:
            for key, value in best.params.items():
                client.log_param(run_id, f"best/{key}", value)
            client.log_metric(run_id, "best/val_loss", best.value)
            client.set_tag(run_id, "optuna.best_trial", str(best.number))
        client.log_artifacts(run_id, str(out), "study")
    if best is not None and config.tracking.get("register_model"):
        champion(client, str(config.tracking.register_model), best.user_attrs.get("mlflow_run_id"))


def best_trial(study):
    from optuna.trial import TrialState

    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def plots(study, out: Path) -> None:
    """optimization_history.png and param_importances.png (importances need two finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as draw

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning: the matplotlib backend is marked experimental
        draw.plot_optimization_history(study)
        plt.savefig(out / "optimization_history.png", dpi=110, bbox_inches="tight")
        plt.close("all")
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
            try:
                draw.plot_param_importances(study)
                plt.savefig(out / "param_importances.png", dpi=110, bbox_inches="tight")
            except (ValueError, RuntimeError) as err:  # e.g. every completed trial has the same params
                print(f"no parameter importances: {err}", flush=True)
            plt.close("all")


def champion(client, name: str, run_id: str | None) -> None:
    """Point the registered model's alias `champion` at the version logged by the best trial's run, if it is
    at least as good as the current champion on the same data (rnnlab.registry.promote says why not)."""
    from rnnlab.registry import promote_run

    promote_run(client, name, run_id)
