"""Fault injection: each fault found by trying to break rnnlab, reproduced, with what must happen instead.

Every case ends in a one-line error with exit status 2, or in a clean recovery: no lost outputs, no
manual delete, no MLflow run left RUNNING. Most cases train in-process (a crash is an exception raised
by a callback at a given step); kill -9 and `dvc repro` run as real processes (two sweeps at once:
test_sweep.py). The whole suite is in the slow tier (`pytest -q` and CI run it).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from conftest import conf_spec, run
from rnnlab.errors import UserError
from test_mlflow_ui import mlflow_server_control, restore_mlflow_uri  # noqa: F401  (fixtures)
from test_training import run_training, tiny_job

pytestmark = pytest.mark.slow


class Crash(pl.Callback):
    """Stands for a killed process at a given step (in-process: an exception), or calls `action` there."""

    def __init__(self, step: int, exc: BaseException | None = None, action=None) -> None:
        self.step, self.exc, self.action = step, exc or RuntimeError("simulated crash"), action

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            if self.action:
                return self.action()
            raise self.exc


def crashed(vocab_dir: Path, tmp_path: Path, step: int = 25, **trainer) -> Path:
    """A training of 30 steps (validation every 10) that died at `step`; returns its checkpoint folder."""
    job = tiny_job(vocab_dir, tmp_path, **trainer)
    job.extra_callbacks = [Crash(step)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(job)
    return tmp_path / "train" / "checkpoints"


def statuses(tmp_path: Path) -> list[str]:
    return [s for (s,) in sqlite3.connect(tmp_path / "mlflow.db").execute("select status from runs")]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# --- interrupted training never gets stuck -------------------------------------------------------------


def test_truncated_last_ckpt_falls_back_to_best(vocab_dir, tmp_path, capsys):
    ckpts = crashed(vocab_dir, tmp_path)
    truncate(ckpts / "last.ckpt")
    metrics = run_training(tiny_job(vocab_dir, tmp_path))
    err = capsys.readouterr().err
    assert f"note: {ckpts / 'last.ckpt'} cannot be read" in err
    assert metrics["step"] == 30 and statuses(tmp_path) == ["FINISHED"]  # the same run, continued


def test_no_readable_checkpoint_starts_afresh(vocab_dir, tmp_path, capsys):
    ckpts = crashed(vocab_dir, tmp_path)
    truncate(ckpts / "last.ckpt")
    (ckpts / "best.ckpt").write_bytes(b"")
    assert run_training(tiny_job(vocab_dir, tmp_path))["step"] == 30
    assert f"no readable checkpoint in {ckpts}; starting afresh" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["hello\n", "q", "{}"])
def test_text_in_place_of_last_ckpt_falls_back_to_best(vocab_dir, tmp_path, capsys, text):
    ckpts = crashed(vocab_dir, tmp_path)
    (ckpts / "last.ckpt").write_text(text)
    assert run_training(tiny_job(vocab_dir, tmp_path))["step"] == 30
    assert f"note: {ckpts / 'last.ckpt'} cannot be read" in capsys.readouterr().err


def test_a_checkpoint_without_a_lightning_section_is_not_resumed(vocab_dir, tmp_path):
    from rnnlab import checkpoints

    ckpts = crashed(vocab_dir, tmp_path)
    assert checkpoints.readable(ckpts / "last.ckpt") is None
    ckpt = torch.load(ckpts / "last.ckpt", weights_only=True)
    del ckpt["lr_schedulers"]
    torch.save(ckpt, ckpts / "last.ckpt")
    assert checkpoints.readable(ckpts / "last.ckpt")== ("not a checkpoint of this rnnlab version "
                                                       "('lr_schedulers' should be a list)")


def test_run_json_with_a_number_as_run_id_starts_afresh(vocab_dir, tmp_path, capsys):
    ckpts = crashed(vocab_dir, tmp_path)
    state = json.loads((ckpts / "run.json").read_text())
    (ckpts / "run.json").write_text(json.dumps(state | {"run_id": 5}))
    assert run_training(tiny_job(vocab_dir, tmp_path))["step"] == 30
    assert "run.json is not what rnnlab writes ('run_id' should be a str or null); starting afresh" in capsys.readouterr().err


def test_truncated_run_json_starts_afresh(vocab_dir, tmp_path, capsys):
    ckpts = crashed(vocab_dir, tmp_path)
    truncate(ckpts / "run.json")
    assert run_training(tiny_job(vocab_dir, tmp_path))["step"] == 30
    assert "run.json cannot be read" in capsys.readouterr().err
    assert statuses(tmp_path) == ["FAILED", "FINISHED"]  # the crashed run is marked, a new one finished


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(vocab_dir, tmp_path, monkeypatch):
    real_save, saves = torch.save, []

    def save(obj, fh, *args, **kwargs):  # at step 20, best.ckpt is written, then last.ckpt hits a full disk
        saves.append(obj.get("global_step"))
        if saves.count(20) == 2:
            fh.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(UserError, match=r"cannot write .*last\.ckpt: No space left on device; free some space"):
        run_training(tiny_job(vocab_dir, tmp_path))
    ckpts = tmp_path / "train" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 10  # the previous one, intact
    assert not list(ckpts.glob(".*.tmp")) and statuses(tmp_path) == ["FAILED"]
    monkeypatch.setattr(torch, "save", real_save)
    assert run_training(tiny_job(vocab_dir, tmp_path))["step"] == 30  # resumes from step 10


class Payload:
    """What a crafted checkpoint would run when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_payload_in_last_ckpt_never_runs(vocab_dir, tmp_path, monkeypatch, capsys):
    ckpts = crashed(vocab_dir, tmp_path)
    marker = tmp_path / "payload-ran"
    with open(ckpts / "last.ckpt", "wb") as fh:
        torch.save({"rnnlab": Payload(marker)}, fh)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would make torch's default unpickle anything
    assert run_training(tiny_job(vocab_dir, tmp_path))["step"] == 30
    assert not marker.exists()
    assert "last.ckpt cannot be read (Weights only load failed" in capsys.readouterr().err


def test_a_deleted_mlflow_database_means_a_new_run(vocab_dir, tmp_path):
    crashed(vocab_dir, tmp_path)
    (tmp_path / "mlflow.db").unlink()
    rerun = ("import sys; from pathlib import Path; from test_training import run_training, tiny_job; from rnnlab import training; "
             "run_training(tiny_job(Path(sys.argv[1]), Path(sys.argv[2])))")  # a new process, as `dvc repro`
    proc = run(["python", "-c", rerun, str(vocab_dir), str(tmp_path)], tmp_path,
               env={"PYTHONPATH": str(Path(__file__).parent)})
    assert f"of the interrupted training is gone from sqlite:///{tmp_path}/mlflow.db; logging to a new run" in proc.stderr
    assert statuses(tmp_path) == ["FINISHED"]


def test_leftover_temporary_files_are_removed_and_outputs_follow_the_umask(vocab_dir, tmp_path):
    leftover = tmp_path / "train" / "model" / ".model.pt.x1y2.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"from a killed run")
    old = os.umask(0o022)
    try:
        run_training(tiny_job(vocab_dir, tmp_path, max_steps=10))
    finally:
        os.umask(old)
    assert not leftover.exists()
    for name in ("metrics.json", "model/model.pt", "checkpoints/last.ckpt"):
        assert (tmp_path / "train" / name).stat().st_mode & 0o777 == 0o644, name


# --- the MLflow run always ends with its real status -----------------------------------------------------


def test_a_crash_marks_the_run_failed_and_ctrl_c_killed(vocab_dir, tmp_path):
    crashed(vocab_dir, tmp_path / "crash")
    assert statuses(tmp_path / "crash") == ["FAILED"]

    job = tiny_job(vocab_dir, tmp_path / "ctrl-c")
    job.extra_callbacks = [Crash(15, KeyboardInterrupt())]
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning shuts down gracefully, then exits
            run_training(job)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while shutting down
    assert statuses(tmp_path / "ctrl-c") == ["KILLED"]


def test_a_crash_before_training_starts_marks_the_run_failed(vocab_dir, tmp_path):
    (vocab_dir / "vocab.json").unlink()
    with pytest.raises(UserError, match="dvc repro vocab"):
        run_training(tiny_job(vocab_dir, tmp_path))
    assert statuses(tmp_path) == ["FAILED"]


def test_a_broken_mlflow_store_is_one_line(vocab_dir, tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database")
    with pytest.raises(UserError, match=r"^the MLflow store .*mlflow.db is not an SQLite database; move it away"):
        run_training(tiny_job(vocab_dir, tmp_path))


def test_an_mlflow_server_gone_mid_run_and_never_back_costs_the_training_nothing(
        vocab_dir, tmp_path, mlflow_server_control, restore_mlflow_uri, monkeypatch, capsys):
    """The server stops at step 12 of 30 and never comes back: the training finishes with every output, says
    once that the server takes no writes, and keeps what it could not send (tests/test_tracking_outage.py
    has the server come back)."""
    url, stop = mlflow_server_control
    monkeypatch.setenv("RNNLAB_TRACKING_WAIT_S", "2")  # how long the end of the training waits for the server
    job = tiny_job(vocab_dir, tmp_path / "run")
    job.tracking = conf_spec("tracking", uri=url)
    job.extra_callbacks = [Crash(12, action=stop)]  # the server goes away at step 12; step 15 logs metrics
    metrics = run_training(job)
    assert metrics["step"] == 30 and (tmp_path / "run" / "train" / "model" / "model.pt").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert sum("does not take writes" in line for line in warnings) == 1, warnings
    unsent = json.loads((tmp_path / "run" / "train" / "mlflow-unsent.json").read_text())
    assert unsent, "nothing kept of what the server did not take"


# --- wrong types never crash -------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("trainer.max_steps=abc", "trainer.max_steps='abc': expected an integer"),
    ("trainer.max_steps=0", "trainer.max_steps=0 trains nothing; give at least 1 (or -1 with trainer.max_time)"),
    ("model.hidden_size=abc", "model.hidden_size='abc': expected an integer"),
    ("model.hidden_size=2.5", "model.hidden_size=2.5: expected an integer"),
    ("corpus.max_chars=lots", "corpus.max_chars='lots': expected an integer or null"),
    ("optim.lr=fast", "optim.lr='fast': expected a number"),
])
def test_wrong_types_in_overrides_are_one_line_and_write_nothing(tmp_path, override, message):
    (tmp_path / "conf").symlink_to(Path(__file__).resolve().parents[1] / "conf")
    proc = run(["python", "-m", "rnnlab.config", override], tmp_path, check=False)
    assert (proc.returncode, proc.stderr) == (2, f"error: {message}\n")
    assert not (tmp_path / "params.yaml").exists()


def test_wrong_types_in_params_yaml_stop_before_anything_is_touched(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    for name in ("conf", "dvc.yaml"):
        (tmp_path / name).symlink_to(repo / name)
    run(["python", "-m", "rnnlab.config"], tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("hidden_size: 256", "hidden_size: big"))
    ckpt = tmp_path / "data" / "train" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"a finished run's checkpoint")
    for script in ("train", "prepare", "params"):
        proc = run(["python", f"{repo}/pipeline/{script}.py"], tmp_path, check=False)
        assert (proc.returncode, proc.stderr) == (2, "error: model.hidden_size='big': expected an integer\n")
    assert ckpt.read_bytes() == b"a finished run's checkpoint" and not (tmp_path / "mlflow.db").exists()

    params.write_text(params.read_text().replace("hidden_size: big", "hidden_size: 256").replace(
        "temperature: 0.8", "temperature: [0.8"))
    proc = run(["python", f"{repo}/pipeline/sample.py"], tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: params.yaml is not valid YAML (")
    assert len(proc.stderr.splitlines()) == 1


def test_a_wrong_type_in_a_sample_override_is_one_line(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "conf").symlink_to(repo / "conf")
    run(["python", "-m", "rnnlab.config"], tmp_path)
    proc = run(["python", f"{repo}/pipeline/sample.py", "sample.temperature=hot"], tmp_path, check=False)
    assert (proc.returncode, proc.stderr) == (2, "error: sample.temperature='hot': expected a number\n")


# --- end to end: a hand-edited params.yaml (kill -9: test_signals.py; two sweeps at once: test_sweep.py) --


def test_a_hand_edited_params_yaml_keeps_the_outputs_of_dvc_repro(trained_project):
    project = trained_project
    model = project / "data" / "train" / "model" / "model.pt"
    before = model.read_bytes()
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("hidden_size: 16", "hidden_size: big"))
    proc = run(["dvc", "repro"], project, check=False)
    assert proc.returncode != 0
    assert "error: model.hidden_size='big': expected an integer" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert model.read_bytes() == before


# --- damaged files: one line naming the file and the fix ---------------------------------------------------


def _damage(kind: str, model_dir: Path, vocab_dir: Path) -> tuple[Path, str]:
    """Damage one file the sample and evaluate stages read; returns the path given and the file blamed."""
    target = {"model": model_dir / "model.pt", "meta": model_dir / "meta.json", "vocab": vocab_dir / "vocab.json"}
    if kind == "truncated model.pt":
        truncate(target["model"])
        return model_dir, "model.pt"
    if kind == "meta.json deleted":
        target["meta"].unlink()
        return model_dir, "meta.json"
    if kind == "meta.json of another shape":
        target["meta"].write_text('{"model": 3, "vocab_size": "x", "vocab_hash": "y"}')
        return model_dir, "meta.json"
    if kind in ("meta.json without the vocabulary hash", "meta.json with a number as the MLflow run id"):
        meta = json.loads(target["meta"].read_text())
        if "hash" in kind:
            del meta["vocab_hash"]
        else:
            meta["mlflow_run_id"] = 5
        target["meta"].write_text(json.dumps(meta))
        return model_dir, "meta.json"
    if kind == "truncated vocab.json":
        truncate(target["vocab"])
        return model_dir, "vocab.json"
    if kind == "vocab.json without its hash":
        data = json.loads(target["vocab"].read_text())
        del data["hash"]
        target["vocab"].write_text(json.dumps(data))
        return model_dir, "vocab.json"
    if kind == "a foreign file as the checkpoint":
        foreign = model_dir.parent / "notes.ckpt"
        foreign.write_text("not a checkpoint\n")
        return foreign, "notes.ckpt"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated model.pt", "meta.json deleted", "meta.json of another shape",
                                  "meta.json without the vocabulary hash", "meta.json with a number as the MLflow run id",
                                  "truncated vocab.json", "vocab.json without its hash",
                                  "a foreign file as the checkpoint"])
def test_a_damaged_file_is_one_line_naming_it_and_the_fix(vocab_dir, tmp_path, kind):
    from rnnlab import trained_model, vocab
    from rnnlab.model import RNNLM

    voc = vocab.VocabDir(vocab_dir).vocab()
    model_dir = tmp_path / "train" / "model"
    trained_model.save(model_dir, RNNLM(len(voc), conf_spec("model", embedding_size=4, hidden_size=8)), voc, {})
    given, blamed = _damage(kind, model_dir, vocab_dir)
    with pytest.raises(UserError) as err:
        trained_model.load_trained(vocab_dir, given)
    message = str(err.value)
    assert blamed in message and "\n" not in message and ("dvc repro" in message or "give a .ckpt" in message)


def test_a_model_whose_meta_json_claims_another_vocabularys_hash_is_refused_by_its_size(vocab_dir, tmp_path):
    """The hash copied from another vocabulary into meta.json: the sizes still differ, and loading says so
    (sampling would index past the vocabulary, evaluation would score the wrong distribution)."""
    from rnnlab import trained_model, vocab
    from rnnlab.model import RNNLM

    voc = vocab.VocabDir(vocab_dir).vocab()
    model_dir = tmp_path / "train" / "model"
    trained_model.save(model_dir, RNNLM(len(voc) + 3, conf_spec("model", embedding_size=4, hidden_size=8)), voc, {})
    meta = json.loads((model_dir / "meta.json").read_text())
    meta["vocab_size"] = len(voc) + 3  # a model of another vocabulary, with this vocabulary's hash
    (model_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=rf"^the model in .* has {len(voc) + 3} output tokens, but the vocabulary given "
                                        rf"\(.*\) has {len(voc)}; retrain it"):
        trained_model.load_trained(vocab_dir, model_dir)
