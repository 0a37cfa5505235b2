"""The LightningModule: loss, metrics, optimiser and gradient diagnostics around a plain `RNNLM`.

Truncated BPTT under Lightning's *automatic* optimisation: each batch is the next window of B parallel
streams (see data.py); the final hidden state of a batch is carried, detached, into the next, so the
Trainer's `gradient_clip_val` / `gradient_clip_algorithm` do the clipping. The state restarts at each
training epoch and each validation.

Order of one step in Lightning 2: backward -> `on_before_optimizer_step` (gradients not yet clipped:
we measure the pre-clip norms and whether clipping will fire) -> `configure_gradient_clipping` (we let
Lightning clip, then measure the post-clip norm) -> `optimizer.step()`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from rnnlab import gradstats
from rnnlab.errors import UserError
from rnnlab.model import RNNLM, ModelSpec, detach_hidden

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULES = ("none", "plateau")


@dataclass(frozen=True)
class OptimSpec:
    algorithm: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: str = "none"
    plateau_factor: float = 0.25
    plateau_patience: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in OPTIMIZERS:
            raise UserError(f"optim.algorithm={self.algorithm!r} is not known; use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"optim.schedule={self.schedule!r} is not known; use one of {', '.join(SCHEDULES)}")
        if self.lr <= 0:
            raise UserError(f"optim.lr={self.lr} must be positive")


@dataclass(frozen=True)
class GradStatsSpec:
    every_n_steps: int = 20
    gtt_length: int = 100
    gtt_batch: int = 16
    samples: int = 3
    sample_length: int = 200


class NonFiniteError(UserError):
    """The loss or the gradient became inf/NaN: training stops, the last good checkpoint stays."""

    def __init__(self, step: int, what: str, clip: float | None) -> None:
        hint = ("clipping is off: set trainer.gradient_clip_val (e.g. 1.0)" if not clip else
                f"lower trainer.gradient_clip_val (now {clip}) or optim.lr")
        super().__init__(f"the {what} became inf/NaN at step {step} (exploding gradients); {hint}. "
                         "The last good checkpoint is kept")


class LitLM(pl.LightningModule):
    def __init__(self, vocab_size: int, vocab_hash: str, model: dict, optim: dict, gradstats: dict,
                 val_chars_per_token: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()  # plain containers only: checkpoints load with weights_only=True
        self.model = RNNLM(vocab_size, ModelSpec(**model))
        self.optim_spec, self.stats_spec = OptimSpec(**optim), GradStatsSpec(**gradstats)
        self.hidden = None  # carried training state (truncated BPTT)
        self.probe: tuple[torch.Tensor, torch.Tensor] | None = None  # fixed val window for the probe
        self.on_validation_end_hooks: list = []  # e.g. sampling to MLflow, set by training.py
        self.history: dict[str, list] = {"train": [], "val": [], "grad": [], "gtt": []}
        self._window = {"steps": 0, "fired": torch.zeros(()), "pre": None}
        self._tokens, self._clock = 0, time.perf_counter()

    def forward(self, tokens, hidden=None):
        return self.model(tokens, hidden)

    # --- training ---------------------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self.hidden = None

    def training_step(self, batch, batch_idx):
        x, y = batch  # (B, T), (B, T)
        logits, hidden = self.model(x, self.hidden)  # (B, T, V)
        self.hidden = detach_hidden(hidden)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        self._tokens += y.numel()
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = self.global_step
        if step % self.trainer.log_every_n_steps == 0:
            now = time.perf_counter()
            self.log("train/tokens_per_s", self._tokens / max(now - self._clock, 1e-9))
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
            self._tokens, self._clock = 0, now
            self.history["train"].append([step, float(outputs["loss"])])

    def on_before_optimizer_step(self, optimizer) -> None:
        """Gradients are not clipped yet here: measure the pre-clip norms."""
        norms = gradstats.group_norms(self.model)
        total = gradstats.total_norm(norms)
        if not torch.isfinite(total):
            raise NonFiniteError(self.global_step, "gradient", self.trainer.gradient_clip_val)
        fired = gradstats.clip_fires(total, gradstats.max_abs(self.model), self.trainer.gradient_clip_val,
                                     self.trainer.gradient_clip_algorithm or "norm")
        self._window["steps"] += 1
        self._window["fired"] = self._window["fired"] + fired
        if (self.global_step + 1) % self.stats_spec.every_n_steps == 0:
            self._window["pre"] = (total, norms)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)
        if self._window["pre"] is not None:
            self._log_grad_window(gradstats.total_norm(gradstats.group_norms(self.model)))

    def _log_grad_window(self, post: torch.Tensor) -> None:
        pre, norms = self._window["pre"]
        frac = float(self._window["fired"]) / self._window["steps"]
        metrics = {"grad/norm_pre_clip": float(pre), "grad/norm_post_clip": float(post), "grad/clip_fraction": frac}
        metrics |= {f"grad_group/{name}": float(n) for name, n in norms.items()}
        self.log_dict(metrics)
        self.history["grad"].append([self.global_step + 1, metrics["grad/norm_pre_clip"],
                                     metrics["grad/norm_post_clip"], frac])
        self._window = {"steps": 0, "fired": torch.zeros(()), "pre": None}

    # --- validation -------------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self.val_hidden, self.val_nll, self.val_tokens = None, torch.zeros(()), 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits, hidden = self.model(x, self.val_hidden)
        self.val_hidden = hidden
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        if not torch.isfinite(nll):
            raise NonFiniteError(self.global_step, "validation loss", self.trainer.gradient_clip_val)
        self.val_nll = self.val_nll + nll
        self.val_tokens += y.numel()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.val_tokens == 0:
            return
        loss = float(self.val_nll) / self.val_tokens
        bpc = loss / math.log(2) / self.hparams.val_chars_per_token
        self.log_dict({"val/loss": loss, "val/ppl": math.exp(min(loss, 700.0)), "val/bpc": bpc}, prog_bar=True)
        self.history["val"].append([self.global_step, loss, math.exp(min(loss, 700.0)), bpc])
        if self.probe is not None:
            self._log_probe()
        for hook in self.on_validation_end_hooks:
            hook(self)

    def _log_probe(self) -> None:
        x, y = (t.to(self.device) for t in self.probe)
        with torch.inference_mode(False), torch.enable_grad():
            norms = gradstats.gradient_through_time(self.model, x.clone(), y.clone()).flip(0)  # by distance T-t
        values = [float(v) for v in norms]
        self.log_dict({f"gtt/d{d:03d}": values[d] for d in gradstats.probe_distances(len(values))})
        if values[0] > 0:
            self.log("gtt/ratio_far_near", values[-1] / values[0])
        self.history["gtt"].append([self.global_step, values])

    # --- optimiser and checkpoint state -----------------------------------------------------------------

    def configure_optimizers(self):
        spec = self.optim_spec
        kwargs = {"lr": spec.lr, "weight_decay": spec.weight_decay}
        if spec.algorithm == "sgd":
            kwargs["momentum"] = spec.momentum
        optimizer = OPTIMIZERS[spec.algorithm](self.model.parameters(), **kwargs)
        if spec.schedule == "none":
            return optimizer
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=spec.plateau_factor, patience=spec.plateau_patience)
        # Step the schedule once per validation (patience counts validations), not once per batch.
        every = self.trainer.val_check_interval
        when = {"interval": "step", "frequency": every} if isinstance(every, int) else {"interval": "epoch"}
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "monitor": "val/loss", "strict": False} | when}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rnnlab_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = checkpoint.get("rnnlab_history", self.history)
