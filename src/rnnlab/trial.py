"""The Optuna trial a sweep's job runs (the job's side of rnnlab.search): how the job finds it, the
pruning callback that reports to it, and the tags on the job's MLflow run.

The sweeper hands each job its trial through three environment variables (Hydra's `hydra.job.env_set`,
set around the job in whichever process runs it); the job never ends the trial: the sweeper tells the
study its outcome, or FAIL when the job was stopped.
"""

from __future__ import annotations

import math
import os

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from rnnlab.studyspec import STORAGE_ENV, STUDY_ENV, TRIAL_ENV


def job_trial(sweeper_config: DictConfig):
    """The Optuna trial this job runs (found through the environment the sweeper set), or None."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id:
        return None
    import optuna

    from rnnlab.studyspec import pruner

    study = optuna.load_study(study_name=os.environ[STUDY_ENV], storage=os.environ[STORAGE_ENV],
                              pruner=pruner(sweeper_config.get("pruner")))
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
