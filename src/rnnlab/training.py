"""One training run, the recipe: data module, LightningModule, callbacks, Trainer, fit.

    metrics = train(params, reads=("model", "optim", ...))   # what rnnlab.stages.train runs

Around the fit: the checkpoint store (rnnlab.checkpoints) decides where an interrupted run of the
same params resumes, the MLflow run is opened (rnnlab.tracking) and marked FAILED or KILLED when the
run ends by an exception, and a finished run's outputs are written and logged (rnnlab.outputs). Under
DDP only the launching process (global rank 0) logs to MLflow and writes anything; the others train
their share of the streams and return {}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

from rnnlab import callbacks, checkpoints, outbox, outputs, runtime, sampler_model, tracking
from rnnlab.errors import UserError
from rnnlab.data import StreamDataModule
from rnnlab.lit import LitLM

if TYPE_CHECKING:
    from rnnlab.params import Params


def train(params: Params, reads: tuple[str, ...], extra_callbacks: list = ()) -> dict:
    """Train, save the best model and metrics; returns the metrics written to metrics.json. `reads`: the
    keys the training's outputs depend on (rnnlab.stages.reruns); their values (less paths) hash to the
    resume check's and meta.json's `params_hash`. MLflow gets the whole configuration (`Params.logged`)."""
    runtime.configure(params.threads)
    pl.seed_everything(params.seed, workers=True, verbose=False)
    logged = params.logged()
    phash = tracking.digest(params.select(tuple(key for key in reads if key.split(".")[0] != "paths")))
    ckpt_dir = Path(params.paths.train) / "checkpoints"
    if not checkpoints.launching_process():  # a further DDP process: resume where process 0 resumes
        return fit(params, logged, phash, None, checkpoints.handed_over(ckpt_dir, phash), extra_callbacks)
    outputs.clean(Path(params.paths.train))
    found = checkpoints.resume_point(ckpt_dir, phash)
    resume, run_id = found if found else (None, None)
    logger = tracking.open_logger(params, logged, run_id, outbox.server_logger(Path(params.paths.train)))
    try:  # from here on the run ends FINISHED, FAILED or (a signal, Ctrl-C) KILLED: never RUNNING
        if resume:
            print(f"resuming the interrupted training from {resume} (MLflow run {logger.run_id})")
        checkpoints.hand_over(resume)
        checkpoints.mark(ckpt_dir, phash, logger.run_id, complete=False)
        with tracking.store_errors(tracking.tracking_uri(params.tracking)), runtime.signals_deferred():
            metrics = fit(params, logged, phash, logger, resume, extra_callbacks)
        tracking.end_run(logger, "FINISHED")  # a tracking server: what is still queued is sent first (bounded)
    except (KeyboardInterrupt, SystemExit, runtime.Stopped) as err:
        tracking.end_run(logger, "KILLED")
        raise runtime.stopped(err) from None
    except BaseException:
        tracking.end_run(logger, "FAILED")
        raise
    checkpoints.mark(ckpt_dir, phash, logger.run_id, complete=True)
    return metrics


def fit(params: Params, logged: dict, phash: str, logger, resume: Path | None, extra_callbacks: list = ()) -> dict:
    """Build the Trainer, fit (from `resume` if given), and write the outputs of a finished training
    (process 0 only; `logger` None in the others)."""
    data, out = StreamDataModule(params.paths.vocab, params.data, params.seed), Path(params.paths.train)
    vocab_dir = data.vocab_dir
    vocab = vocab_dir.vocab()
    lit = LitLM(len(vocab), vocab.hash, params.model, params.optim, vocab_dir.chars_per_token("val"),
                lr_bptt=params.data.bptt if params.data.variable_bptt else None)
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val/loss", mode="min",
                           save_top_k=1, save_last=True, auto_insert_metric_name=False, enable_version_counter=False)
    watching = callbacks.diagnostics(vocab, vocab_dir, params.gradstats)
    tty = sys.stdout.isatty()
    trainer = make_trainer(params, logger=logger or False,
                         callbacks=[callbacks.PendingSignal(), best, callbacks.FinalValidation(),
                                    RichProgressBar() if tty else callbacks.LinePrinter(), *watching.values(),
                                    *extra_callbacks],
                         plugins=[checkpoints.AtomicCheckpointIO()], enable_progress_bar=tty,
                         default_root_dir=out / "checkpoints",  # where SLURM's requeue checkpoint goes
                         inference_mode=False, num_sanity_val_steps=0, enable_model_summary=False,
                         use_distributed_sampler=False,  # DDP: each process walks its own streams (data.py)
                         reload_dataloaders_every_n_epochs=int(params.data.variable_bptt))  # new windows each epoch
    trainer.fit(lit, data, ckpt_path=resume, weights_only=True)
    checkpoints.check_finished(trainer, out / "checkpoints")
    if not trainer.is_global_zero:
        return {}
    if best.best_model_path:
        checkpoints.load_weights(lit, Path(best.best_model_path))
    meta = {"params_hash": phash, "mlflow_run_id": logger.run_id, "step": trainer.global_step}
    grad_rows = watching["grad"].rows if "grad" in watching else []
    curves = watching["gtt"].curves if "gtt" in watching else []
    title = f"{params.model.cell}, clip {params.trainer.kwargs()['gradient_clip_val']}"
    metrics = outputs.write(out, lit.model, vocab, meta, lit.history, grad_rows, curves, title)
    outputs.log(logger, out, vocab_dir, logged, metrics, lit.train_seconds())
    outbox.send(logger, "the sampler model", sampler_model.log, tracking.tracking_uri(params.tracking), logger.run_id,
                out / "model", vocab_dir.vocab_file, params.sample, params.tracking.register_model)
    return metrics


def make_trainer(params: Params, **arguments) -> pl.Trainer:
    """Lightning's Trainer from the `trainer` section and `arguments`. The schema checks every value it
    knows; what Lightning still refuses (a combination, an `extra` argument) is one line naming the section."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return pl.Trainer(**params.trainer.kwargs(), **arguments)
    except (MisconfigurationException, ValueError, TypeError) as err:  # TypeError: e.g. devices=-1 on a CPU
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise UserError(f"Lightning refuses the trainer settings ({first}); fix them under trainer: in params.yaml "
                        "(Lightning's own names: see `python -c 'import lightning; help(lightning.Trainer)'`)") from None
