"""Training: loss goes down, gradient statistics are right, checkpoints resume, errors are one line."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from conftest import REPO, conf_spec
from rnnlab import config, gradstats, trained_model, training, vocab
from rnnlab.errors import UserError
from rnnlab.model import RNNLM
from rnnlab.params import Params, build
from rnnlab.schema import TrainerSpec
from rnnlab.stages import train as train_stage

pytestmark = pytest.mark.slow  # every test here trains a model (Lightning) or a recurrent net by hand


class Job:
    """A tiny training's params, sections swapped by assignment (`job.model = conf_spec("model", ...)`), and
    extra Lightning callbacks (`job.extra_callbacks`); `run_training(job)` trains it as the train stage does."""

    def __init__(self, params: Params, callbacks: list = ()) -> None:
        self.__dict__.update({f.name: getattr(params, f.name) for f in dataclasses.fields(Params)})
        self.extra_callbacks = list(callbacks)

    def params(self) -> Params:
        return Params(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Params)})


def tiny_job(vocab_dir: Path, tmp_path: Path, **trainer) -> Job:
    base = config.defaults(REPO / "conf")
    trainer = {"max_steps": 30, "val_check_interval": 10, "check_val_every_n_epoch": None, "max_epochs": -1,
               "log_every_n_steps": 5, "accelerator": "cpu", "gradient_clip_val": 1.0,
               "gradient_clip_algorithm": "norm"} | trainer
    params = base.replace(
        paths={"vocab": str(vocab_dir), "train": str(tmp_path / "train")}, seed=0,
        model={"cell": "gru", "embedding_size": 8, "hidden_size": 16}, optim={"lr": 0.01},
        data={"batch_size": 4, "bptt": 16, "eval_batch_size": 4},
        gradstats={"every_n_steps": 5, "gtt_length": 12, "gtt_batch": 2, "samples": 2, "sample_length": 20},
        tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        trainer=build(TrainerSpec, "trainer", base.section("trainer") | trainer))
    return Job(params)


def run_training(job: Job) -> dict:
    return training.train(job.params(), train_stage.READS, job.extra_callbacks)


def test_training_writes_model_metrics_plots_and_mlflow_run(vocab_dir, tmp_path):
    metrics = run_training(tiny_job(vocab_dir, tmp_path))
    out = tmp_path / "train"
    assert metrics["step"] == 30 and metrics["val_loss"] < 3.0  # ln(|V|=~30) = 3.4 at the start
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for plot in ("gradient_through_time.png", "loss.png", "gradient_norm.png"):
        assert (out / "plots" / plot).stat().st_size > 1000, plot
    rows = (out / "grad_norm.csv").read_text().splitlines()
    assert rows[0] == "step,pre_clip,post_clip,clip_fraction" and len(rows) == 1 + 30 // 5
    model, meta = trained_model.load(out / "model", vocab.Vocab.load(vocab_dir / "vocab.json"))
    assert meta["vocab_hash"] == vocab.Vocab.load(vocab_dir / "vocab.json").hash

    db = sqlite3.connect(tmp_path / "mlflow.db")
    keys = {k for (k,) in db.execute("select distinct key from metrics")}
    assert {"train/loss", "val/loss", "val/ppl", "val/bpc", "grad/norm_pre_clip", "grad/norm_post_clip",
            "grad/clip_fraction", "grad_group/layer0.recurrent", "gtt/d000", "train/tokens_per_s", "time/train_s"} <= keys
    (run_id,) = db.execute("select run_uuid from runs").fetchone()
    assert meta["mlflow_run_id"] == run_id
    artifacts = Path(db.execute("select artifact_uri from runs").fetchone()[0])
    assert (artifacts / "plots" / "gradient_through_time.png").exists()
    assert any((artifacts / "samples").glob("step_*.txt"))
    assert (artifacts / "model" / "model.pt").exists()


def test_a_run_shorter_than_the_validation_interval_ends_with_a_validation(vocab_dir, tmp_path):
    metrics = run_training(tiny_job(vocab_dir, tmp_path, max_steps=7, val_check_interval=10))
    out = tmp_path / "train"
    assert metrics["step"] == 7 and metrics["best_step"] == 7 and metrics["val_loss"] > 0
    assert (out / "val.csv").read_text().splitlines()[1].startswith("7,")
    assert (out / "model" / "model.pt").exists() and (out / "plots" / "loss.png").stat().st_size > 1000
    assert (out / "plots" / "gradient_through_time.png").exists() and len((out / "gtt.csv").read_text().splitlines()) == 13


def test_max_time_also_ends_with_a_validation(vocab_dir, tmp_path):
    metrics = run_training(tiny_job(vocab_dir, tmp_path, max_steps=-1, max_time={"milliseconds": 300},
                                      val_check_interval=10_000))
    assert metrics["step"] > 0 and metrics["best_step"] == metrics["step"]


def test_diagnostics_switch_off_by_config(vocab_dir, tmp_path):
    job = tiny_job(vocab_dir, tmp_path, max_steps=10)
    job.gradstats = conf_spec("gradstats", every_n_steps=0, gtt_length=0, samples=0)
    metrics = run_training(job)
    out = tmp_path / "train"
    assert "clip_fraction" not in metrics and "gtt_ratio_far_near" not in metrics
    assert (out / "grad_norm.csv").read_text() == "step,pre_clip,post_clip,clip_fraction\n"
    assert not (out / "plots" / "gradient_through_time.png").exists() and (out / "plots" / "loss.png").exists()
    db = sqlite3.connect(tmp_path / "mlflow.db")
    keys = {k for (k,) in db.execute("select distinct key from metrics")}
    assert "val/loss" in keys and not any(k.startswith(("grad", "gtt")) for k in keys)
    artifacts = Path(db.execute("select artifact_uri from runs").fetchone()[0])
    assert not (artifacts / "samples").exists()


def test_clipping_statistics_before_and_after(vocab_dir, tmp_path):
    run_training(tiny_job(vocab_dir, tmp_path, gradient_clip_val=1e-4, max_steps=10))
    rows = [line.split(",") for line in (tmp_path / "train" / "grad_norm.csv").read_text().splitlines()[1:]]
    for _, pre, post, frac in rows:
        assert float(frac) == 1.0 and float(post) == pytest.approx(1e-4, rel=1e-2) and float(pre) > 1e-3


def test_no_clipping_means_pre_equals_post(vocab_dir, tmp_path):
    run_training(tiny_job(vocab_dir, tmp_path, gradient_clip_val=0, max_steps=10))
    rows = [line.split(",") for line in (tmp_path / "train" / "grad_norm.csv").read_text().splitlines()[1:]]
    assert all(float(frac) == 0.0 and float(pre) == float(post) for _, pre, post, frac in rows)


class Crash(pl.Callback):
    """Stands for a killed process (Ctrl-C makes Lightning exit the interpreter, so it can't be used here)."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 15:
            raise RuntimeError("simulated crash")


def test_interrupted_training_resumes_from_the_last_checkpoint(vocab_dir, tmp_path, capsys):
    job = tiny_job(vocab_dir, tmp_path)
    job.extra_callbacks = [Crash()]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(job)
    last = tmp_path / "train" / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=True)["rnnlab"]["seconds"]
    assert before > 0
    metrics = run_training(tiny_job(vocab_dir, tmp_path))
    assert "resuming the interrupted training" in capsys.readouterr().out
    assert metrics["step"] == 30
    db = sqlite3.connect(tmp_path / "mlflow.db")
    assert db.execute("select count(*) from runs").fetchone()[0] == 1  # the same MLflow run continued
    (seconds,) = db.execute("select value from metrics where key = 'time/train_s'").fetchone()
    assert seconds >= round(before, 1)  # the time before the crash counts (up to its last checkpoint)


def test_exploding_gradients_stop_with_a_clear_message(vocab_dir, tmp_path):
    job = tiny_job(vocab_dir, tmp_path, gradient_clip_val=0, max_steps=200)
    job.model, job.optim = conf_spec("model", cell="rnn", embedding_size=8, hidden_size=16), conf_spec("optim", algorithm="sgd", lr=1e38)
    with pytest.raises(UserError, match=r"became inf/NaN at step \d+ .*clipping is off: set trainer.gradient_clip_val"):
        run_training(job)


def test_unknown_trainer_argument_and_unreachable_server(vocab_dir, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="trainer.max_stepz is not a lightning.pytorch.Trainer argument"):
        run_training(tiny_job(vocab_dir, tmp_path, max_stepz=3))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    job = tiny_job(vocab_dir, tmp_path)
    job.tracking = conf_spec("tracking", uri=None)
    with pytest.raises(UserError, match="the MLflow tracking server http://127.0.0.1:9 does not answer"):
        run_training(job)
    assert not (tmp_path / "train" / "checkpoints").exists()  # failed before training started


def test_a_model_refuses_another_vocabulary(vocab_dir, tmp_path):
    voc = vocab.Vocab.load(vocab_dir / "vocab.json")
    trained_model.save(tmp_path / "m", RNNLM(len(voc), conf_spec("model", hidden_size=8)), voc, {})
    other = vocab.build("xyz\n", conf_spec("vocab", level="char"), line_corpus=False)
    with pytest.raises(UserError, match="was trained with vocabulary .* retrain"):
        trained_model.load(tmp_path / "m", other)
    with pytest.raises(UserError, match="no trained model in"):
        trained_model.load(tmp_path / "nothing", voc)


def test_gradient_through_time_vanishes_for_a_contracting_rnn():
    torch.manual_seed(0)
    model = RNNLM(5, conf_spec("model", cell="rnn", embedding_size=4, hidden_size=8))
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(0.3)  # a contracting recurrence: gradients shrink with distance
    x = torch.randint(0, 5, (3, 30))
    norms = gradstats.gradient_through_time(model, x, x).flip(0)  # by distance
    assert norms.shape == (30,) and norms[0] > 0
    assert norms[20] < 1e-3 * norms[0]
    assert gradstats.probe_distances(30) == [0, 1, 2, 4, 8, 16]


def test_same_seed_same_validation_loss(vocab_dir, tmp_path, migrated_mlflow_db):
    import shutil

    for run_dir in ("a", "b"):  # an empty, migrated MLflow store in each (migrating takes ~1 s)
        (tmp_path / run_dir).mkdir()
        shutil.copy(migrated_mlflow_db, tmp_path / run_dir / "mlflow.db")
    first = run_training(tiny_job(vocab_dir, tmp_path / "a", max_steps=10))
    second = run_training(tiny_job(vocab_dir, tmp_path / "b", max_steps=10))
    assert first["val_loss"] == second["val_loss"]


@pytest.mark.parametrize("trainer, message", [
    ({"gradient_clip_val": -1}, "trainer.gradient_clip_val=-1 must be a number >= 0"),
    ({"gradient_clip_algorithm": "l1"}, "trainer.gradient_clip_algorithm='l1' is not known; use 'norm' or 'value'"),
])
def test_bad_trainer_settings(vocab_dir, tmp_path, trainer, message):
    with pytest.raises(UserError, match=message):
        run_training(tiny_job(vocab_dir, tmp_path, **trainer))


def test_bptt_longer_than_a_split_is_a_user_error(vocab_dir, tmp_path):
    job = tiny_job(vocab_dir, tmp_path)
    job.data = conf_spec("data", batch_size=4, bptt=5000, eval_batch_size=4)
    with pytest.raises(UserError, match=r"the train split has \d+ tokens, too few for one window of data.bptt"):
        run_training(job)


def memory_task(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences "k x x ... x k": the last token repeats the first, L steps back; x is noise."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(4, 8, (n, length + 1), generator=g)
    seq[:, 0] = torch.randint(0, 4, (n,), generator=g)
    seq[:, -1] = seq[:, 0]
    return seq[:, :-1], seq[:, 1:]


def trained_on_memory_task(cell: str) -> RNNLM:
    torch.manual_seed(0)
    model = RNNLM(8, conf_spec("model", cell=cell, embedding_size=8, hidden_size=32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        x, y = memory_task(64, 20, step)
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, -1], y[:, -1])  # only the recall matters
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model


def test_gradient_through_time_decays_faster_for_the_rnn_than_the_gru():
    x, y = memory_task(32, 40, seed=999)
    decay = {}
    for cell in ("rnn", "gru"):
        norms = gradstats.gradient_through_time(trained_on_memory_task(cell), x, y).flip(0)  # by distance
        decay[cell] = float(norms[30:].mean() / norms[0])  # far (30-39 steps back) vs the last input
    assert decay["rnn"] < 0.1 * decay["gru"], decay


def test_plateau_schedule_steps_once_per_validation(vocab_dir, tmp_path):
    job = tiny_job(vocab_dir, tmp_path, max_steps=40, val_check_interval=10)
    job.optim = conf_spec("optim", algorithm="sgd", lr=1.0, schedule="plateau", plateau_factor=0.5, plateau_patience=0)
    run_training(job)
    db = sqlite3.connect(tmp_path / "mlflow.db")
    lrs = sorted({v for (v,) in db.execute("select value from metrics where key = 'train/lr'")}, reverse=True)
    assert lrs[0] == 1.0 and len(lrs) <= 4  # at most one halving per validation (3 before the last steps)


def test_step_schedule_with_epochs_as_the_budget(vocab_dir, tmp_path, capsys):
    """Zaremba et al.'s schedule: lr × factor after every epoch from step_start_epoch on; trainer.max_epochs
    is the budget (max_steps -1), validation once per epoch."""
    job = tiny_job(vocab_dir, tmp_path, max_steps=-1, max_epochs=4, val_check_interval=1.0,
                   check_val_every_n_epoch=1, log_every_n_steps=1, limit_train_batches=6)
    job.optim = conf_spec("optim", algorithm="sgd", lr=1.0, schedule="step", step_start_epoch=2, step_factor=0.5)
    metrics = run_training(job)
    db = sqlite3.connect(tmp_path / "mlflow.db")
    lrs = sorted({v for (v,) in db.execute("select value from metrics where key = 'train/lr'")}, reverse=True)
    assert lrs == [1.0, 0.5, 0.25]  # epochs 1-2 at lr, then halved after epochs 2 and 3
    vals = db.execute("select count(distinct step) from metrics where key = 'val/loss'").fetchone()[0]
    assert vals == 4 and metrics["step"] == 24  # one validation per epoch, whole epochs
    assert "ETA" in capsys.readouterr().out  # the progress line knows the length of an epoch budget


def test_adaptive_head_trains_scores_and_samples(vocab_dir, tmp_path):
    from rnnlab import sampling

    job = tiny_job(vocab_dir, tmp_path, max_steps=60)
    job.model = conf_spec("model", cell="gru", embedding_size=8, hidden_size=16, head="adaptive", cutoffs=[4, 12])
    metrics = run_training(job)
    assert metrics["val_loss"] < 3.0  # ln(|V|) = 3.4 at the start
    db = sqlite3.connect(tmp_path / "mlflow.db")
    assert db.execute("select count(*) from metrics where key = 'grad_group/head'").fetchone()[0] > 0
    vocab_ = vocab.Vocab.load(vocab_dir / "vocab.json")
    model, _ = trained_model.load(tmp_path / "train" / "model", vocab_)
    out = sampling.sample(model, vocab_, conf_spec("sample", num_samples=4, max_length=30, unk="reject", top_k=10))
    assert len(out) == 4 and all(vocab.UNK_ID not in s.ids for s in out)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bf16_mixed_precision_trains(vocab_dir, tmp_path, cell):
    """trainer.precision=bf16-mixed (for GPUs; Lightning's CPU autocast runs the same code path here)."""
    job = tiny_job(vocab_dir, tmp_path, precision="bf16-mixed")
    job.model = conf_spec("model", cell=cell, embedding_size=8, hidden_size=16)
    metrics = run_training(job)
    assert metrics["step"] == 30 and metrics["val_loss"] < 3.3  # ln(|V|) = 3.4 at the start


def test_validation_samples_are_drawn_as_the_gradstats_section_says(vocab_dir, tmp_path):
    """The samples logged to MLflow at a validation are the sample stage's procedure with the settings of
    `gradstats.sample_*` (temperature, top-k/p, <unk> policy, prime; their own keys, so that the sample
    stage's never rerun the training), seeded by the step: exactly what sampling.sample gives for the
    saved model (the one validated, at step 10). The `sample` section plays no part."""
    from rnnlab import sampling

    job = tiny_job(vocab_dir, tmp_path, max_steps=10, val_check_interval=10)
    job.gradstats = dataclasses.replace(job.gradstats, sample_temperature=0.5, sample_top_k=5, sample_unk="reject",
                                        sample_prime="the")
    job.sample = conf_spec("sample", temperature=3.0, top_k=None, unk="allow", prime="SPEAKER")
    run_training(job)
    db = sqlite3.connect(tmp_path / "mlflow.db")
    artifacts = Path(db.execute("select artifact_uri from runs").fetchone()[0])
    logged = (artifacts / "samples" / "step_000010.txt").read_text()
    model, _ = trained_model.load(tmp_path / "train" / "model", vocab.Vocab.load(vocab_dir / "vocab.json"))
    voc = vocab.Vocab.load(vocab_dir / "vocab.json")
    as_configured = conf_spec("sample", temperature=0.5, top_k=5, unk="reject", prime="the", num_samples=2,
                              max_length=20, seed=10)
    expected = "\n\n----\n\n".join(s.text for s in sampling.sample(model, voc, as_configured))
    assert logged == expected and all(text.startswith("the") for text in logged.split("\n\n----\n\n"))
    old_defaults = dataclasses.replace(as_configured, temperature=1.0, top_k=None, unk="allow", prime="")
    assert logged != "\n\n----\n\n".join(s.text for s in sampling.sample(model, voc, old_defaults))


def test_an_exploded_validation_loss_fails_the_run(vocab_dir, tmp_path):
    """A finite but exploded loss (here: the head's weights blown up) is a divergence too: FAILED, one line."""
    from rnnlab.lit import NonFiniteError

    class BlowUp(pl.Callback):
        def on_validation_start(self, trainer, module) -> None:
            with torch.no_grad():
                module.model.head.weight.mul_(1e4)

    job = tiny_job(vocab_dir, tmp_path, max_steps=10, val_check_interval=10)
    job.extra_callbacks = [BlowUp()]
    with pytest.raises(NonFiniteError, match=r"validation loss exploded to .* nats/token at step 10 .*clip"):
        run_training(job)
    db = sqlite3.connect(tmp_path / "mlflow.db")
    assert [s for (s,) in db.execute("select status from runs")] == ["FAILED"]
    assert not (tmp_path / "train" / "metrics.json").exists()
