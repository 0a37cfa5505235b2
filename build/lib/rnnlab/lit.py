"""The LightningModule: loss, metrics and optimiser around a plain `RNNLM`.

Truncated BPTT under Lightning's *automatic* optimisation: each batch is the next window of B parallel
streams (see data.py); the final hidden state of a batch is carried, detached, into the next, so the
Trainer's `gradient_clip_val` / `gradient_clip_algorithm` do the clipping. The state restarts at each
training epoch and each validation. Validation scores its windows with `rnnlab.scoring`, the same
function the evaluate stage uses. Diagnostics (gradient norms, the gradient-through-time probe,
samples) are Lightning callbacks in callbacks.py.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict

import lightning.pytorch as pl
import numpy as np
import torch

from rnnlab import scoring
from rnnlab.averaging import Average
from rnnlab.errors import UserError
from rnnlab.model import RNNLM, activation_penalty, detach_hidden, tree_map
from rnnlab.choices import OPTIMIZERS
from rnnlab.schema import ModelSpec, OptimSpec


EXPLODED = 100  # a validation loss above 100 x ln(V) nats (a uniform guess scores ln(V)) has diverged


class NonFiniteError(UserError):
    """The loss or the gradient became inf/NaN, or the loss exploded: the run stops and is marked FAILED."""

    def __init__(self, step: int, what: str, clip: float | None, became: str = "became inf/NaN") -> None:
        hint = ("clipping is off: set trainer.gradient_clip_val (e.g. 1.0)" if not clip else
                f"lower trainer.gradient_clip_val (now {clip}) or optim.lr")
        super().__init__(f"the {what} {became} at step {step} (exploding gradients); {hint}. Checkpoints written "
                         "before it, if any, stay in the checkpoints folder")


class LitLM(pl.LightningModule):
    def __init__(self, vocab_size: int, vocab_hash: str, model: ModelSpec, optim: OptimSpec,
                 val_chars_per_token: float = 1.0, lr_bptt: int | None = None) -> None:
        """`lr_bptt`: windows of random length (data.variable_bptt); each step's lr is scaled by its window's
        length / lr_bptt (AWD-LSTM: a short window's gradient is not given the weight of a full one)."""
        super().__init__()
        # Plain containers only: checkpoints load with weights_only=True.
        self.save_hyperparameters({"vocab_size": vocab_size, "vocab_hash": vocab_hash, "model": asdict(model),
                                   "optim": asdict(optim), "val_chars_per_token": val_chars_per_token})
        self.model = RNNLM(vocab_size, model)
        self.optim_spec, self.lr_bptt, self._lr_scale = optim, lr_bptt, 1.0
        self.average = Average(self.model, optim.nonmono) if optim.nonmono else None  # NT-ASGD (averaging.py)
        self.hidden = None  # carried training state (truncated BPTT); a mid-epoch checkpoint keeps it
        self.history: dict[str, list] = {"train": [], "val": []}  # loss.csv and val.csv rows
        self._tokens, self._clock = 0, time.perf_counter()
        self._seconds_before, self._fit_start = 0.0, time.perf_counter()  # wall time of earlier (resumed) runs

    def train_seconds(self) -> float:
        """Wall seconds spent in training, summed over a resumed run's segments (up to their last checkpoint)."""
        return self._seconds_before + time.perf_counter() - self._fit_start

    # --- training ---------------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        self.hidden = None  # the zero state (not called when Lightning resumes mid-epoch)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._lr_scale = batch[0].size(1) / self.lr_bptt if self.lr_bptt else 1.0

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The step with the lr scaled to this window's length (data.variable_bptt), then the lr back."""
        if self._lr_scale == 1.0:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        kept = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] *= self._lr_scale
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        finally:
            for group, lr in zip(optimizer.param_groups, kept):
                group["lr"] = lr

    def training_step(self, batch, batch_idx):
        x, y = batch  # (B, T), (B, T)
        h, hidden, raw = self.model.features_with_raw(x, self.hidden)  # (B, T, H) after / before dropout
        self.hidden = detach_hidden(hidden)
        loss = self.model.nll(h, y)
        self._tokens += y.numel()
        self._lr = self.trainer.optimizers[0].param_groups[0]["lr"]  # an epoch schedule steps before batch end
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        spec = self.optim_spec
        if spec.ar or spec.tar:  # the logged loss stays the NLL; the penalty only shapes the gradient
            return {"loss": loss + activation_penalty(h, raw, spec.ar, spec.tar), "nll": loss.detach()}
        return {"loss": loss, "nll": loss.detach()}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.average is not None:
            self.average.step()
        step = self.global_step
        if step % self.trainer.log_every_n_steps == 0:
            now = time.perf_counter()
            self.log("train/tokens_per_s", self._tokens / max(now - self._clock, 1e-9))
            self.log("train/lr", self._lr)  # the lr this step used
            self._tokens, self._clock = 0, now
            self.history["train"].append([step, float(outputs["nll"])])

    def on_before_optimizer_step(self, optimizer) -> None:
        """Stop on an inf/NaN gradient before the optimiser spreads it into the weights."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))):
            raise NonFiniteError(self.global_step, "gradient", self.trainer.gradient_clip_val)

    # --- validation: the windows of rnnlab.scoring, summed in float64 -------------------------------------

    def on_validation_epoch_start(self) -> None:
        self.val_hidden, self.val_nll, self.val_tokens = None, torch.zeros((), dtype=torch.float64), 0
        self._swap = contextlib.ExitStack()  # NT-ASGD: validate the averaged weights, then train on
        if self.average is not None:
            self._swap.enter_context(self.average.swapped())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        nll, self.val_hidden = scoring.window_nll(self.model, x, y, self.val_hidden)
        if not torch.isfinite(nll):
            raise NonFiniteError(self.global_step, "validation loss", self.trainer.gradient_clip_val)
        self.val_nll = self.val_nll + nll.cpu()
        self.val_tokens += y.numel()

    def on_validation_epoch_end(self) -> None:
        with self._swap:
            self.validation_result()

    def validation_result(self) -> None:
        if self.trainer.sanity_checking:
            return
        nll, tokens = float(self.val_nll), self.val_tokens
        if self.trainer.world_size > 1:  # DDP: every process scored its own streams; the exact token-weighted mean
            both = torch.tensor([nll, tokens], dtype=torch.float64, device=self.device)  # NCCL: on the GPU
            total = self.trainer.strategy.reduce(both, reduce_op="sum").cpu()
            nll, tokens = float(total[0]), int(total[1])
        if tokens == 0:
            return
        score = scoring.summary(nll, tokens, self.hparams.val_chars_per_token)
        if score["loss"] > EXPLODED * math.log(self.hparams.vocab_size):
            raise NonFiniteError(self.global_step, "validation loss", self.trainer.gradient_clip_val,
                                 f"exploded to {score['loss']:.3g} nats/token")
        self.log_dict({"val/loss": score["loss"], "val/ppl": score["ppl"], "val/bpc": score["bpc"]}, prog_bar=True)
        self.history["val"].append([self.global_step, score["loss"], score["ppl"], score["bpc"]])
        if self.average is not None and self.average.observe(score["loss"]):
            print(f"NT-ASGD: no improvement in {self.average.nonmono} validations; averaging the weights from step "
                  f"{self.global_step} on (optim.nonmono)")

    # --- optimiser and checkpoint state -----------------------------------------------------------------

    def configure_optimizers(self):
        spec = self.optim_spec
        kwargs = {"lr": spec.lr, "weight_decay": spec.weight_decay}
        if spec.algorithm == "sgd":
            kwargs["momentum"] = spec.momentum
        optimizer = getattr(torch.optim, OPTIMIZERS[spec.algorithm])(self.model.parameters(), **kwargs)
        if spec.schedule == "none":
            return optimizer
        if spec.schedule == "step":  # epoch e (1-based) trains with lr · factor^max(0, e - start)
            decay = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda epoch: spec.step_factor ** max(0, epoch + 1 - spec.step_start_epoch))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "epoch"}}
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=spec.plateau_factor, patience=spec.plateau_patience)
        # Step the schedule once per validation (patience counts validations), not once per batch.
        every = self.trainer.val_check_interval
        when = {"interval": "step", "frequency": every} if isinstance(every, int) else {"interval": "epoch"}
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "monitor": "val/loss", "strict": False} | when}

    # A resumed training continues bit for bit: with the loader's position (data.StreamLoader) and the
    # optimiser (Lightning's), the checkpoint keeps the carried hidden state and every random generator.

    # Under DDP every process carries the state of its own streams and draws its own dropout masks: the
    # checkpoint (written by process 0, called on all) gathers them, (L, B, H) in stream order and one torch
    # generator state per process, and each process takes its share back on resume.

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed  # batches of this epoch
        mid_epoch = done % self.trainer.num_training_batches
        np_state = np.random.get_state()
        hidden, rng = (self.hidden if mid_epoch else None), torch.get_rng_state()
        if self.trainer.world_size > 1:
            hidden = tree_map(lambda h: self.all_gather(h).transpose(0, 1).flatten(1, 2), hidden)  # (L, B, H)
            rng = self.all_gather(rng.to(self.device)).cpu()  # (W, n); NCCL gathers GPU tensors only
        checkpoint["rnnlab"] = {
            "history": self.history,
            "seconds": self.train_seconds(),
            "hidden": hidden,
            "average": self.average.state_dict() if self.average is not None else None,
            "rng": {"torch": rng, "python": random.getstate(),
                    "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint["rnnlab"]
        self.history, self.hidden = saved["history"], saved["hidden"]
        self._seconds_before = saved.get("seconds", 0.0)
        if self.average is not None and saved.get("average"):
            self.average.load_state_dict(saved["average"])
        rank, world, rng = self.trainer.global_rank, self.trainer.world_size, saved["rng"]["torch"]
        if (rng.dim() == 2) != (world > 1) or (world > 1 and len(rng) != world):
            raise UserError(f"the checkpoint was written by {len(rng) if rng.dim() == 2 else 1} training "
                            f"process(es), this run has {world}; resume with the same trainer.devices x "
                            "trainer.num_nodes, or delete the checkpoints folder to start afresh")
        if world > 1:  # this process's rows of the state, its own generator
            self.hidden, rng = tree_map(lambda h: h.chunk(world, dim=1)[rank].clone(), self.hidden), rng[rank].clone()
        torch.set_rng_state(rng)
        random.setstate(saved["rng"]["python"])
        name, keys, *rest = saved["rng"]["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
