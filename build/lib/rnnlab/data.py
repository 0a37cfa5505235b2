"""Stateful truncated-BPTT batches: B parallel token streams cut into T-step windows.

`batchify` and `window` live in rnnlab.scoring, which scores validation and test splits with the
very same windows; this module feeds them to Lightning.

As in pytorch/examples `word_language_model` (`batchify` / `get_batch`). An encoded split is one long
token stream; `batchify` cuts it into B contiguous pieces, one per row, dropping the remainder that
does not fill a whole row:

    stream   a b c d e f g h i j k l m n o p q r s t u v w x y z        26 tokens, B = 4 -> N = 6 per row
                                                                        ("y z" is dropped)
             ┌ a b c d e f ┐  row 0
             │ g h i j k l │  row 1
             │ m n o p q r │  row 2
             └ s t u v w x ┘  row 3

`StreamWindows` then walks along the rows in windows of T = bptt steps; y is x shifted by one token,
so the last target of window k is the first input of window k+1. With T = 2 (N - 1 = 5 targets a row,
the last window is shorter instead of dropped):

             window 0          window 1          window 2
             x     y           x     y           x   y
    row 0    a b   b c         c d   d e         e   f
    row 1    g h   h i         i j   j k         k   l
    row 2    m n   n o         o p   p q         q   r
    row 3    s t   t u         u v   v w         w   x

Window k+1 continues window k in every row, so the LightningModule carries the final hidden state of
one batch, detached, into the next: gradients flow back at most T steps (truncated BPTT) while the
state has seen the whole stream so far. Hence no shuffling, and the DataLoader gets `batch_size=None`
because each item already is a whole (B, T) batch. The training loader is resumable (`StreamLoader`):
its position in the epoch is part of Lightning's checkpoint, so a resumed training sees exactly the
windows the uninterrupted one would have.

Data-parallel training (Lightning DDP, `trainer.strategy=ddp`, W processes): process r owns the rows
r·B/W … (r+1)·B/W − 1 of every window (its own contiguous streams) and walks them in order, carrying its
own state; no DistributedSampler (`use_distributed_sampler=False`), which would deal whole windows out
to processes and break the streams. B must divide by W. With equal shares, the gradient Lightning
all-reduces (the mean of the processes' mean losses) is the single process's gradient on all B rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rnnlab.errors import UserError
from rnnlab.preflight import EMPTY_VAL
from rnnlab.schema import DataSpec
from rnnlab.scoring import batchify, num_windows, window
from rnnlab.vocab import VocabDir


def random_lengths(targets: int, bptt: int, seed: int) -> list[int]:
    """AWD-LSTM's random window lengths (Merity, Keskar & Socher 2018, section 4.1; awd-lstm-lm main.py):
    a window is about `bptt` long with probability 0.95, else about bptt / 2, jittered by N(0, 5²), at least
    5 (or bptt if shorter) and at most bptt + 40; the last takes what is left of the `targets`. Drawn from
    `seed` alone, so that a resumed epoch, and every DDP process, walks the very same windows."""
    rng, lengths, done = np.random.default_rng(seed), [], 0
    while done < targets:
        mean = bptt if rng.random() < 0.95 else bptt / 2
        t = min(max(min(5, bptt), int(rng.normal(mean, 5))), bptt + 40, targets - done)
        lengths.append(t)
        done += t
    return lengths


class StreamWindows(Dataset):
    """The k-th item is window k: `(x, y)`, both (B, T), y is x shifted by one (see the module docstring)."""

    def __init__(self, ids: np.ndarray, batch_size: int, bptt: int, split: str = "train",
                 part: tuple[int, int] = (0, 1), random_seed: int | None = None) -> None:
        """`part` = (rank, world size): this process's share of the B rows (see the module docstring).
        `random_seed`: windows of random lengths around `bptt` (`random_lengths`), else all `bptt` long."""
        if split == "val" and len(ids) <= 1:
            raise UserError(EMPTY_VAL)
        if len(ids) // batch_size < bptt + 1:
            raise UserError(
                f"the {split} split has {len(ids)} tokens, too few for one window of data.bptt+1={bptt + 1} "
                f"tokens in each of {batch_size} streams (needs {batch_size * (bptt + 1)}); lower "
                "data.batch_size (data.eval_batch_size for val/test) or data.bptt, or use more data"
            )
        rank, world = part
        share = batch_size // world
        self.data = batchify(ids, batch_size)[rank * share : (rank + 1) * share]  # (B / W, N)
        self.bptt, self.lengths = bptt, None
        if random_seed is not None:
            self.lengths = random_lengths(self.data.size(1) - 1, bptt, random_seed)
            self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).tolist()

    def __len__(self) -> int:
        return len(self.lengths) if self.lengths else num_windows(self.data, self.bptt)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        if self.lengths:
            i, t = self.starts[k], self.lengths[k]
            return self.data[:, i : i + t], self.data[:, i + 1 : i + 1 + t]  # (B, t), (B, t)
        return window(self.data, k, self.bptt)  # (B, T), (B, T)


class StreamLoader(DataLoader):
    """The windows in stream order, resumable through Lightning's `state_dict` / `load_state_dict`
    protocol: `position()` tells how many windows of the current epoch training has completed (Lightning
    saves it with the checkpoint), and the first epoch after `load_state_dict` starts there."""

    def __init__(self, windows: StreamWindows, position: Callable[[], int]) -> None:
        super().__init__(windows, batch_size=None, shuffle=False)  # items are whole batches: no collation
        self._position, self._start = position, 0

    def __iter__(self):
        start, self._start = self._start, 0
        return (self.dataset[k] for k in range(start, len(self.dataset)))

    def state_dict(self) -> dict:
        return {"position": self._position()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._start = state_dict["position"] % len(self.dataset)  # a whole epoch done: the next starts at 0


class StreamDataModule(pl.LightningDataModule):
    """Train and val windows from the vocab stage's encoded splits."""

    def __init__(self, vocab_dir: str | Path, spec: DataSpec, seed: int = 0) -> None:
        """`seed`: with `spec.variable_bptt`, epoch e walks the windows `random_lengths(..., seed + e)` (the
        Trainer must reload the training loader every epoch: `reload_dataloaders_every_n_epochs=1`)."""
        super().__init__()
        self.vocab_dir = VocabDir(vocab_dir)
        self.batch_size, self.bptt, self.eval_batch_size = spec.batch_size, spec.bptt, spec.eval_batch_size
        self.variable_bptt, self.seed = spec.variable_bptt, seed
        self.part = (0, 1)  # (rank, world size), set by `setup` from the Trainer

    def setup(self, stage: str | None = None) -> None:
        self.part = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        world = self.part[1]
        for key, size in (("data.batch_size", self.batch_size), ("data.eval_batch_size", self.eval_batch_size)):
            if size % world:
                raise UserError(f"{key}={size} does not divide among {world} processes (trainer.devices x "
                                f"trainer.num_nodes): each process owns an equal share of the streams; use a "
                                f"multiple of {world}")

    def train_dataloader(self) -> StreamLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        seed = self.seed * 1_000_003 + epoch if self.variable_bptt else None
        windows = StreamWindows(self.vocab_dir.ids("train"), self.batch_size, self.bptt, "train", self.part, seed)
        return StreamLoader(windows, lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def val_dataloader(self) -> DataLoader:
        windows = StreamWindows(self.vocab_dir.ids("val"), self.eval_batch_size, self.bptt, "val", self.part)
        return DataLoader(windows, batch_size=None, shuffle=False)  # whole batches, in stream order
