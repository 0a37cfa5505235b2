"""Hydra's sweeper plugin for Optuna studies (`hydra/sweeper=optuna`; config: conf/hydra/sweeper/optuna.yaml).

Hydra loads plugins only from the `hydra_plugins` namespace, hence this shell; the work is in
rnnlab.search. Written over current Optuna because hydra-optuna-sweeper 1.3.0 pins optuna<3, whose
RDB storage fails on SQLAlchemy 2 (no shared or resumable study). The config has `_recursive_: false`:
the sampler and pruner arrive as their configs and rnnlab.studyspec builds them, so a bad one is one line.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: str, study_name: str | None, storage: str | None,
                 n_trials: int, n_jobs: int | None, params: dict | None) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.study_name, self.storage, self.n_trials, self.n_jobs = study_name, storage, n_trials, n_jobs
        self.params = params or {}
        self.config = self.launcher = self.hydra_context = None

    def settings(self) -> dict:
        """hydra.sweeper.* as given (rnnlab.studyspec checks them)."""
        from omegaconf import DictConfig, OmegaConf

        params = OmegaConf.to_container(self.params) if isinstance(self.params, DictConfig) else self.params
        return {"sampler": self.sampler, "pruner": self.pruner, "direction": self.direction,
                "study_name": self.study_name, "storage": self.storage, "n_trials": self.n_trials,
                "n_jobs": self.n_jobs, "params": params}

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        import sys

        from rnnlab import search  # imported late: Hydra imports every plugin module at start-up
        from rnnlab.errors import EXIT_USER_ERROR, UserError

        try:
            return search.run(self, arguments)
        except UserError as err:  # one line, exit 2; a signal (rnnlab.errors.Stopped) goes on to the entry point
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
