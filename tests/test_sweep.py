"""Sweeps: Hydra multirun (basic and joblib launchers) with MLflow parent/child runs and a report;
one-line errors for bad sweep overrides."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, TINY, run, untracked_files

pytestmark = pytest.mark.slow  # end to end: real dvc, sweeps, servers

SMALL = [*TINY, "trainer.max_steps=10", "trainer.val_check_interval=5"]


def sweep_runs(project: Path) -> tuple[tuple, list[tuple]]:
    db = sqlite3.connect(project / "mlflow.db")
    parents = db.execute("select run_uuid, name from runs where name like 'sweep %'").fetchall()
    assert len(parents) == 1
    children = db.execute("select r.run_uuid, r.name, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                          "where t.key = 'mlflow.parentRunId' and t.value = ?", (parents[0][0],)).fetchall()
    return parents[0], children


def metric_keys(project: Path, run_uuid: str) -> set[str]:
    db = sqlite3.connect(project / "mlflow.db")
    return {k for (k,) in db.execute("select distinct key from metrics where run_uuid = ?", (run_uuid,))}


def children_of(project: Path, sweep_dir: Path) -> list[tuple]:
    """(run id, name, status) of the child runs of the sweep whose folder is `sweep_dir`."""
    db = sqlite3.connect(project / "mlflow.db")
    (parent,) = db.execute("select run_uuid from tags where key = 'rnnlab.sweep_dir' and value = ?",
                           (str(sweep_dir.resolve()),)).fetchall()
    return db.execute("select r.run_uuid, r.name, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                      "where t.key = 'mlflow.parentRunId' and t.value = ?", parent).fetchall()


def test_two_hydra_multiruns_at_once_one_with_parallel_jobs_give_two_folders_each_with_its_children_and_a_report(
        project):
    """Two sweeps started in the same second into a store neither has created yet (tracking.ensure_experiment
    lets one go first), one with the basic launcher, one with joblib's two jobs at once: three processes write
    to the one SQLite store and none loses a run. Two folders, and in each the jobs, a parent run with its two
    children and a report."""
    run(["python", "-m", "rnnlab.config", *TINY], project)
    args = ["python", "pipeline/sweep.py", "-m", *SMALL, "model=rnn,gru"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args + launcher, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for launcher in ([], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    assert all("report:" in out and "database is locked" not in out for out in outs)
    folders = sorted(p for p in (project / "multirun").iterdir() if p.is_dir())
    assert len(folders) == 2
    for sweep_dir in folders:
        assert sorted(j.name for j in sweep_dir.iterdir() if j.name.isdigit()) == ["0", "1"]
        assert len(list((sweep_dir / "data").glob("prepared-*[!k]"))) == 1  # prepared once, shared by both jobs
        for job in ("0", "1"):
            assert (sweep_dir / job / "eval" / "metrics.json").exists()
            assert (sweep_dir / job / "samples" / "samples.txt").read_text().strip()
        children = children_of(project, sweep_dir)
        assert sorted(name for _, name, _ in children) == ["model=gru", "model=rnn"]
        for uuid, _, status in children:
            assert status == "FINISHED"
            keys = metric_keys(project, uuid)
            assert {"val/loss", "test/ppl", "test/bpc", "gtt/d000", "samples/novelty_rate"} <= keys
        report = (sweep_dir / "report" / "report.md").read_text()
        assert "| model=rnn | finished | rnn |" in report and "| model=gru | finished | gru |" in report
        assert (sweep_dir / "report" / "gradient_through_time.png").stat().st_size > 1000

    again = run(["python", "pipeline/report.py", "--sweep", str(folders[0].relative_to(project))], project)
    assert "2 runs;" in again.stdout and "train_s" in again.stdout
    assert not untracked_files(project)  # multirun/, mlflow.db: ignored


def test_bad_sweep_overrides_are_one_line_errors(project):
    bad = run(["python", "pipeline/sweep.py", "-m", "model=rnn,transformer"], project, check=False)
    assert bad.returncode == 2 and bad.stderr == "error: unknown option model=transformer; valid options: gru, lstm, rnn\n"
    bad = run(["python", "pipeline/sweep.py", "-m", "trainer.max_stepz=1,2"], project, check=False)
    assert bad.returncode == 2 and "max_stepz" in bad.stderr and len(bad.stderr.splitlines()) == 1
    down = run(["python", "pipeline/sweep.py", "-m", "model=rnn,gru", "tracking.uri=http://127.0.0.1:9"], project,
               check=False)
    assert down.returncode == 2 and down.stderr.startswith("error: the MLflow tracking server http://127.0.0.1:9 does")
    assert not (project / "multirun").exists()


def test_a_failing_job_ends_the_sweep_with_one_line_and_a_failed_parent_run(project):
    run(["python", "-m", "rnnlab.config", *SMALL], project)
    proc = run(["python", "pipeline/sweep.py", "-m", *SMALL, "corpus.path=missing.txt", "model=rnn,gru"], project,
               check=False)
    assert proc.returncode == 2 and "error: corpus.path 'missing.txt' matches no file" in proc.stderr
    assert "Traceback" not in proc.stderr
    db = sqlite3.connect(project / "mlflow.db")
    statuses = dict(db.execute("select name, status from runs").fetchall())
    assert len(statuses) == 1 and list(statuses.values()) == ["FAILED"]  # the parent; no job got to training
