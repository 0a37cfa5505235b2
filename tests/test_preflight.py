"""Preflight (rnnlab.preflight, run by the `params` stage): what can be known to fail is found before DVC
removes any stage's outputs; a later stage that still fails under DVC names the command that brings them
back, and that command does."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import TINY, run, tiny_params
from rnnlab import corpus, preflight
from rnnlab.errors import UserError
from rnnlab.stages import params as params_stage


def check(params) -> None:
    preflight.check(params, corpus.preview(params.corpus, Path(params.paths.raw)))


def test_the_default_tiny_config_passes_and_records_the_checks(tmp_path):
    params = tiny_params(tmp_path)
    params_stage.run(params)
    recorded = (Path(params.paths.state) / "preflight.json").read_text()
    assert '"corpus"' in recorded and '"devices"' in recorded and '"tracking"' in recorded


@pytest.mark.parametrize("text, overrides, message", [
    ("", [], "the corpus (file) is empty after cleaning"),
    (" \n\n  \n", [], "the corpus (file) is empty after cleaning"),
    ("a b c\n" * 200, ["data.batch_size=256"], "the train split has 1,080 characters, at most 1,260 tokens: too "
                                               "few for one window of 2,304 tokens; use a larger corpus, or lower "
                                               "data.batch_size or data.bptt"),
    ("a b c\n" * 200, ["corpus.val_frac=0"], "the val split is empty (corpus.val_frac=0"),
    ("a b c\n" * 200, ["data.eval_batch_size=64"], "the val split has 60 characters, at most 70 tokens: too few"
                                                   " for one window of 576 tokens; use a larger corpus, a larger "
                                                   "corpus.val_frac, or lower data.eval_batch_size or data.bptt"),
])
def test_a_corpus_too_small_for_a_window_is_refused_before_anything_runs(tmp_path, text, overrides, message):
    params = tiny_params(tmp_path, *overrides)
    Path(params.corpus.path).write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match="^" + re.escape(message)):
        check(params)


def test_no_validation_needs_no_val_split(tmp_path):
    check(tiny_params(tmp_path, "corpus.val_frac=0", "trainer.limit_val_batches=0"))


def test_a_missing_or_unreadable_corpus_file_is_one_line(tmp_path, monkeypatch):
    params = tiny_params(tmp_path)
    path = Path(params.corpus.path)
    real_open = open

    def refusing(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing)
    with pytest.raises(UserError, match=re.escape(f"cannot read {path} (Permission denied); check its permissions")):
        check(params)
    monkeypatch.undo()
    path.unlink()
    with pytest.raises(UserError, match="matches no file"):
        check(params)


def test_a_gpu_this_machine_lacks_is_refused(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match=r"trainer.accelerator=gpu with trainer.devices=1 needs 1 device\(s\), and "
                                        "this machine has none; use trainer.accelerator=auto"):
        preflight.devices(tiny_params(tmp_path, "trainer.accelerator=gpu"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="needs 2 device"):
        preflight.devices(tiny_params(tmp_path, "trainer.accelerator=cuda", "trainer.devices=2"))
    preflight.devices(tiny_params(tmp_path, "trainer.accelerator=gpu"))


def test_several_nodes_without_a_cluster_launcher_are_refused_not_a_30_minute_wait(tmp_path, monkeypatch):
    for key in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "RANK", "MASTER_ADDR", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    params = tiny_params(tmp_path, "trainer.strategy=ddp", "trainer.num_nodes=2")
    with pytest.raises(UserError, match="trainer.num_nodes=2 needs a process on each node"):
        preflight.topology(params)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    preflight.topology(params)


def test_batch_sizes_that_do_not_divide_among_ddp_processes_are_refused_in_the_preflight(tmp_path):
    """Before DVC removes any output (the params stage), not when the Trainer starts."""
    params = tiny_params(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                         "data.batch_size=3")
    with pytest.raises(UserError, match=r"^data.batch_size=3 does not divide among 2 processes .* use a multiple of 2$"):
        preflight.check(params, None)
    params = tiny_params(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                         "data.batch_size=4", "data.eval_batch_size=5")
    with pytest.raises(UserError, match=r"^data.eval_batch_size=5 does not divide among 2 processes"):
        preflight.topology(params)  # the train stage's own check (python pipeline/train.py) runs it too
    preflight.check(tiny_params(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                                "data.batch_size=4", "data.eval_batch_size=2"), None)


def test_an_mlflow_store_that_is_not_sqlite_or_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "not.db").write_text("hello")
    with pytest.raises(UserError, match="is not an SQLite database"):
        preflight.tracking(tiny_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'not.db'}"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder that can be written"):
        preflight.tracking(tiny_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'file' / 'mlflow.db'}"))
    (tmp_path / "folder.db").mkdir()  # MLflow would retry for minutes
    with pytest.raises(UserError, match="folder.db is a folder"):
        preflight.tracking(tiny_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'folder.db'}"))
    sqlite3.connect(tmp_path / "real.db").execute("create table t (x)")
    preflight.tracking(tiny_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'real.db'}"))


def digests(project: Path) -> dict[str, str]:
    """Every file of the previous run that a failed stage could take away."""
    data = project / "data"
    files = [*data.glob("prepared/*"), *data.glob("train/model/*"), *data.glob("train/*.json"),
             *data.glob("train/*.csv"), *data.glob("eval/*")]
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


@pytest.mark.slow
def test_under_dvc_an_empty_corpus_keeps_every_previous_output_and_a_failed_train_names_the_restore(
        trained_project):
    project = trained_project  # TINY, `dvc repro`, committed
    before = digests(project)
    assert "data/train/model/model.pt" in before and "data/prepared/train.txt" in before

    (project / "empty.txt").write_text("")
    run(["python", "-m", "rnnlab.config", *TINY, "corpus.path=empty.txt"], project)
    failed = run(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert errors[0] == "error: the corpus (file) is empty after cleaning; give a file with some text in it", errors
    assert digests(project) == before  # nothing removed: the preflight failed before prepare ran

    # A training that diverges fails in its own stage, after DVC removed its outputs: the line says how to
    # bring them back, and that brings them back.
    run(["python", "-m", "rnnlab.config", *TINY, "model=rnn", "optim=sgd", "optim.lr=1e38",
         "trainer.gradient_clip_val=0"], project)
    failed = run(["dvc", "repro"], project, check=False)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dvc checkout --force train" in errors[0], failed.stderr[-3000:]
    assert not (project / "data" / "train" / "model").exists()  # DVC removed it before the stage ran
    restore = errors[0].split("DVC removed the stage's previous outputs before it ran: ")[1]
    assert restore.startswith("`dvc checkout --force train` brings them back, `git checkout -- data/train/metrics.json "
                              "data/train/loss.csv data/train/val.csv data/train/grad_norm.csv data/train/gtt.csv` "
                              "the metrics it does not cache, if committed)"), restore
    # a file the failed run left half-written where an output was: plain `dvc checkout` refuses to replace it
    (project / "data" / "train" / "model").mkdir(parents=True)
    (project / "data" / "train" / "model" / "model.pt").write_bytes(b"half-written")
    for command in restore.split("`")[1::2]:
        run(command.split(), project)
    assert digests(project) == before


@pytest.mark.parametrize("devices", ["-1", "[0]"])
def test_what_lightning_refuses_for_a_cpu_is_one_line(tmp_path, devices):
    """-1 (all GPUs) and device indices mean nothing to Lightning's CPU accelerator: a TypeError there."""
    from rnnlab import training

    params = tiny_params(tmp_path, "trainer.accelerator=cpu", f"trainer.devices={devices}")
    with pytest.raises(UserError, match=r"^Lightning refuses the trainer settings \(`devices` selected with "
                                        r"`CPUAccelerator` should be an int > 0.*fix them under trainer:"):
        training.make_trainer(params)
