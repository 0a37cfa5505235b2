"""One training run: data, LightningModule, Trainer, checkpoints (with resume), MLflow, and outputs.

Outputs in `out_dir` (data/train by default):
  model/          the final model: `model.pt` (state_dict of the best validation checkpoint) + `meta.json`
  checkpoints/    Lightning's `last.ckpt` and `best.ckpt` plus `run.json` (params hash, MLflow run id);
                  kept between runs (DVC `persist: true`) so an interrupted `dvc repro` resumes
  metrics.json    final train/val numbers (a DVC metric)
  *.csv, plots/   loss, gradient norms and gradient-through-time (DVC plots, PNGs for offline viewing)
"""

from __future__ import annotations

import csv
import ctypes
import inspect
import json
import logging
import math
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar

from rnnlab import checkpoint, gradstats
from rnnlab.data import StreamDataModule, batchify
from rnnlab.errors import UserError
from rnnlab.files import atomic_write, write_json
from rnnlab.lit import GradStatsSpec, LitLM, OptimSpec
from rnnlab.model import ModelSpec
from rnnlab.sampling import SampleSpec, sample
from rnnlab.tracking import TrackingSpec, make_logger, params_hash
from rnnlab.vocab import Vocab, load_ids


@dataclass(frozen=True)
class DataSpec:
    batch_size: int = 64
    bptt: int = 128
    eval_batch_size: int = 64


@dataclass
class TrainJob:
    vocab_dir: Path
    out_dir: Path
    model: ModelSpec
    optim: OptimSpec
    data: DataSpec
    trainer: dict
    gradstats: GradStatsSpec
    tracking: TrackingSpec
    seed: int = 1337
    threads: int | None = None  # torch threads; parallel jobs should split the cores between them
    params: dict = field(default_factory=dict)  # everything logged to MLflow as params
    callbacks: list = field(default_factory=list)  # extra Lightning callbacks (tests, experiments)


def trainer_kwargs(values: dict) -> dict:
    """The `trainer` config group, checked against lightning.pytorch.Trainer's own arguments."""
    values = {k: v for k, v in values.items() if k != "name"}
    valid = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise UserError(f"trainer.{unknown[0]} is not a lightning.pytorch.Trainer argument; "
                        "see conf/trainer/default.yaml for the usual ones")
    if values.get("gradient_clip_algorithm") not in (None, "norm", "value"):
        raise UserError(f"trainer.gradient_clip_algorithm={values['gradient_clip_algorithm']!r}: use norm or value")
    clip = values.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or clip < 0):
        raise UserError(f"trainer.gradient_clip_val={clip} must be a number >= 0 (0 or null: no clipping)")
    if values.get("gradient_clip_val") == 0:
        values["gradient_clip_val"] = None  # 0 means off, as in Lightning
    return values


class LinePrinter(Callback):
    """Quiet, line-based progress for CI and DVC logs (a Rich bar is used in a terminal)."""

    def __init__(self, every: int) -> None:
        self.every = max(every, 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0:
            m = trainer.callback_metrics
            parts = [f"step {step}/{trainer.max_steps if trainer.max_steps > 0 else '?'}",
                     f"loss {float(outputs['loss']):.3f}"]
            if "val/loss" in m:
                parts.append(f"val {float(m['val/loss']):.3f}")
            if "train/tokens_per_s" in m:
                parts.append(f"{float(m['train/tokens_per_s']):,.0f} tok/s")
            print(" | ".join(parts), flush=True)


def resume_state(ckpt_dir: Path, phash: str) -> dict | None:
    """The checkpoint to resume from: only an unfinished run of the very same params."""
    state_file = ckpt_dir / "run.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    if state and state["params_hash"] == phash and not state["complete"] and (ckpt_dir / "last.ckpt").exists():
        return state
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # another config, or a finished run: start afresh
    return None


def sampling_hook(vocab: Vocab, spec: GradStatsSpec, logger):
    """Log a few samples (the sampler of sampling.py) to MLflow at each validation."""

    def hook(lit: LitLM) -> None:
        if spec.samples < 1 or logger is None:
            return
        step = lit.global_step
        samples = sample(lit.model, vocab, SampleSpec(num_samples=spec.samples, max_length=spec.sample_length,
                                                      seed=step))
        text = "\n\n----\n\n".join(s.text for s in samples)
        logger.experiment.log_text(logger.run_id, text, f"samples/step_{step:06d}.txt")
        logger.experiment.log_table(logger.run_id, {"step": [step] * len(samples), "text": [s.text for s in samples],
                                                    "stopped": [s.stopped for s in samples]}, "samples/samples.json")

    return hook


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    def write(fh) -> None:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)

    atomic_write(path, write)


def write_outputs(lit: LitLM, out: Path, title: str) -> list[Path]:
    hist = lit.history
    write_csv(out / "loss.csv", ["step", "train_loss"], hist["train"])
    write_csv(out / "val.csv", ["step", "val_loss", "val_ppl", "val_bpc"], hist["val"])
    write_csv(out / "grad_norm.csv", ["step", "pre_clip", "post_clip", "clip_fraction"], hist["grad"])
    last_gtt = hist["gtt"][-1][1] if hist["gtt"] else []
    write_csv(out / "gtt.csv", ["distance", "grad_norm"], [[d, v] for d, v in enumerate(last_gtt)])
    plots = []
    if hist["gtt"]:
        curves = [(f"step {step}", values) for step, values in hist["gtt"]]
        plots.append(out / "plots" / "gradient_through_time.png")
        gradstats.save_plot(curves, plots[-1], f"Gradient through time — {title}")
    return plots


def quiet_lightning() -> None:
    """Drop Lightning's start-up chatter and two warnings that do not apply here."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # run.json
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs torch 2.13


def keep_freed_memory() -> None:
    """Let glibc reuse freed blocks for large tensors instead of unmapping them after every training step.

    Each step allocates the same multi-MB activation buffers again; by default glibc returns them to the
    OS on free and page-faults them back in on the next step (measured on 2 cores: +9 % tokens/s with the
    BPTT layers of rnnlab.recurrence, +1 % with nn.GRU; README, Performance).
    No-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    if not libc.mallopt(m_mmap_threshold, 2**30):  # older glibc caps the threshold at 32 MB
        libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def train(job: TrainJob) -> dict:
    """Train, save the best model and metrics; returns the metrics written to metrics.json."""
    quiet_lightning()
    keep_freed_memory()
    torch.set_flush_denormal(True)  # a saturated (diverging) RNN otherwise crawls through denormal floats on CPU
    if job.threads:
        torch.set_num_threads(job.threads)
    pl.seed_everything(job.seed, workers=True, verbose=False)
    vocab = Vocab.load(job.vocab_dir / "vocab.json")
    stats = json.loads((job.vocab_dir / "stats.json").read_text())
    val = stats["splits"]["val"]
    spec = job.gradstats
    dm = StreamDataModule(job.vocab_dir, job.data.batch_size, job.data.bptt, job.data.eval_batch_size)
    kwargs = trainer_kwargs(job.trainer)
    lit = LitLM(len(vocab), vocab.hash, asdict(job.model), asdict(job.optim), asdict(job.gradstats),
                val_chars_per_token=val["chars"] / max(val["tokens"], 1))
    lit.probe = probe_window(load_ids(job.vocab_dir / "val.npy"), spec)

    out, ckpt_dir = Path(job.out_dir), Path(job.out_dir) / "checkpoints"
    phash = params_hash(job.params)
    resume = resume_state(ckpt_dir, phash)
    logger = make_logger(job.tracking, job.params, run_id=resume["run_id"] if resume else None)
    if resume:
        print(f"resuming the interrupted training from {ckpt_dir / 'last.ckpt'} (MLflow run {resume['run_id']})")
    else:
        logger.log_hyperparams(job.params)
    write_json(ckpt_dir / "run.json", {"params_hash": phash, "run_id": logger.run_id, "complete": False})
    lit.on_validation_end_hooks.append(sampling_hook(vocab, spec, logger))

    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                           save_last=True, auto_insert_metric_name=False, enable_version_counter=False)
    tty = sys.stdout.isatty()
    callbacks = [best, RichProgressBar() if tty else LinePrinter(max(kwargs.get("max_steps", 0) // 20, 25))]
    callbacks += job.callbacks
    trainer = pl.Trainer(**kwargs, logger=logger, callbacks=callbacks, enable_progress_bar=tty,
                         default_root_dir=out, inference_mode=False, num_sanity_val_steps=0,
                         enable_model_summary=False)
    trainer.fit(lit, dm, ckpt_path=str(ckpt_dir / "last.ckpt") if resume else None)
    if trainer.interrupted:
        raise UserError(f"training was interrupted at step {trainer.global_step}; run `dvc repro` again to resume "
                        f"from the last checkpoint in {ckpt_dir}")

    if best.best_model_path:
        lit.model.load_state_dict(checkpoint.read_lightning_checkpoint(Path(best.best_model_path))[0])
    metrics = final_metrics(lit, trainer)
    checkpoint.save_model(out / "model", lit.model, vocab, {"params_hash": phash, "mlflow_run_id": logger.run_id,
                                                            "step": trainer.global_step, "metrics": metrics})
    plots = write_outputs(lit, out, f"{lit.model.spec.cell}, clip {kwargs.get('gradient_clip_val')}")
    write_json(out / "metrics.json", metrics)
    log_artifacts(logger, job, out, plots)
    write_json(ckpt_dir / "run.json", {"params_hash": phash, "run_id": logger.run_id, "complete": True})
    return metrics


def probe_window(val_ids, spec: GradStatsSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fixed validation window of the gradient-through-time probe: first T+1 tokens of B streams."""
    if spec.gtt_length < 1 or len(val_ids) < spec.gtt_batch * (spec.gtt_length + 1):
        return None
    data = batchify(val_ids, spec.gtt_batch)[:, : spec.gtt_length + 1]  # (B, T+1)
    return data[:, :-1], data[:, 1:]


def final_metrics(lit: LitLM, trainer: pl.Trainer) -> dict:
    hist = lit.history
    best_val = min(hist["val"], key=lambda row: row[1]) if hist["val"] else None
    metrics = {"step": trainer.global_step, "train_loss": hist["train"][-1][1] if hist["train"] else None}
    if best_val:
        metrics |= {"val_loss": best_val[1], "val_ppl": best_val[2], "val_bpc": best_val[3], "best_step": best_val[0]}
    if hist["grad"]:
        metrics["clip_fraction"] = sum(row[3] for row in hist["grad"]) / len(hist["grad"])
    if hist["gtt"] and hist["gtt"][-1][1][0] > 0:
        values = hist["gtt"][-1][1]
        metrics["gtt_ratio_far_near"] = values[-1] / values[0]
    return {k: (float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}


def log_artifacts(logger, job: TrainJob, out: Path, plots: list[Path]) -> None:
    client, run_id = logger.experiment, logger.run_id
    client.log_dict(run_id, job.params, "config/params.json")
    client.log_artifact(run_id, str(job.vocab_dir / "vocab.json"), "vocab")
    client.log_artifacts(run_id, str(out / "model"), "model")
    for name in ("loss.csv", "val.csv", "grad_norm.csv", "gtt.csv", "metrics.json"):
        if (out / name).exists():
            client.log_artifact(run_id, str(out / name), "tables")
    for plot in plots:
        client.log_artifact(run_id, str(plot), "plots")
