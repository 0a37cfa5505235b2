"""Lightning callbacks that watch training: gradient statistics, the gradient-through-time probe,
samples at each validation, a final validation, and line-based progress for logs.

The LightningModule (lit.py) is loss, metrics and optimiser only; every diagnostic here is switched by
config (`gradstats.every_n_steps`, `gradstats.gtt_length`, `gradstats.samples`: 0 turns one off) and
users add their own Lightning callbacks with `callbacks:` in conf/config.yaml (Hydra `_target_` entries).
Each diagnostic keeps its rows in `state_dict()`, which Lightning saves in the checkpoint, so a resumed
training continues the same tables.

Order of one step in Lightning 2: backward -> `on_before_optimizer_step` (gradients not yet clipped:
`GradientStats` measures the pre-clip norms and whether clipping will fire) -> the Trainer clips
(`gradient_clip_val`) -> `optimizer.step()` -> `on_train_batch_end` (`.grad` still holds the clipped
gradients the optimiser used — they are zeroed only before the next backward — so this is where the
post-clip norm is measured).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from lightning.pytorch.callbacks import Callback

from rnnlab import gradstats, runtime
from rnnlab.sampling import sample
from rnnlab.schema import GradStatsSpec, SampleSpec
from rnnlab.scoring import batchify
from rnnlab.vocab import Vocab, VocabDir


def diagnostics(vocab: Vocab, vocab_dir: VocabDir, spec: GradStatsSpec) -> dict[str, Callback]:
    """The diagnostic callbacks the `gradstats` section switches on (0 turns one off); validation samples
    are drawn with its own `sample_*` settings (conf/config.yaml gives them the sample stage's defaults)."""
    found = {}
    if spec.every_n_steps > 0:
        found["grad"] = GradientStats(spec.every_n_steps)
    window = probe_window(vocab_dir.ids("val"), spec)
    if window is not None:
        found["gtt"] = GradientThroughTime(window)
    if spec.samples > 0:
        found["samples"] = ValidationSamples(vocab, validation_sampling(spec))
    return found


def validation_sampling(spec: GradStatsSpec) -> SampleSpec:
    """The sampler's settings for the validation samples (`seed` is replaced by the step when drawing)."""
    return SampleSpec(num_samples=spec.samples, max_length=spec.sample_length, temperature=spec.sample_temperature,
                      top_k=spec.sample_top_k, top_p=spec.sample_top_p, greedy=spec.sample_greedy,
                      prime=spec.sample_prime, seed=0, unk=spec.sample_unk, checkpoint=None)


def probe_window(val_ids, spec: GradStatsSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fixed validation window of the gradient-through-time probe: first T+1 tokens of B streams."""
    if spec.gtt_length < 1 or len(val_ids) < spec.gtt_batch * (spec.gtt_length + 1):
        return None
    data = batchify(val_ids, spec.gtt_batch)[:, : spec.gtt_length + 1]  # (B, T+1)
    return data[:, :-1], data[:, 1:]


class GradientStats(Callback):
    """Total gradient norm before and after clipping, per-group norms, and the share of steps clipped.

    Every `every` steps it logs `grad/norm_pre_clip`, `grad/norm_post_clip`, `grad/clip_fraction` (of the
    steps since the last row) and `grad_group/<group>`, and appends a row to `rows`
    (step, pre_clip, post_clip, clip_fraction) for grad_norm.csv.
    """

    def __init__(self, every: int) -> None:
        self.every, self.rows = every, []
        self._steps, self._fired, self._pre = 0, torch.zeros(()), None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        norms = gradstats.group_norms(pl_module.model)
        total = gradstats.total_norm(norms)
        self._fired = self._fired + gradstats.clip_fires(total, gradstats.max_abs(pl_module.model),
                                                         trainer.gradient_clip_val,
                                                         trainer.gradient_clip_algorithm or "norm")
        self._steps += 1
        if (trainer.global_step + 1) % self.every == 0:
            self._pre = (total, norms)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._pre is None:
            return
        (pre, norms), post = self._pre, gradstats.total_norm(gradstats.group_norms(pl_module.model))
        frac = float(self._fired) / self._steps
        metrics = {"grad/norm_pre_clip": float(pre), "grad/norm_post_clip": float(post), "grad/clip_fraction": frac}
        pl_module.log_dict(metrics | {f"grad_group/{name}": float(n) for name, n in norms.items()})
        self.rows.append([trainer.global_step, metrics["grad/norm_pre_clip"], metrics["grad/norm_post_clip"], frac])
        self._steps, self._fired, self._pre = 0, torch.zeros(()), None

    def state_dict(self) -> dict:
        return {"rows": self.rows, "steps": self._steps, "fired": float(self._fired)}  # a window may be open

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows, self._steps = state_dict["rows"], state_dict["steps"]
        self._fired = torch.tensor(state_dict["fired"])


class GradientThroughTime(Callback):
    """At each validation: ||dL_T/dx_t|| on a fixed validation window (gradstats.gradient_through_time),
    logged as `gtt/d<distance>` and `gtt/ratio_far_near`; `curves` holds (step, values by distance)."""

    def __init__(self, window: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.window, self.curves = window, []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:  # DDP: one process probes and logs
            return
        x, y = (t.to(pl_module.device) for t in self.window)
        with torch.inference_mode(False), torch.enable_grad():
            norms = gradstats.gradient_through_time(pl_module.model, x.clone(), y.clone()).flip(0)  # by distance
        values = [float(v) for v in norms]
        pl_module.log_dict({f"gtt/d{d:03d}": values[d] for d in gradstats.probe_distances(len(values))})
        if values[0] > 0:
            pl_module.log("gtt/ratio_far_near", values[-1] / values[0])
        self.curves.append([trainer.global_step, values])

    def state_dict(self) -> dict:
        return {"curves": self.curves}

    def load_state_dict(self, state_dict: dict) -> None:
        self.curves = state_dict["curves"]


class ValidationSamples(Callback):
    """At each validation, samples drawn as `spec` says (the sampler of sampling.py, seeded by the step) to
    MLflow: `samples/step_<step>.txt` and rows of the table `samples/samples.json`."""

    def __init__(self, vocab: Vocab, spec: SampleSpec) -> None:
        self.vocab, self.spec = vocab, spec

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        logger = trainer.logger
        if trainer.sanity_checking or not trainer.is_global_zero or not hasattr(logger, "run_id"):
            return
        step = trainer.global_step
        samples = sample(pl_module.model, self.vocab, replace(self.spec, seed=step))
        text = "\n\n----\n\n".join(s.text for s in samples)
        logger.experiment.log_text(logger.run_id, text, f"samples/step_{step:06d}.txt")
        logger.experiment.log_table(logger.run_id, {"step": [step] * len(samples), "text": [s.text for s in samples],
                                                    "stopped": [s.stopped for s in samples]}, "samples/samples.json")


class FinalValidation(Callback):
    """Every training ends with a validation, also when `max_steps` is not a multiple of
    `val_check_interval` (Lightning would stop without one); `max_time` and the last epoch are
    covered too: Lightning validates once more whenever `trainer.should_stop` is set."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last_step = 0 < trainer.max_steps <= trainer.global_step
        epochs = trainer.max_epochs
        last_batch = (epochs is not None and epochs > 0 and trainer.current_epoch + 1 >= epochs
                      and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        if last_step or last_batch:
            trainer.should_stop = True


class LinePrinter(Callback):
    """Quiet, line-based progress for CI and DVC logs (a Rich bar is used in a terminal): about ten lines
    a run, each with the step, loss, last validation, tokens/s and the time left at the pace so far."""

    def __init__(self) -> None:
        self.every, self.total, self.start = 25, None, None

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.estimated_stepping_batches  # max_steps, or the epochs' batches (inf with max_time only)
        self.total = int(total) if math.isfinite(total) else None
        self.every = max(self.total // 10, min(25, self.total)) if self.total else 25
        self.start = (time.perf_counter(), trainer.global_step)  # a resumed run counts from where it resumed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 and trainer.is_global_zero:
            m = trainer.callback_metrics
            parts = [f"step {step}/{self.total or '?'}", f"loss {float(outputs['nll']):.3f}"]
            if "val/loss" in m:
                parts.append(f"val {float(m['val/loss']):.3f}")
            if "train/tokens_per_s" in m:
                parts.append(f"{float(m['train/tokens_per_s']):,.0f} tok/s")
            parts.append(f"ETA {self.eta(trainer)}")
            print(" | ".join(parts), flush=True)

    def eta(self, trainer) -> str:
        (t0, step0), step = self.start or (time.perf_counter(), 0), trainer.global_step
        if not self.total or step <= step0:
            return "?"
        left = (time.perf_counter() - t0) / (step - step0) * max(self.total - step, 0)
        return f"{int(left // 60)}m{int(left % 60):02d}s"


class PendingSignal(Callback):
    """SIGTERM that came between the MLflow run's start and Lightning's own signal handler (installed inside
    `fit`, which then forgets it) stops the training as soon as it starts (rnnlab.runtime.raise_pending)."""

    def on_train_start(self, trainer, pl_module) -> None:
        runtime.raise_pending()
