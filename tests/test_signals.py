"""Signals: SIGTERM (SLURM's preemption and time-out), SIGINT (Ctrl-C) and SIGUSR1 (outside SLURM) end a
stage with one line, exit status 128 + signal, the MLflow run KILLED and the last checkpoint kept; `dvc
repro` then resumes to the numbers of an uninterrupted run (through the real stage script). Under SLURM,
SIGUSR1 is Lightning's requeue signal: a checkpoint, `scontrol requeue`, and the requeued job resumes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import BIN, TINY, copy_project, kill_train_after_a_checkpoint, run
from rnnlab import runtime
from rnnlab.errors import Stopped, entry_point


@pytest.fixture
def own_handlers():
    saved = {s: signal.getsignal(s) for s in runtime.SIGNALS}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_a_signal_raises_stopped_and_the_entry_point_exits_128_plus_it(own_handlers, capsys):
    runtime.catch_signals()
    with pytest.raises(Stopped) as err:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at the next bytecode
    assert err.value.exit_status == 143

    @entry_point
    def stage() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)

    with pytest.raises(SystemExit) as done:
        stage()
    assert done.value.code == 130
    assert capsys.readouterr().err.startswith("error: stopped by SIGINT; the last checkpoint, if any, is kept")

    with pytest.raises(Stopped) as err:  # its default action ends a process without a word
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(1)
    assert err.value.exit_status == 138


def test_while_deferred_sigterm_is_recorded_for_lightning_to_stop_at_the_batch_end(own_handlers):
    runtime.catch_signals()
    with pytest.raises(Stopped):  # nobody acted on it inside: it stops the run when the deferral ends
        with runtime.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # only recorded: Lightning's handler raises at the batch end
            time.sleep(0.1)
    assert runtime.stopped(SystemExit()).exit_status == 143  # what Lightning's SIGTERMException becomes
    runtime.catch_signals()
    other = SystemExit(3)
    assert runtime.stopped(other) is other  # no signal: an exit stays what it was


def statuses(project) -> list[str]:
    return [s for (s,) in sqlite3.connect(project / "mlflow.db").execute("select status from runs")]


def train_csvs(project) -> dict[str, str]:
    out = project / "data" / "train"
    return {name: (out / name).read_text() for name in ("metrics.json", "val.csv", "loss.csv", "grad_norm.csv")}


RESUMED = [*TINY, "trainer.max_steps=400", "trainer.val_check_interval=40", "gradstats.samples=0"]


CHAIN = [*TINY, "trainer.max_steps=600", "trainer.val_check_interval=40", "gradstats.samples=0"]  # four stops


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, str]:
    """The outputs of one uninterrupted `dvc repro train` of CHAIN: the numbers the stopped run resumes to
    (a project of its own)."""
    reference = copy_project(tmp_path_factory.mktemp("reference"))
    run(["python", "-m", "rnnlab.config", *CHAIN], reference)
    run(["dvc", "repro", "train"], reference)
    return train_csvs(reference)


def start_training(project, env: dict | None = None) -> subprocess.Popen:
    """`python pipeline/train.py` in `project`, once it has written a checkpoint (a new one, if one was there)."""
    env = env or {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    last = project / "data" / "train" / "checkpoints" / "last.ckpt"
    before = last.stat().st_mtime_ns if last.exists() else None
    proc = subprocess.Popen(["python", "pipeline/train.py"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and (
            not last.exists() or last.stat().st_mtime_ns == before):
        time.sleep(0.02)
    return proc


@pytest.mark.slow
def test_each_signal_and_kill_9_stop_the_train_stage_and_dvc_repro_resumes_bit_exactly(project, uninterrupted):
    """SIGTERM, then SIGINT, then SIGUSR1 (outside SLURM: its default action would end the process without a
    word and leave the MLflow run RUNNING), each to a training that resumed from the one before; then kill -9
    of `dvc repro train` at a random moment between two checkpoints; then `dvc repro` resumes once more and
    ends with the uninterrupted run's numbers."""
    run(["python", "-m", "rnnlab.config", *CHAIN], project)
    run(["dvc", "repro", "vocab"], project)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        proc = start_training(project)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 128 + sig, (sig.name, proc.returncode, err[-2000:])
        assert [line for line in err.splitlines() if line.startswith("error:")] == [
            f"error: stopped by {sig.name}; the last checkpoint, if any, is kept: run `dvc repro` (or the same "
            "command) again to resume"], err[-2000:]
        assert "Traceback" not in err and not (project / "data" / "train" / "metrics.json").exists(), sig.name
        assert statuses(project) == ["KILLED"], sig.name  # a resumed training goes on in the same MLflow run
    last = kill_train_after_a_checkpoint(project, delay=(0, 1.5))  # between two checkpoints
    assert last.exists() and not (project / "data" / "train" / "metrics.json").exists(), "killed too late"

    resumed = run(["dvc", "repro", "train"], project).stdout
    assert "resuming the interrupted training" in resumed
    assert train_csvs(project) == uninterrupted  # to the last digit
    assert statuses(project) == ["FINISHED"]


@pytest.mark.slow
def test_slurm_requeue_signal_saves_a_checkpoint_requeues_and_the_next_run_resumes_from_it(project, tmp_path):
    """SIGUSR1 under SLURM (`#SBATCH --signal=USR1@120`): Lightning's SLURMEnvironment saves hpc_ckpt_1.ckpt
    and calls `scontrol requeue <job>` (here a stand-in that logs its arguments and, as SLURM does, ends
    the job with SIGTERM); the requeued job (`dvc repro`) resumes from that checkpoint."""
    run(["python", "-m", "rnnlab.config", *RESUMED], project)
    run(["dvc", "repro", "vocab"], project)
    fake_bin, log = tmp_path / "slurm-bin", tmp_path / "scontrol.log"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\nkill -TERM $PPID\n')
    (fake_bin / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    env = {**os.environ, **slurm, "PATH": f"{fake_bin}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc, ckpts = start_training(project, env), project / "data" / "train" / "checkpoints"
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])  # SIGTERM from the requeue
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: stopped by SIGTERM; the last checkpoint, if any, is kept: run `dvc repro` (or the same "
        "command) again to resume"], err[-2000:]
    assert log.read_text().split() == ["requeue", "4242"]
    assert (ckpts / "hpc_ckpt_1.ckpt").exists() and statuses(project) == ["KILLED"]

    resumed = run(["dvc", "repro", "train"], project).stdout  # the requeued job
    assert "resuming the interrupted training from data/train/checkpoints/hpc_ckpt_1.ckpt" in resumed
    assert json.loads((project / "data" / "train" / "metrics.json").read_text())["step"] == 400
    assert statuses(project) == ["FINISHED"]


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["before Lightning's handler", "after the fit"])
def test_sigterm_between_the_run_opening_and_lightnings_handler_or_after_the_fit_stops_the_run(
        own_handlers, tmp_path, monkeypatch, moment):
    """Lightning installs its SIGTERM handler inside `fit` and starts with `received_sigterm = False`: a
    SIGTERM that came after the MLflow run opened but before that (0.1-0.5 s on 2 cores), or while the
    outputs were written after the fit, was recorded and then forgotten: the training finished, exit 0,
    FINISHED. Now it stops the run: `Stopped` (exit 143), run KILLED, before any step in the first case."""
    from conftest import tiny_params
    from rnnlab import outputs, training
    from rnnlab.stages import prepare, vocab

    params = tiny_params(tmp_path)
    prepare.run(params)
    vocab.run(params)
    if moment == "before Lightning's handler":
        real = training.make_trainer

        def make_trainer(*args, **kwargs):
            trainer = real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)  # deferred: only recorded
            time.sleep(0.1)
            return trainer

        monkeypatch.setattr(training, "make_trainer", make_trainer)
    else:
        real = outputs.write

        def write(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            return real(*args, **kwargs)

        monkeypatch.setattr(outputs, "write", write)
    runtime.catch_signals()
    with pytest.raises(Stopped) as err:
        training.train(params, ("model",))
    assert err.value.exit_status == 143
    assert [s for (s,) in sqlite3.connect(tmp_path / "mlflow.db").execute("select status from runs")] == ["KILLED"]
    if moment == "before Lightning's handler":
        assert not (tmp_path / "data" / "train" / "loss.csv").exists()  # not one step trained
