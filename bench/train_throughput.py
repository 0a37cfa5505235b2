"""Benchmark: training tokens/s of rnnlab's LightningModule + Trainer against a plain PyTorch loop.

Same model, batch, window, optimiser (Adam) and clipping (norm 1.0), same stateful TBPTT batches;
the two are measured alternately, `--rounds` times each, and the medians compared. Also prints the
training step's FLOP rate against the machine's measured sgemm rate.

    python bench/train_throughput.py [--cell gru] [--hidden 256] [--steps 40] [--rounds 5]

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
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rnnlab.data import StreamWindows
from rnnlab.lit import LitLM
from rnnlab.model import ModelSpec, RNNLM, detach_hidden

REPO = Path(__file__).resolve().parents[1]


def token_stream(vocab_size: int, n: int) -> np.ndarray:
    path = REPO / "data" / "vocab" / "train.npy"
    if path.exists():
        return np.load(path)[:n]
    return np.random.default_rng(0).integers(0, vocab_size, n).astype(np.uint16)


def plain_loop(spec: ModelSpec, vocab_size: int, windows: StreamWindows, steps: int, warmup: int) -> float:
    model = RNNLM(vocab_size, spec)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    hidden, tokens, start = None, 0, 0.0
    for k in range(warmup + steps):
        if k == warmup:
            tokens, start = 0, time.perf_counter()
        x, y = windows[k % len(windows)]
        logits, hidden = model(x, hidden)
        hidden = detach_hidden(hidden)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += y.numel()
    return tokens / (time.perf_counter() - start)


class Clock(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.tokens, self.start = warmup, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.tokens += batch[1].numel()
            self.end = time.perf_counter()


def lightning_loop(spec: ModelSpec, vocab_size: int, windows: StreamWindows, steps: int, warmup: int) -> float:
    from dataclasses import asdict

    lit = LitLM(vocab_size, "bench", asdict(spec), {"lr": 3e-3},
                {"every_n_steps": 20, "gtt_length": 0, "samples": 0})
    clock = Clock(warmup)
    trainer = pl.Trainer(max_steps=warmup + steps, gradient_clip_val=1.0, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[clock], log_every_n_steps=20)
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cell", default="gru")
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bptt", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    pl.seed_everything(0, verbose=False)
    torch.set_num_threads(torch.get_num_threads())
    vocab_size = 81
    spec = ModelSpec(cell=args.cell, embedding_size=args.embedding, hidden_size=args.hidden)
    ids = token_stream(vocab_size, args.batch * (args.bptt * (args.steps + args.warmup) + 1))
    windows = StreamWindows(ids, args.batch, args.bptt)
    plain, light = [], []
    for _ in range(args.rounds):  # alternate, so background load hits both alike
        plain.append(plain_loop(spec, vocab_size, windows, args.steps, args.warmup))
        light.append(lightning_loop(spec, vocab_size, windows, args.steps, args.warmup))
    mp, ml = statistics.median(plain), statistics.median(light)
    peak = sgemm_rate()
    fpt = flops_per_token(spec, vocab_size)
    print(f"model: {args.cell} emb {args.embedding} hidden {args.hidden}, batch {args.batch} x bptt {args.bptt}, "
          f"Adam, clip norm 1.0, torch threads {torch.get_num_threads()}, rounds {args.rounds}")
    print(f"{'loop':<12}{'median tok/s':>14}{'min':>10}{'max':>10}{'GFLOP/s':>10}{'of sgemm':>10}")
    for name, rates in (("plain", plain), ("lightning", light)):
        med = statistics.median(rates)
        print(f"{name:<12}{med:>14,.0f}{min(rates):>10,.0f}{max(rates):>10,.0f}"
              f"{med * fpt / 1e9:>10.1f}{med * fpt / peak:>10.0%}")
    print(f"lightning / plain = {ml / mp:.3f}   (sgemm 1024^3: {peak / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
