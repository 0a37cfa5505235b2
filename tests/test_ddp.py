"""Data-parallel training (Lightning DDP, 2 CPU processes over gloo) computes what one process computes.

Each process owns half of the B streams and carries their state; Lightning all-reduces the gradients
before the Trainer clips them. So after the same steps the parameters equal the single process's (up
to float rounding), and the validation loss is the exact token-weighted mean over both processes'
streams. Runs the real commands (`dvc exp run`, `dvc repro`), whose stage script Lightning's DDP launcher
starts again as the second process.
"""

from __future__ import annotations

import csv
import sqlite3

import pytest
import torch

from conftest import TINY, kill_train_after_a_checkpoint, run, set_args

pytestmark = pytest.mark.slow

# Clipping active on every step (the norm is far above 0.05), SGD so that float rounding stays rounding.
PARITY = [*TINY, "optim=sgd", "optim.lr=0.5", "optim.schedule=none", "trainer.max_steps=12",
          "trainer.val_check_interval=6", "trainer.gradient_clip_val=0.05", "gradstats.every_n_steps=1"]
DDP = ["trainer.strategy=ddp", "trainer.devices=2"]


def train(project, overrides: list[str], exp: bool = False) -> dict:
    """Train with these overrides through `dvc exp run` (the whole pipeline) or `dvc repro train`."""
    if exp:
        out = run(["dvc", "exp", "run", *set_args(overrides)], project).stdout
    else:
        run(["python", "-m", "rnnlab.config", *overrides], project)
        out = run(["dvc", "repro", "train"], project).stdout
    train_dir = project / "data" / "train"
    state = torch.load(train_dir / "model" / "model.pt", weights_only=True)
    with open(train_dir / "val.csv") as fh:
        val = [float(row["val_loss"]) for row in csv.DictReader(fh)]
    with open(train_dir / "grad_norm.csv") as fh:
        grad = list(csv.DictReader(fh))
    return {"state": state, "val": val, "grad": grad, "out": out}


def test_two_processes_train_the_same_parameters_as_one(project):
    one = train(project, [*PARITY, "trainer.accelerator=cpu"])  # the train stage alone is the reference
    two = train(project, [*PARITY, *DDP, "trainer.accelerator=cpu"], exp=True)  # the command
    assert all(float(row["clip_fraction"]) == 1.0 for row in two["grad"])  # clipping fired on every step
    assert len(two["grad"]) == 12 and all(float(row["post_clip"]) == pytest.approx(0.05, rel=1e-5)
                                          for row in two["grad"])
    assert one["state"].keys() == two["state"].keys()
    for name, value in one["state"].items():
        torch.testing.assert_close(two["state"][name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert len(two["val"]) == len(one["val"]) == 2
    assert two["val"] == pytest.approx(one["val"], rel=1e-6)  # token-weighted mean over both processes
    assert two["out"].count("trained 12 steps") == 1  # one report: the second process prints nothing
    db = sqlite3.connect(project / "mlflow.db")
    assert db.execute("select count(*) from runs").fetchone()[0] == 2  # one MLflow run per training


def test_ddp_resumes_after_kill_9(project, tmp_path):
    """kill -9 of both processes after a checkpoint, then `dvc repro train` resumes both processes' streams,
    states and generators and ends with the numbers of an uninterrupted DDP run."""
    overrides = [*PARITY, *DDP, "trainer.max_steps=300", "trainer.val_check_interval=25", "optim.lr=0.1",
                 "gradstats.every_n_steps=10"]
    run(["python", "-m", "rnnlab.config", *overrides], project)
    reference = tmp_path / "reference"
    run(["cp", "-a", str(project), str(reference)], tmp_path)
    whole = train(reference, overrides)

    # After the first checkpoint, mid-epoch (the carried states matter); kills both training processes.
    last = kill_train_after_a_checkpoint(project, delay=(0.5, 2.0))
    assert last.exists() and not (project / "data" / "train" / "metrics.json").exists(), "killed too late"

    resumed = train(project, overrides)
    assert "resuming the interrupted training" in resumed["out"]
    for name, value in whole["state"].items():
        torch.testing.assert_close(resumed["state"][name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert resumed["val"] == pytest.approx(whole["val"], rel=1e-6)
