"""Hyper-parameter search: an Optuna study run through Hydra's sweeper interface.

    python pipeline/sweep.py -m hydra/sweeper=optuna +experiment=tune_awd_small
    python pipeline/sweep.py -m hydra/sweeper=optuna hydra.sweeper.n_trials=20 \
        'optim.lr=tag(log, interval(1e-4, 1e-2))' 'trainer.gradient_clip_val=choice(0.25, 1, 5)'

The sweeper (`hydra_plugins.rnnlab_optuna`, a thin shell: Hydra only loads plugins from that namespace)
calls `run`. Each trial is one job of the usual sweep (rnnlab.sweep.run_job, through the configured
launcher: basic, joblib for parallel trials, submitit for SLURM) and one child MLflow run of the sweep's
parent run. The study lives in an Optuna RDB storage: by default `optuna.db` beside the MLflow SQLite
file, or any URL (`hydra.sweeper.storage=postgresql://…` on a team server), so that parallel or resumed
sweeps with the same `hydra.sweeper.study_name` share it.

Search spaces use Hydra's sweep syntax: `a,b,c` or `choice(a, b)` (categorical), `range(1, 5)`
(integers), `interval(0.1, 1)` (uniform), `tag(log, interval(1e-4, 1e-2))` (log-uniform), `tag(int,
interval(16, 256))` (integers).

Pruning: each validation of a trial reports its loss at that training step (`Pruning`, a Lightning
callback in the job); when the study's pruner (MedianPruner by default: worse than the median of the
finished trials at the same step) says so, the training stops, the trial is PRUNED in Optuna and its
MLflow run KILLED with the tag `optuna.state=PRUNED`.

At the end: the trials ranked (printed, and study/trials.md), the best params and value on the parent
run, with the optimisation history and parameter importances as PNGs (study/), and, when
`tracking.register_model` names a registered model, the alias `champion` on the best trial's version.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from rnnlab.errors import UserError

STORAGE_ENV, STUDY_ENV, TRIAL_ENV = "RNNLAB_OPTUNA_STORAGE", "RNNLAB_OPTUNA_STUDY", "RNNLAB_OPTUNA_TRIAL"
SIMPLE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+")


# ---- the search space -------------------------------------------------------------------------------------

def space(overrides: list) -> tuple[dict, list[str]]:
    """Hydra overrides → (Optuna distributions of the swept keys, the fixed overrides as strings)."""
    dists, fixed = {}, []
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            dists[key] = distribution(override)
        else:
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    return dists, fixed


def distribution(override):
    from optuna.distributions import FloatDistribution, IntDistribution

    key, value = override.get_key_element(), override.value()
    if override.is_interval_sweep():
        tags = value.tags or set()
        if "int" in tags:
            return IntDistribution(int(value.start), int(value.end), log="log" in tags)
        return FloatDistribution(float(value.start), float(value.end), log="log" in tags)
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if values and all(isinstance(v, int) for v in values) and len(values) > 1:
            return IntDistribution(values[0], values[-1], step=values[1] - values[0])
        return categorical(key, values)
    if override.is_choice_sweep():
        return categorical(key, list(override.sweep_iterator()))
    raise UserError(f"{key}: the optuna sweeper takes choice(…), a,b,c, range(…) or interval(…), not "
                    f"{override.get_value_element_as_str()}")


def categorical(key: str, values: list):
    from optuna.distributions import CategoricalDistribution

    if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
        raise UserError(f"{key}: the optuna sweeper's choices must be plain values (numbers, strings), not "
                        f"{values}")
    return CategoricalDistribution(values)


def assignment(key: str, value: Any) -> str:
    """`key=value` as a Hydra override; strings with special characters quoted."""
    if isinstance(value, str) and not set(value) <= SIMPLE:
        return f"{key}={quote(value)}"
    if value is None:
        return f"{key}=null"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


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


def open_study(sweeper, config: DictConfig, storage: str):
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    name = sweeper.study_name or Path(config.hydra.sweep.dir).name
    try:
        return optuna.create_study(study_name=name, storage=storage, sampler=sweeper.sampler, pruner=sweeper.pruner,
                                   direction=sweeper.direction, load_if_exists=True)
    except (SQLAlchemyError, ValueError, ImportError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"cannot open the Optuna study {name!r} in {storage} ({first}); give "
                        "hydra.sweeper.storage=<a database URL, e.g. sqlite:///optuna.db>") from None


def batch_size(sweeper, config: DictConfig) -> int:
    """Trials launched together: the sweeper's n_jobs, else the launcher's (joblib), else 1."""
    n = sweeper.n_jobs or config.hydra.launcher.get("n_jobs") or 1
    return max(1, int(n))


def run(sweeper, arguments: list[str]) -> list:
    """The study: ask a batch of trials, launch them as jobs, tell their results; then `finish`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.trial import TrialState

    config = sweeper.config
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    given = [f"{key}={value}" for key, value in (sweeper.params or {}).items()]
    dists, fixed = space(parser.parse_overrides(given + list(arguments)))
    if not dists:
        raise UserError("the optuna sweeper has no search space; give hydra.sweeper.params (e.g. in an "
                        "+experiment= preset) or a swept override such as 'optim.lr=tag(log, interval(1e-4, 1e-2))'")
    if sweeper.n_trials < 1:
        raise UserError(f"hydra.sweeper.n_trials={sweeper.n_trials} must be at least 1")
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    storage = storage_url(config)
    study = open_study(sweeper, config, storage)
    print(f"Optuna study {study.study_name!r} in {storage}: {sweeper.n_trials} trials, "
          f"{batch_size(sweeper, config)} at a time", flush=True)
    returns, done = [], 0
    while done < sweeper.n_trials:
        trials = [study.ask(dists) for _ in range(min(batch_size(sweeper, config), sweeper.n_trials - done))]
        batch = [fixed + [assignment(k, v) for k, v in t.params.items()] + job_env(storage, study.study_name, t)
                 for t in trials]
        sweeper.validate_batch_is_legal(batch)
        results = sweeper.launcher.launch(batch, initial_job_idx=done)
        for i, (trial, result) in enumerate(zip(trials, results)):
            try:
                tell(study, trial, result)
            except BaseException:  # the job raised: no trial of the batch stays RUNNING in the study
                for left in trials[i:]:
                    study.tell(left, state=TrialState.FAIL)
                raise
        returns.append(results)
        done += len(trials)
    finish(study, config, storage, sweep_dir)
    return returns


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
    from rnnlab.files import make_folder, write_text
    from rnnlab.sweep import PARENT_ENV, client_for

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
    """Point the registered model's alias `champion` at the version logged by the best trial's run."""
    versions = client.search_model_versions(f"run_id = '{run_id}'") if run_id else []
    mine = [v for v in versions if v.name == name]
    if not mine:
        print(f"no version of the registered model {name!r} from the best trial's run; alias not set", flush=True)
        return
    client.set_registered_model_alias(name, "champion", mine[0].version)
    print(f"registered model {name!r}: alias champion → version {mine[0].version}", flush=True)


# ---- the trial (the job's side) ---------------------------------------------------------------------------

def job_trial(sweeper_config: DictConfig):
    """The Optuna trial this job runs (found through the environment the sweeper set), or None."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id:
        return None
    import optuna
    from hydra.utils import instantiate

    pruner = instantiate(sweeper_config.pruner) if sweeper_config.get("pruner") else None
    study = optuna.load_study(study_name=os.environ[STUDY_ENV], storage=os.environ[STORAGE_ENV], pruner=pruner)
    return optuna.trial.Trial(study, int(trial_id))


class Pruning(Callback):
    """Reports each validation loss to the trial at the training step; stops the training when the study's
    pruner says so (under DDP process 0 decides and every process stops)."""

    def __init__(self, trial) -> None:
        self.trial, self.pruned_at = trial, None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        stop = False
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.is_global_zero and loss is not None and math.isfinite(float(loss)):
            self.trial.report(float(loss), trainer.global_step)
            stop = self.trial.should_prune()
        if trainer.strategy.broadcast(stop):
            self.pruned_at = trainer.global_step
            trainer.should_stop = True


def tag_trial(tracking, run_id: str, trial, pruned_at: int | None) -> None:
    """The trial's MLflow run: tagged with its study and number; a pruned one KILLED, tagged
    optuna.state=PRUNED and the step."""
    from mlflow.tracking import MlflowClient

    from rnnlab.tracking import tracking_uri

    client = MlflowClient(tracking_uri(tracking))
    client.set_tag(run_id, "optuna.study", trial.study.study_name)
    client.set_tag(run_id, "optuna.trial", str(trial.number))
    if pruned_at is not None:
        client.set_tag(run_id, "optuna.state", "PRUNED")
        client.set_tag(run_id, "optuna.pruned_at_step", str(pruned_at))
        client.set_terminated(run_id, "KILLED")
