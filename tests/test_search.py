"""Optuna studies through Hydra's sweeper interface (hydra/sweeper=optuna, rnnlab.search): the search space,
the pruning callback, and a real study of the shrunk config with parallel trials, pruning and MLflow runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import TINY, run
from rnnlab import search, studyspec, trial as optuna_trial
from rnnlab.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def parsed(*overrides: str) -> list:
    return OverridesParser.create().parse_overrides(list(overrides))


def test_the_search_space_follows_hydras_sweep_syntax():
    dists, fixed = studyspec.space(parsed(
        "optim.lr=tag(log, interval(1e-4, 1e-2))", "model.dropout=interval(0, 0.5)",
        "model.hidden_size=tag(int, interval(16, 256))", "data.bptt=range(10, 40, 10)",
        "model=rnn,gru", "trainer.gradient_clip_algorithm=choice(norm, value)", "trainer.max_steps=20"))
    assert dists == {
        "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "model.dropout": FloatDistribution(0.0, 0.5),
        "model.hidden_size": IntDistribution(16, 256),
        "data.bptt": IntDistribution(10, 30, step=10),
        "model": CategoricalDistribution(["rnn", "gru"]),
        "trainer.gradient_clip_algorithm": CategoricalDistribution(["norm", "value"]),
    }
    assert fixed == ["trainer.max_steps=20"]


def test_a_sweep_the_study_cannot_search_is_one_line():
    with pytest.raises(UserError, match="optim.lr: the optuna sweeper's choices must be plain values"):
        studyspec.space(parsed("optim.lr=choice([1, 2], [3])"))


@pytest.mark.parametrize("value", [0.1, 1e-05, 3, True, None, "rnn", "sqlite:////tmp/it's here/o.db", "a b,c",
                                   "a\\b", "ends\\", "q\\'x", "\\\\'"])
def test_an_assignment_parses_back_to_the_value(value):
    (override,) = parsed(studyspec.assignment("k", value))
    assert override.value() == value and not override.is_sweep_override()


def test_the_study_is_stored_beside_the_mlflow_database_unless_a_storage_is_given(tmp_path):
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from conftest import conf_spec

    tracking = asdict(conf_spec("tracking", uri=f"sqlite:///{tmp_path}/team/mlflow.db"))
    config = OmegaConf.create({"hydra": {"sweeper": {"storage": None}}, "tracking": tracking})
    assert search.storage_url(config) == f"sqlite:///{tmp_path}/team/optuna.db"
    config.hydra.sweeper.storage = "postgresql+psycopg2://u:p@127.0.0.1:5432/optuna"
    assert search.storage_url(config) == "postgresql+psycopg2://u:p@127.0.0.1:5432/optuna"


def trainer(loss: float, step: int):
    return SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=step, should_stop=False,
                           callback_metrics={"val/loss": loss}, strategy=SimpleNamespace(broadcast=lambda x: x))


def test_pruning_reports_each_validation_and_stops_a_trial_worse_than_the_median():
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for curve in ([3.0, 2.0], [3.2, 2.2]):  # two finished trials: median 3.1 at step 5, 2.1 at step 10
        trial = study.ask()
        for step, loss in zip((5, 10), curve):
            trial.report(loss, step)
        study.tell(trial, curve[-1])

    good, bad = study.ask(), study.ask()
    for trial, losses in ((good, [3.0, 2.0]), (bad, [3.05, 2.5])):
        callback = optuna_trial.Pruning(trial)
        for step, loss in zip((5, 10), losses):
            fake = trainer(loss, step)
            callback.on_validation_end(fake, None)
            if fake.should_stop:
                break
        trial.pruned_at, trial.stopped = callback.pruned_at, fake.should_stop
    assert good.pruned_at is None and not good.stopped  # never worse than the median
    assert bad.pruned_at == 10 and bad.stopped  # 3.05 < 3.1 at step 5 goes on; 2.5 > 2.1 at step 10 stops
    assert study._storage.get_trial(bad._trial_id).intermediate_values == {5: 3.05, 10: 2.5}


STUDY = [*TINY, "trainer.max_steps=30", "trainer.val_check_interval=5", "hydra/sweeper=optuna",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=tag(log, interval(1e-5, 1e-1))"]


def parent_and_children(db: sqlite3.Connection, sweep_dir: Path) -> tuple[str, list[tuple]]:
    (parent,) = db.execute("select run_uuid from tags where key = 'rnnlab.sweep_dir' and value = ?",
                           (str(sweep_dir.resolve()),)).fetchall()
    children = db.execute(
        "select r.run_uuid, r.status, (select value from tags s where s.run_uuid = r.run_uuid and "
        "s.key = 'optuna.state'), (select value from tags s where s.run_uuid = r.run_uuid and s.key = 'optuna.trial') "
        "from runs r join tags t on t.run_uuid = r.run_uuid where t.key = 'mlflow.parentRunId' and t.value = ?",
        (parent[0],)).fetchall()
    return parent[0], children


def by_run_id(children: list[tuple], number: int) -> str:
    return next(uuid for uuid, _, _, trial in children if int(trial) == number)


@pytest.mark.slow
def test_a_study_of_six_trials_two_at_a_time_prunes_and_logs_to_one_parent_run(project):
    out = run(["python", "pipeline/sweep.py", "-m", *STUDY, "hydra.sweeper.n_trials=6",
               "tracking.register_model=tiny-study"], project)
    (sweep_dir,) = (project / "multirun").iterdir()
    storage = f"sqlite:///{project / 'optuna.db'}"  # beside the MLflow SQLite file
    study = optuna.load_study(study_name=sweep_dir.name, storage=storage)
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and "PRUNED" in states and states.count("COMPLETE") >= 2, states
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert all(t.intermediate_values and t.last_step < 30 for t in pruned)  # stopped before the last step

    db = sqlite3.connect(project / "mlflow.db")
    parent, children = parent_and_children(db, sweep_dir)
    assert len(children) == 6
    by_trial = {int(trial): (status, state) for _, status, state, trial in children}
    assert sorted(by_trial) == list(range(6))
    for t in study.trials:  # the same state in both places: PRUNED is a KILLED run tagged optuna.state=PRUNED
        assert by_trial[t.number] == (("KILLED", "PRUNED") if t.state.name == "PRUNED" else ("FINISHED", None))

    params = dict(db.execute("select key, value from params where run_uuid = ?", (parent,)).fetchall())
    best = study.best_trial
    assert float(params["best/optim.lr"]) == pytest.approx(best.params["optim.lr"])
    (value,) = db.execute("select value from metrics where run_uuid = ? and key = 'best/val_loss'", (parent,)).fetchone()
    assert value == pytest.approx(best.value)
    (artifacts,) = db.execute("select artifact_uri from runs where run_uuid = ?", (parent,)).fetchone()
    logged = Path(artifacts.removeprefix("file://")) / "study"
    for png in ("optimization_history.png", "param_importances.png"):
        assert (logged / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (logged / png).stat().st_size > 5000
    from mlflow.tracking import MlflowClient  # every trial registered its model; the best one is the champion

    champion = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_model_version_by_alias("tiny-study", "champion")
    assert champion.run_id == best.user_attrs["mlflow_run_id"] == by_run_id(children, best.number)
    ranked = [line for line in out.stdout.splitlines() if line.startswith("| ") and "COMPLETE" in line]
    values = [float(line.split("|")[4]) for line in ranked]
    assert values == sorted(values) and f"| 1 | {best.number} | COMPLETE |" in out.stdout  # ranked, best first

    # The same seed proposes the same first trial in a new study.
    run(["python", "pipeline/sweep.py", "-m", *STUDY, "hydra.sweeper.n_trials=1", "trainer.max_steps=2",
         "trainer.val_check_interval=1"], project)  # what it proposes does not depend on the training
    (again,) = [d for d in (project / "multirun").iterdir() if d != sweep_dir]
    first = optuna.load_study(study_name=again.name, storage=storage).trials[0]
    assert first.params == study.trials[0].params
