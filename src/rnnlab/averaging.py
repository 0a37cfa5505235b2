"""Weight averaging with the non-monotone trigger: NT-ASGD (Merity, Keskar & Socher 2018, "Regularizing
and Optimizing LSTM Language Models", section 3; their code: salesforce/awd-lstm-lm main.py).

Plain SGD runs until the validation loss has not improved for `optim.nonmono` validations: the loss just
measured is worse than the best one measured before the last `nonmono`. From then on every optimiser
step adds the new weights to a running mean (what `torch.optim.ASGD(t0=0, lambd=0)` keeps as `ax`, while
its own update is plain SGD's). Validation, the best checkpoint's score and the saved model use the
averaged weights; training goes on from the SGD iterate, so a checkpoint holds both and resumes exactly.

    average = Average(model, nonmono=5)
    average.step()                        # after each optimiser step
    with average.swapped(): validate()     # the averaged weights, then the SGD iterate back
    average.observe(val_loss)              # may start the averaging

Why not Lightning's `WeightAveraging` callback (2.6.6): it averages from the start of the fit and swaps the
average in at every validation and checkpoint unconditionally, so before NT-ASGD's trigger fires validation,
the best checkpoint and the saved model would be the *initial* weights; making it wait for the trigger means
overriding its validation, checkpoint and train-end hooks, i.e. most of it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class Average:
    def __init__(self, model: nn.Module, nonmono: int) -> None:
        self.nonmono = nonmono
        # Every name a parameter has (a tied head weight is the embedding's tensor under two names).
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.losses: list[float] = []  # every validation loss so far
        self.count = 0  # steps averaged; 0 until the trigger
        self.mean: dict[str, torch.Tensor] | None = None  # None until the trigger

    @property
    def active(self) -> bool:
        return self.mean is not None

    def observe(self, val_loss: float) -> bool:
        """Record a validation loss; start averaging (returns True) when it is worse than the best before the
        last `nonmono` ones (AWD-LSTM: `val_loss > min(best_val_loss[:-nonmono])`, checked before appending)."""
        start = (not self.active and len(self.losses) > self.nonmono
                 and val_loss > min(self.losses[: len(self.losses) - self.nonmono]))
        self.losses.append(val_loss)
        if start:
            self.mean = {}
        return start

    @torch.no_grad()
    def step(self) -> None:
        """Add the current weights to the mean (after an optimiser step): mean += (w - mean) / count."""
        if not self.active:
            return
        self.count += 1
        seen: dict[int, torch.Tensor] = {}
        for name, p in self.params.items():
            if id(p) in seen:  # a tied weight: one mean, under each of its names
                self.mean[name] = seen[id(p)]
            elif self.count == 1:
                self.mean[name] = seen[id(p)] = p.detach().clone()
            else:
                seen[id(p)] = self.mean[name]
                self.mean[name].add_(p.detach() - self.mean[name], alpha=1 / self.count)

    @contextlib.contextmanager
    def swapped(self):
        """The averaged weights in the model inside the block (nothing changes before the trigger)."""
        if not self.active or not self.count:
            yield
            return
        kept = {name: p.detach().clone() for name, p in self.params.items()}
        self.load_into_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(kept[name])

    @torch.no_grad()
    def load_into_model(self) -> None:
        for name, p in self.params.items():
            p.copy_(self.mean[name])

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "count": self.count, "mean": self.mean}

    def load_state_dict(self, state: dict) -> None:
        self.losses, self.count = list(state["losses"]), int(state["count"])
        self.mean = None if state["mean"] is None else {name: t.clone() for name, t in state["mean"].items()}


def weights(ckpt: dict) -> dict[str, torch.Tensor]:
    """A Lightning checkpoint's `state_dict`, with the averaged weights where NT-ASGD had started: what
    validation scored and what the saved model is."""
    state = dict(ckpt["state_dict"])
    saved = (ckpt.get("rnnlab") or {}).get("average")
    if saved and saved["mean"] and saved["count"]:
        state |= {f"model.{name}": mean for name, mean in saved["mean"].items()}
    return state
