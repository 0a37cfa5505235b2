"""Benchmark: training tokens/s of data-parallel training (Lightning DDP, gloo on CPU) with 1 and 2 processes.

The default model and batch (GRU 1×256, emb 64, 128 streams × 64 steps, Adam, clip 1.0) over the
default pipeline's encoded training split (`data/vocab/train.npy`: run `dvc repro vocab` first); with
2 processes each owns 64 of the 128 streams (rnnlab.data) and Lightning all-reduces the gradients.
Each configuration runs in a fresh process tree, alternately, `--rounds` times; medians printed with the
scaling efficiency = (tokens/s with 2) / (2 × tokens/s with 1). Lightning gives each DDP process
cores / processes torch threads.

    python bench/ddp_throughput.py [--rounds 3] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import lightning.pytorch as pl
from rnnlab.config import spec as conf_spec  # conf/'s defaults, with changes


def worker(devices: int, steps: int, warmup: int, out: str) -> None:
    from rnnlab import runtime
    from rnnlab.callbacks import GradientStats
    from rnnlab.data import StreamDataModule
    from rnnlab.lit import LitLM
    from rnnlab.vocab import VocabDir

    from train_throughput import Clock  # noqa: I001  (bench/, next to this script)

    runtime.configure(None)
    pl.seed_everything(0, verbose=False)
    vocab = VocabDir("data/vocab").vocab()
    lit = LitLM(len(vocab), vocab.hash, conf_spec("model", cell="gru", embedding_size=64, hidden_size=256),
                conf_spec("optim", lr=3e-3))
    clock = Clock(warmup, devices)
    trainer = pl.Trainer(max_steps=warmup + steps, gradient_clip_val=1.0, accelerator="cpu", devices=devices,
                         strategy="ddp" if devices > 1 else "auto", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         use_distributed_sampler=False, callbacks=[clock, GradientStats(20)])
    trainer.fit(lit, StreamDataModule("data/vocab", conf_spec("data", batch_size=128, bptt=64, eval_batch_size=64)))
    if trainer.is_global_zero:
        with open(out, "w") as fh:
            json.dump({"tokens_per_s": clock.tokens / (clock.end - clock.start)}, fh)


def measure(devices: int, args: argparse.Namespace) -> float:
    out = f"/tmp/ddp_bench_{os.getpid()}.json"
    subprocess.run([sys.executable, __file__, "--worker", str(devices), "--steps", str(args.steps),
                    "--warmup", str(args.warmup), "--out", out], check=True, capture_output=True)
    with open(out) as fh:
        return json.load(fh)["tokens_per_s"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.warmup, args.out)
    print(f"GRU 1x256, emb 64, 128 x 64, Adam, clip 1.0, {os.cpu_count()} cores; {args.steps} timed steps, "
          f"median of {args.rounds} alternated rounds")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.rounds):
        for devices in rates:
            rates[devices].append(measure(devices, args))
        print(f"round {r + 1}: 1 process {rates[1][-1]:,.0f} tok/s, 2 processes {rates[2][-1]:,.0f} tok/s", flush=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median: 1 process {one:,.0f} tok/s, 2 processes {two:,.0f} tok/s; speed-up {two / one:.2f}x, "
          f"scaling efficiency {two / (2 * one):.0%}")


if __name__ == "__main__":
    main()
