"""Benchmark: training tokens/s of rnnlab's LightningModule + Trainer against a plain PyTorch loop.

Same model, batch, window, optimiser (Adam) and clipping (norm 1.0), same stateful TBPTT batches;
the two are measured alternately with the sgemm rate, `--rounds` times each, and the medians compared.
Also prints the training step's FLOP rate against the machine's sgemm rate measured in the same rounds.

    python bench/train_throughput.py                      # the default model and batch (params.yaml)
    python bench/train_throughput.py --cells rnn,gru,lstm --hiddens 256,512

Uses data/vocab/train.npy when the pipeline has run, random tokens otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from rnnlab.data import StreamWindows
from rnnlab.callbacks import GradientStats
from rnnlab.lit import LitLM
from rnnlab.schema import ModelSpec, OptimSpec
from rnnlab.runtime import keep_freed_memory, quiet_lightning
from rnnlab.config import spec as conf_spec  # conf/'s defaults, with changes

from recurrence import plain_loop  # noqa: I001  (bench/recurrence.py, next to this script)

REPO = Path(__file__).resolve().parents[1]


def token_stream(vocab_size: int, n: int) -> np.ndarray:
    path = REPO / "data" / "vocab" / "train.npy"
    if path.exists():
        return np.load(path)[:n]
    return np.random.default_rng(0).integers(0, vocab_size, n).astype(np.uint16)


class Clock(pl.Callback):
    """Tokens per second after `warmup` steps; `world` processes (DDP) each see 1/world of a batch."""

    def __init__(self, warmup: int, world: int = 1) -> None:
        self.warmup, self.world, self.tokens, self.start, self.end = warmup, world, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.tokens += batch[1].numel() * self.world
            self.end = time.perf_counter()


def lightning_loop(spec: ModelSpec, vocab_size: int, windows: StreamWindows, steps: int, warmup: int,
                   optim: OptimSpec | None = None, clip: float | None = 1.0) -> float:
    """Tokens/s of rnnlab's LightningModule under a Trainer as training.train builds it (minus MLflow and
    checkpoints): `optim` an OptimSpec (default: conf/'s, Adam 3e-3), `clip` the gradient_clip_val."""
    lit = LitLM(vocab_size, "bench", spec, optim or conf_spec("optim"))
    clock = Clock(warmup)
    trainer = pl.Trainer(max_steps=warmup + steps, gradient_clip_val=clip, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[clock, GradientStats(20)], log_every_n_steps=20)  # as training.train
    trainer.fit(lit, DataLoader(windows, batch_size=None, shuffle=False))
    return clock.tokens / (clock.end - clock.start)


def sgemm_rate(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def flops_per_token(spec: ModelSpec, vocab_size: int) -> float:
    """Forward matmul FLOPs per token (gates x (input + recurrent) + head), times 3 for forward + backward."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[spec.cell]
    per_layer = [2 * gates * spec.hidden_size * ((spec.embedding_size if l == 0 else spec.hidden_size)
                                                 + spec.hidden_size) for l in range(spec.num_layers)]
    return 3 * (sum(per_layer) + 2 * spec.hidden_size * vocab_size)


def defaults() -> dict:
    """The default model and batch, from params.yaml (conf/ composed)."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return {"cells": params["model"]["cell"], "hiddens": str(params["model"]["hidden_size"]),
            "embedding": params["model"]["embedding_size"], "batch": params["data"]["batch_size"],
            "bptt": params["data"]["bptt"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.set_defaults(**defaults())
    p.add_argument("--cells", help="comma-separated: gru,rnn,lstm (default: the default model's)")
    p.add_argument("--hiddens", help="comma-separated hidden sizes, e.g. 256,512")
    p.add_argument("--embedding", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--bptt", type=int)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    pl.seed_everything(0, verbose=False)
    keep_freed_memory()  # as training.train() does, for both loops
    quiet_lightning()
    vocab_size = 81
    ids = token_stream(vocab_size, args.batch * (args.bptt * (args.steps + args.warmup) + 1))
    windows = StreamWindows(ids, args.batch, args.bptt)
    print(f"batch {args.batch} x bptt {args.bptt}, emb {args.embedding}, vocab {vocab_size}, Adam, clip norm 1.0, "
          f"torch threads {torch.get_num_threads()}; median of {args.rounds} alternated rounds "
          f"(plain, Lightning, sgemm 1024^3) of {args.steps} timed steps")
    print(f"{'model':<12}{'plain tok/s':>13}{'Lightning':>11}{'ratio':>7}{'GFLOP/s':>9}{'sgemm':>8}{'of sgemm':>10}")
    for cell in args.cells.split(","):
        for hidden in (int(h) for h in args.hiddens.split(",")):
            spec = conf_spec("model", cell=cell, embedding_size=args.embedding, hidden_size=hidden)
            plain, light, peak = [], [], []
            for _ in range(args.rounds):  # alternate, so background load hits all three alike
                plain.append(plain_loop(spec, vocab_size, windows, args.steps, args.warmup))
                light.append(lightning_loop(spec, vocab_size, windows, args.steps, args.warmup))
                peak.append(sgemm_rate())
            mp, ml, mpeak = statistics.median(plain), statistics.median(light), statistics.median(peak)
            rate = ml * flops_per_token(spec, vocab_size)
            print(f"{cell + ' 1x' + str(hidden):<12}{mp:>13,.0f}{ml:>11,.0f}{ml / mp:>7.3f}{rate / 1e9:>9.1f}"
                  f"{mpeak / 1e9:>8.0f}{rate / mpeak:>10.0%}", flush=True)
    print("ratio = Lightning / plain; GFLOP/s and 'of sgemm' are the Lightning loop's")


if __name__ == "__main__":
    main()
