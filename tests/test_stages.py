"""The stage functions (rnnlab.stages) in-process on the real config shrunk: one scoring path, callbacks
from config, and what the pipeline scripts are."""

from __future__ import annotations

import ast
import csv
import re
import sqlite3

import pytest

from conftest import REPO, tiny_params
from rnnlab import trained_model, scoring
from rnnlab.errors import UserError
from rnnlab.stages import evaluate, prepare, sample, train, vocab
from rnnlab.stages.train import user_callbacks
from rnnlab.vocab import VocabDir


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # run from the repository root, as under `dvc repro`


@pytest.mark.slow  # trains (Lightning)
def test_final_val_loss_equals_evaluate_on_the_val_split(tmp_path, in_repo, fresh_mlflow_db):
    """Training's validation and the evaluate stage score with rnnlab.scoring: same checkpoint, same
    windows (B = data.eval_batch_size = evaluate.batch_size, T = data.bptt = evaluate.bptt), same number."""
    params = tiny_params(tmp_path, "corpus.test_frac=0", "trainer.max_steps=20", "trainer.val_check_interval=20",
                         "evaluate.batch_size=4", "evaluate.bptt=8",
                         "callbacks=[{_target_:lightning.pytorch.callbacks.LearningRateMonitor}]")
    for stage in (prepare, vocab, train, sample):
        stage.run(params)
    result = evaluate.run(params)
    assert result["split"] == "val"  # no test split: evaluate scores val

    db = sqlite3.connect(tmp_path / "mlflow.db")
    logged = db.execute("select value from metrics where key = 'val/loss' order by step desc").fetchone()[0]
    assert abs(logged - result["val"]["loss"]) <= 1e-6  # evaluate rounds to 6 decimals
    with open(tmp_path / "data" / "train" / "val.csv") as fh:
        (row,) = list(csv.DictReader(fh))  # one validation, at the last step: the saved model is that one
    # The double behind both (Lightning logs it as float32): the saved model, scored again, to the last bit.
    voc, model, _ = trained_model.load_trained(params.paths.vocab, tmp_path / "data" / "train" / "model")
    again = scoring.score_stream(model, VocabDir(params.paths.vocab).ids("val"), 4, 8)
    assert float(row["val_loss"]) == again["loss"] and round(again["loss"], 6) == result["val"]["loss"]
    keys = {k for (k,) in db.execute("select distinct key from metrics")}
    assert "lr-Adam" in keys  # the config's callback
    assert {"best/val_loss", "best/val_bpc", "best/best_step"} <= keys  # the summary: the saved model's
    (name,) = db.execute("select name from runs").fetchone()
    assert re.fullmatch(r"gru-char-h16-clip1\.0-[0-9a-f]{4}", name), name  # what ran, and unique
    tags = dict(db.execute("select key, value from tags where key like 'rnnlab.%'").fetchall())
    assert {"rnnlab.cell": "gru", "rnnlab.level": "char", "rnnlab.corpus": "file", "rnnlab.clip": "1.0"}.items() <= tags.items()


def test_bad_callback_entries_are_one_line_user_errors():
    assert type(user_callbacks([{"_target_": "lightning.pytorch.callbacks.LearningRateMonitor"}])[0]).__name__ == \
        "LearningRateMonitor"
    with pytest.raises(UserError, match=r"^callbacks: .*_target_"):
        user_callbacks([{"_target_": "no.such.Callback"}])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["params", "prepare", "vocab", "train", "sample", "evaluate"])
def test_every_stage_script_has_help_and_refuses_stray_arguments(stage):
    from conftest import run

    proc = run(["python", f"pipeline/{stage}.py", "--help"], REPO)
    assert proc.stdout.startswith(f"Stage `{stage}`") and "model:       gru, lstm, rnn" in proc.stdout
    assert "--quiet (print nothing but errors)" in proc.stdout
    if stage != "sample":  # sample takes key=value overrides for an interactive look
        proc = run(["python", f"pipeline/{stage}.py", "model=rnn"], REPO, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("error: 'model=rnn': this stage takes no arguments")


@pytest.mark.parametrize("script", sorted((REPO / "pipeline").glob("*.py")), ids=lambda p: p.name)
def test_scripts_are_thin_and_import_no_script(script):
    """Library code is imported by scripts, never scripts by scripts, and nobody edits sys.path."""
    tree = ast.parse(script.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
               {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {p.stem for p in (REPO / "pipeline").glob("*.py")}, imported
    assert "sys.path" not in script.read_text()
    if script.stem in ("params", "prepare", "vocab", "train", "sample", "evaluate"):
        assert len(script.read_text().splitlines()) < 20  # parse, call rnnlab.stages, report errors
