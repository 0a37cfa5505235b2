"""One training run: data, LightningModule, Trainer, checkpoints (with resume), MLflow, and outputs.

Outputs in `out_dir` (data/train by default):
  model/          the final model: `model.pt` (state_dict of the best validation checkpoint) + `meta.json`
  checkpoints/    Lightning's `last.ckpt` and `best.ckpt` plus `run.json` (params hash, MLflow run id);
                  not a DVC output (so the run cache works): it stays, and an interrupted `dvc repro` resumes
  metrics.json    final train/val numbers (a DVC metric)
  *.csv, plots/   loss, gradient norms and gradient-through-time (DVC plots, PNGs for offline viewing)
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import math
import pickle
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rnnlab import checkpoint, gradstats, runtime
from rnnlab.callbacks import FinalValidation, GradientStats, GradientThroughTime, LinePrinter, ValidationSamples
from rnnlab.data import StreamDataModule
from rnnlab.errors import UserError
from rnnlab.files import atomic_write, remove_leftovers, write_json
from rnnlab.lit import LitLM, OptimSpec
from rnnlab.model import ModelSpec
from rnnlab.schema import DataSpec, GradStatsSpec, trainer_spec
from rnnlab.scoring import batchify
from rnnlab.tracking import (TrackingSpec, check_reachable, default_run_name, end_run, ensure_experiment,
                             make_logger, params_hash, run_exists, store_errors, tracking_uri)
from rnnlab.vocab import VocabDir


RESUME_ENV = "RNNLAB_RESUME_CHECKPOINT"


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
    callbacks: list = field(default_factory=list)  # extra Lightning callbacks (config `callbacks:`, tests)


def trainer_kwargs(values: dict) -> dict:
    """The `trainer` config group, checked against lightning.pytorch.Trainer's own arguments."""
    values = {k: v for k, v in values.items() if k != "name"}
    valid = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise UserError(f"trainer.{unknown[0]} is not a lightning.pytorch.Trainer argument; "
                        "see conf/trainer/default.yaml for the usual ones")
    trainer_spec(values)  # types and ranges of the keys schema.py declares
    if values.get("gradient_clip_val") == 0:
        values["gradient_clip_val"] = None  # 0 means off, as in Lightning
    return values


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written like every other output (files.atomic_write: a temporary file in the
    checkpoint folder, fsync, rename), so a kill or a full disk leaves the previous checkpoint intact;
    read back with weights_only=True, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_write(path, lambda fh: torch.save(checkpoint, fh), mode="wb")

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def readable(path: Path) -> str | None:
    """None when `path` loads as a checkpoint (weights only), else why not, in a few words."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return "missing"
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
    return None if isinstance(ckpt, dict) and "rnnlab" in ckpt else "not a checkpoint of this rnnlab version"


def resume_point(ckpt_dir: Path, phash: str, clean: bool = True) -> tuple[Path, str] | None:
    """(checkpoint, MLflow run id) of an unfinished run of the very same params, or None: start afresh.

    Falls back from last.ckpt to best.ckpt to a fresh start, saying why in one line, so a damaged file
    never makes every later run fail. `clean`: remove a checkpoint folder that will not be resumed."""
    try:
        state = json.loads((ckpt_dir / "run.json").read_text())
    except FileNotFoundError:
        state = None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        print(f"note: {ckpt_dir / 'run.json'} cannot be read ({err}); starting afresh", file=sys.stderr)
        state = None
    if state and state.get("params_hash") == phash and not state.get("complete"):
        for name in ("last.ckpt", "best.ckpt"):
            why = readable(ckpt_dir / name)
            if why is None:
                return ckpt_dir / name, state.get("run_id")
            if why != "missing":
                print(f"note: {ckpt_dir / name} cannot be read ({why}); trying the next checkpoint", file=sys.stderr)
        print(f"note: no readable checkpoint in {ckpt_dir}; starting afresh", file=sys.stderr)
    if clean and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # another config, a finished run, or nothing usable: start afresh
    return None


def open_run(job: TrainJob, ckpt_dir: Path, phash: str):
    """The resume checkpoint (or None) and the MLflow logger: the interrupted run's, or a new one."""
    uri = tracking_uri(job.tracking)
    resume = resume_point(ckpt_dir, phash)
    run_id = resume[1] if resume else None
    check_reachable(uri)  # a server that does not answer: one line now, not after MLflow's retries
    with store_errors(uri, also=(OSError,)):  # here only MLflow touches files
        ensure_experiment(uri, job.tracking.experiment)
        if run_id and not run_exists(job.tracking, run_id):
            print(f"note: the MLflow run {run_id} of the interrupted training is gone from {uri}; "
                  "logging to a new run", file=sys.stderr)
            run_id = None
        spec = job.tracking if run_id else replace(job.tracking, run_name=job.tracking.run_name
                                                    or default_run_name(job.params))
        logger = make_logger(spec, job.params, run_id=run_id)
        if resume:
            print(f"resuming the interrupted training from {resume[0]} (MLflow run {logger.run_id})")
        if not run_id:
            logger.log_hyperparams(job.params)
    return (resume[0] if resume else None), logger


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    def write(fh) -> None:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)

    atomic_write(path, write)


def write_outputs(lit: LitLM, diagnostics: dict, out: Path, title: str) -> None:
    """The CSV tables (DVC plots) and PNG plots (for offline viewing) of the training's history."""
    hist, grad, gtt = lit.history, diagnostics.get("grad"), diagnostics.get("gtt")
    curves = gtt.curves if gtt else []
    write_csv(out / "loss.csv", ["step", "train_loss"], hist["train"])
    write_csv(out / "val.csv", ["step", "val_loss", "val_ppl", "val_bpc"], hist["val"])
    write_csv(out / "grad_norm.csv", ["step", "pre_clip", "post_clip", "clip_fraction"], grad.rows if grad else [])
    last_curve = curves[-1][1] if curves else []
    write_csv(out / "gtt.csv", ["distance", "grad_norm"], [[d, v] for d, v in enumerate(last_curve)])
    save_loss_plot(hist["train"], hist["val"], out / "plots" / "loss.png", f"Loss — {title}")
    if grad and grad.rows:
        gradstats.save_norm_plot(grad.rows, out / "plots" / "gradient_norm.png", f"Gradient norm — {title}")
    if curves:
        gradstats.save_plot([(f"step {step}", values) for step, values in curves],
                            out / "plots" / "gradient_through_time.png", f"Gradient through time — {title}")


def save_loss_plot(train: list[list], val: list[list], path: Path, title: str) -> None:
    """Training loss (every log step) and validation loss against the step, in nats per token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot([r[0] for r in train], [r[1] for r in train], label="train", linewidth=1)
    ax.plot([r[0] for r in val], [r[1] for r in val], marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, fig.savefig, mode="wb")
    plt.close(fig)


def diagnostics(vocab, vocab_dir: VocabDir, spec: GradStatsSpec) -> dict:
    """The diagnostic callbacks the `gradstats` config switches on (0 turns one off)."""
    found = {}
    if spec.every_n_steps > 0:
        found["grad"] = GradientStats(spec.every_n_steps)
    window = probe_window(vocab_dir.ids("val"), spec)
    if window is not None:
        found["gtt"] = GradientThroughTime(window)
    if spec.samples > 0:
        found["samples"] = ValidationSamples(vocab, spec.samples, spec.sample_length)
    return found


def launching_process() -> bool:
    """False in the further processes of a data-parallel run: Lightning's DDP starts them by running the
    same command with LOCAL_RANK set (a cluster launcher sets NODE_RANK, RANK or SLURM_PROCID)."""
    return all(int(os.environ.get(key) or 0) == 0 for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def train(job: TrainJob) -> dict:
    """Train, save the best model and metrics; returns the metrics written to metrics.json.

    A run that ends by an exception is marked FAILED in MLflow (KILLED on Ctrl-C), also before training.
    Under DDP only the launching process (global rank 0) logs to MLflow and writes anything; the others
    train their share of the streams and return {}."""
    runtime.configure(job.threads)
    pl.seed_everything(job.seed, workers=True, verbose=False)
    kwargs = trainer_kwargs(job.trainer)
    out, ckpt_dir = Path(job.out_dir), Path(job.out_dir) / "checkpoints"
    phash = params_hash(job.params)
    if not launching_process():  # a further DDP process: resume where process 0 resumes
        given = os.environ.get(RESUME_ENV)
        if given is None:  # started by a cluster launcher, not by process 0: the same files decide
            found = resume_point(ckpt_dir, phash, clean=False)
            resume = found[0] if found else None
        else:
            resume = Path(given) if given else None
        return fit(job, kwargs, None, resume)
    remove_leftovers(out)
    resume, logger = open_run(job, ckpt_dir, phash)
    os.environ[RESUME_ENV] = str(resume or "")  # inherited by the processes DDP starts
    write_json(ckpt_dir / "run.json", {"params_hash": phash, "run_id": logger.run_id, "complete": False})
    try:
        with store_errors(tracking_uri(job.tracking)):
            metrics = fit(job, kwargs, logger, resume)
    except (KeyboardInterrupt, SystemExit):
        end_run(logger, "KILLED")
        raise
    except BaseException:
        end_run(logger, "FAILED")
        raise
    write_json(ckpt_dir / "run.json", {"params_hash": phash, "run_id": logger.run_id, "complete": True})
    return metrics


def fit(job: TrainJob, kwargs: dict, logger, resume: Path | None) -> dict:
    """Build the Trainer, fit (from `resume` if given), and write the outputs of a finished training
    (process 0 only; `logger` None in the others)."""
    vocab_dir = VocabDir(job.vocab_dir)
    vocab = vocab_dir.vocab()
    dm = StreamDataModule(job.vocab_dir, job.data.batch_size, job.data.bptt, job.data.eval_batch_size)
    lit = LitLM(len(vocab), vocab.hash, asdict(job.model), asdict(job.optim),
                val_chars_per_token=vocab_dir.chars_per_token("val"))
    out, ckpt_dir = Path(job.out_dir), Path(job.out_dir) / "checkpoints"
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                           save_last=True, auto_insert_metric_name=False, enable_version_counter=False)
    found = diagnostics(vocab, vocab_dir, job.gradstats)
    tty = sys.stdout.isatty()
    progress = RichProgressBar() if tty else LinePrinter()
    trainer = pl.Trainer(**kwargs, logger=logger or False,
                         callbacks=[best, FinalValidation(), progress, *found.values(), *job.callbacks],
                         plugins=[AtomicCheckpointIO()], enable_progress_bar=tty, default_root_dir=out,
                         inference_mode=False, num_sanity_val_steps=0, enable_model_summary=False,
                         use_distributed_sampler=False)  # DDP: each process walks its own streams (data.py)
    trainer.fit(lit, dm, ckpt_path=resume, weights_only=True)
    if trainer.interrupted:
        raise UserError(f"training was interrupted at step {trainer.global_step}; run `dvc repro` again to resume "
                        f"from the last checkpoint in {ckpt_dir}")
    if not trainer.is_global_zero:
        return {}
    if best.best_model_path:
        lit.model.load_state_dict(checkpoint.read_lightning_checkpoint(Path(best.best_model_path))[0])
    metrics = final_metrics(lit, found, trainer)
    checkpoint.save_model(out / "model", lit.model, vocab, {"params_hash": params_hash(job.params),
                                                            "mlflow_run_id": logger.run_id,
                                                            "step": trainer.global_step, "metrics": metrics})
    write_outputs(lit, found, out, f"{lit.model.spec.cell}, clip {kwargs.get('gradient_clip_val')}")
    write_json(out / "metrics.json", metrics)
    # Not in metrics.json (a DVC output that a rerun or a resumed run reproduces exactly): MLflow only.
    logger.log_metrics({"time/train_s": round(lit.train_seconds(), 1)}, step=trainer.global_step)
    best_metrics = {f"best/{k}": v for k, v in metrics.items() if k.startswith("val_") or k == "best_step"}
    logger.log_metrics(best_metrics, step=trainer.global_step)  # the summary: the saved model's validation
    log_artifacts(logger, job, vocab_dir, out)
    return metrics


def probe_window(val_ids, spec: GradStatsSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fixed validation window of the gradient-through-time probe: first T+1 tokens of B streams."""
    if spec.gtt_length < 1 or len(val_ids) < spec.gtt_batch * (spec.gtt_length + 1):
        return None
    data = batchify(val_ids, spec.gtt_batch)[:, : spec.gtt_length + 1]  # (B, T+1)
    return data[:, :-1], data[:, 1:]


def final_metrics(lit: LitLM, found: dict, trainer: pl.Trainer) -> dict:
    hist = lit.history
    grad_rows = found["grad"].rows if "grad" in found else []
    curves = found["gtt"].curves if "gtt" in found else []
    best_val = min(hist["val"], key=lambda row: row[1]) if hist["val"] else None
    metrics = {"step": trainer.global_step, "train_loss": hist["train"][-1][1] if hist["train"] else None}
    if best_val:  # the saved model is the best validation's; the last validation is reported as "last"
        metrics |= {"val_loss": best_val[1], "val_ppl": best_val[2], "val_bpc": best_val[3], "best_step": best_val[0],
                    "last_val_loss": hist["val"][-1][1]}
    if grad_rows:
        metrics["clip_fraction"] = sum(row[3] for row in grad_rows) / len(grad_rows)
    if curves and curves[-1][1][0] > 0:
        values = curves[-1][1]
        metrics["gtt_ratio_far_near"] = values[-1] / values[0]
    return {k: (float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}


def log_artifacts(logger, job: TrainJob, vocab_dir: VocabDir, out: Path) -> None:
    client, run_id = logger.experiment, logger.run_id
    client.log_dict(run_id, job.params, "config/params.json")
    client.log_artifact(run_id, str(vocab_dir.vocab_file), "vocab")
    client.log_artifacts(run_id, str(out / "model"), "model")
    for name in ("loss.csv", "val.csv", "grad_norm.csv", "gtt.csv", "metrics.json"):
        client.log_artifact(run_id, str(out / name), "tables")
    client.log_artifacts(run_id, str(out / "plots"), "plots")
