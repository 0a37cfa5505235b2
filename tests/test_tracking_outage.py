"""Training never waits on tracking (rnnlab.outbox): a tracking server that goes away mid-run.

1. End to end (slow): a real `mlflow server` on 127.0.0.1 is stopped at a random moment of a training
   (`python pipeline/train.py`, 1,500 tiny steps) and started again on the same port and store. The training
   keeps stepping while the server is down, says so in one warning line when the outage starts and one
   when it ends, exits 0 in bounded time, and every metric, sample and the model reach the run, FINISHED.
2. Quick: writes to a server that never comes back are kept for the budget only, then reported in one
   line and written to mlflow-unsent.json; nothing blocks the caller. `python -m rnnlab.outbox` sends
   them once the server is back (slow: it needs the server).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import services
from conftest import REPO, TINY, TINY_TEXT

STEPS = 1500  # ≈ 15 s of tiny steps at one thread: time to stop the server in the middle and see progress
# ... also on a faster machine: a user callback (the config's `callbacks:`) makes each step last >= 5 ms
PACE = """
import time

from lightning.pytorch.callbacks import Callback


class Pace(Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)
"""
SETTINGS = [*TINY, "corpus.path=tiny.txt", "threads=1", f"trainer.max_steps={STEPS}",
            "trainer.val_check_interval=500", "callbacks=[{_target_:pace.Pace,seconds:0.005}]"]
OUTAGE = "does not take writes"
BACK = "takes writes again"
STEP_LINE = re.compile(r"^step (\d+)/", re.MULTILINE)


class Server:
    """`mlflow server` on a fixed port and SQLite store, so that it can be stopped and started again as the
    same server (services.mlflow_server picks a new port each time)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.proc = folder, services.free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start; returns the seconds until /health answered."""
        log, began = self.folder / "mlflow-server.log", time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job runners: tracking needs none
        self.proc = services.start(
            [str(services.BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers",
             "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}", "--artifacts-destination",
             str(self.folder / "artifacts")], log, env=env, cwd=self.folder)
        services.wait_until(lambda: services.http_ok(f"{self.url}/health"), self.proc, log, "mlflow server",
                            services.MLFLOW_START_S)
        return time.monotonic() - began

    def stop(self) -> None:
        if self.proc is not None:
            services.stop(self.proc)
            self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    found = Server(tmp_path_factory.mktemp("mlflow"))
    try:
        found.start()
        yield found
    finally:
        found.stop()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, server) -> Path:
    """A project whose params.yaml (SETTINGS) tracks to `server`, with the prepare and vocab outputs."""
    from rnnlab.config import write_params

    project = tmp_path_factory.mktemp("outage")
    (project / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    (project / "pace.py").write_text(PACE, encoding="utf-8")
    (project / "conf").symlink_to(REPO / "conf")
    cwd = os.getcwd()
    os.chdir(project)
    try:
        write_params([*SETTINGS, f"tracking.uri={server.url}"], Path("params.yaml"), REPO / "conf")
    finally:
        os.chdir(cwd)
    for stage in ("prepare", "vocab"):
        subprocess.run([sys.executable, str(REPO / "pipeline" / f"{stage}.py"), "--quiet"], cwd=project, check=True)
    return project


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


def steps(out: Path) -> list[int]:
    return [int(s) for s in STEP_LINE.findall(out.read_text(errors="replace"))] or [0]


def csv_steps(path: Path) -> list[int]:
    with open(path, newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_a_tracking_outage_at_a_random_moment_never_stops_the_training(server, prepared):
    from mlflow.tracking import MlflowClient

    seed = random.randrange(2**32)
    delay = random.Random(seed).uniform(0.0, 4.0)
    print(f"\nseed {seed} (1 example): the server stops {delay:.1f} s after the first progress line")
    out, err = prepared / "train.out", prepared / "train.err"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(prepared),  # pace.py
           "RNNLAB_TRACKING_WAIT_S": str(services.MLFLOW_START_S)}  # the server's restart may be slow on a busy machine
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, str(REPO / "pipeline" / "train.py")], cwd=prepared, env=env,
                                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: steps(out)[-1] > 0 or proc.poll() is not None, 180, "a first progress line")
        time.sleep(delay)
        server.stop()
        wait_for(lambda: OUTAGE in err.read_text(), 30, "the outage's warning line")
        down_at = steps(out)[-1]
        assert down_at < STEPS, f"the training ended before the outage was noticed (seed {seed}): retry"
        # The training goes on while the server is down: a further progress line, the server still stopped.
        wait_for(lambda: steps(out)[-1] > down_at, 30, f"progress beyond step {down_at} during the outage")
        restart_s = server.start()
        back_at = time.monotonic()
        code = proc.wait(timeout=120)
        after_back_s = time.monotonic() - back_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"outage noticed at step {down_at}; server restart {restart_s:.0f} s; exit {after_back_s:.0f} s later")
    text = err.read_text()
    assert code == 0, text
    assert "Traceback" not in text and not re.search(r"^error:", text, re.MULTILINE), text
    lines = text.splitlines()
    assert sum(OUTAGE in line for line in lines) == 1 and sum(BACK in line for line in lines) == 1, text
    assert "did not reach" not in text and not (prepared / "data" / "train" / "mlflow-unsent.json").exists(), text
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no process of the training is left

    train = prepared / "data" / "train"
    run_id = json.loads((train / "model" / "meta.json").read_text())["mlflow_run_id"]
    client = MlflowClient(server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "rnnlab.tracking_incomplete" not in run.data.tags
    # Every value of the tables on disk reached the run: Lightning logs the step before it counts it.
    for key, table in (("train/loss", "loss.csv"), ("val/loss", "val.csv"), ("grad/norm_pre_clip", "grad_norm.csv")):
        logged = sorted(m.step for m in client.get_metric_history(run_id, key))
        on_disk = csv_steps(train / table)
        assert len(logged) == len(on_disk) and logged[-1] in (on_disk[-1], on_disk[-1] - 1), (key, logged, on_disk)
    assert sorted(m.step + 1 for m in client.get_metric_history(run_id, "train/loss")) == csv_steps(train / "loss.csv")
    samples = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert {f"samples/step_{s:06d}.txt" for s in csv_steps(train / "val.csv")} <= samples, samples
    assert {"tables", "plots", "model", "vocab", "config"} <= {a.path for a in client.list_artifacts(run_id)}
    assert f"runs:/{run_id}/sampler" in out.read_text()  # the pyfunc model, logged through the outbox too


def keep_writes_for_a_gone_server(tmp_path: Path, monkeypatch, run_id: str) -> Path:
    """50 metric values and a text logged to the run `run_id` of a server that went away; returns the
    mlflow-unsent.json the end of the training wrote, having waited one second (the budget)."""
    from rnnlab import tracking
    from rnnlab.outbox import OutboxLogger

    for key, value in tracking.HTTP_LIMITS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RNNLAB_TRACKING_WAIT_S", "1")
    url = f"http://127.0.0.1:{services.free_port()}"  # nothing listens there
    unsent = tmp_path / "mlflow-unsent.json"
    logger = OutboxLogger(experiment_name="x", tracking_uri=url, run_id=run_id, unsent_file=unsent)
    logger._initialized = True  # the run was created; then its server went away
    began = time.monotonic()
    for step in range(50):
        logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    logger.experiment.log_text(logger.run_id, "a sample", "samples/step_000010.txt")
    assert time.monotonic() - began < 1.0  # queued: the caller never waits on the server
    tracking.end_run(logger, "FINISHED")
    assert time.monotonic() - began < 1.0 + 2 * 5  # the budget, plus one /health probe and one write at most
    return unsent


def test_writes_to_a_server_that_is_gone_are_kept_reported_and_never_block(tmp_path, monkeypatch, capsys):
    from rnnlab.outbox import INCOMPLETE_TAG

    unsent = keep_writes_for_a_gone_server(tmp_path, monkeypatch, "f" * 32)
    lines = capsys.readouterr().err.splitlines()
    assert sum(OUTAGE in line for line in lines) == 1, lines
    (report,) = [line for line in lines if "did not reach" in line]
    assert report.startswith("warning: 50 metric values (steps 0-49) and 1 other records (samples/step_000010.txt)")
    assert f"python -m rnnlab.outbox {unsent}" in report and "stays RUNNING" in report, report
    assert INCOMPLETE_TAG not in report
    kept = json.loads(unsent.read_text())
    assert [row[:3] for row in kept["metrics"]] == [["train/loss", 1.0 / (s + 1), s] for s in range(50)]
    assert kept["not_sent"] == ["samples/step_000010.txt"] and kept["run_id"] == "f" * 32
    assert kept["writes"] == [{"call": "log_text", "args": ["a sample", "samples/step_000010.txt"], "kwargs": {}}]


@pytest.mark.slow
def test_what_was_kept_is_sent_when_the_server_is_back(server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from rnnlab.outbox import INCOMPLETE_TAG, replay

    client = MlflowClient(server.url)
    run_id = client.create_run(client.create_experiment(f"replay-{tmp_path.name}")).info.run_id
    unsent = keep_writes_for_a_gone_server(tmp_path, monkeypatch, run_id)
    unsent.write_text(unsent.read_text().replace(json.loads(unsent.read_text())["tracking_uri"], server.url))
    assert replay(unsent).startswith("sent 50 metric values and 1 other writes")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[INCOMPLETE_TAG] == "false"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(50))
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/step_000010.txt"]
    assert not unsent.exists()
