"""Benchmark: the hand-written BPTT layers (rnnlab.recurrence) against nn.GRU / nn.RNN, and glibc's
default memory handling against `runtime.keep_freed_memory()`; before/after figures for both changes.

Plain PyTorch training loop (embedding → cell → linear head, cross-entropy, Adam, clip norm 1.0), stateful
batches of B × T tokens. Every variant runs in its own fresh process (glibc's malloc settings cannot be
undone in-process); the variants are run alternately, `--rounds` times each, and the medians printed.

    python bench/recurrence.py [--cell gru] [--hidden 256] [--batch 64 --bptt 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from rnnlab.config import spec as conf_spec  # conf/'s defaults, with changes

VARIANTS = [  # (label, hand-written BPTT, keep freed memory)
    ("nn module, glibc default", False, False),
    ("nn module, keep freed memory", False, True),
    ("rnnlab BPTT, glibc default", True, False),
    ("rnnlab BPTT, keep freed memory", True, True),
]


def plain_loop(spec, vocab_size: int, windows, steps: int, warmup: int) -> float:
    """Tokens/s of a plain PyTorch training loop over stateful windows (also used by train_throughput.py)."""
    import torch
    import torch.nn.functional as F

    from rnnlab.model import RNNLM, detach_hidden

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


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from rnnlab import recurrence, runtime
    from rnnlab.data import StreamWindows

    if args.keep_memory:
        runtime.keep_freed_memory()
    if not args.bptt_layers:
        recurrence.supports = lambda module, x: False  # RNNLM falls back to the nn module
    torch.manual_seed(0)
    vocab_size = 81
    spec = conf_spec("model", cell=args.cell, embedding_size=args.embedding, hidden_size=args.hidden, num_layers=args.layers)
    n = args.batch * (args.bptt * (args.steps + args.warmup) + 1)
    windows = StreamWindows(np.random.default_rng(0).integers(0, vocab_size, n).astype(np.uint16),
                            args.batch, args.bptt)
    rate = plain_loop(spec, vocab_size, windows, args.steps, args.warmup)
    print(json.dumps({"tokens_per_s": rate}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cell", default="gru", choices=["gru", "rnn"])
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bptt", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bptt-layers", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--keep-memory", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    common = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
              if k not in ("worker", "bptt_layers", "keep_memory", "rounds")]
    rates: dict[str, list[float]] = {label: [] for label, _, _ in VARIANTS}
    for _ in range(args.rounds):
        for label, bptt, keep in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--worker", f"--bptt-layers={int(bptt)}",
                                  f"--keep-memory={int(keep)}", *common],
                                 check=True, capture_output=True, text=True).stdout
            rates[label].append(json.loads(out.strip().splitlines()[-1])["tokens_per_s"])
    base = statistics.median(rates[VARIANTS[0][0]])
    print(f"{args.cell} {args.layers}×{args.hidden}, emb {args.embedding}, batch {args.batch} × bptt {args.bptt}, "
          f"Adam, clip 1.0; {args.steps} timed steps, median of {args.rounds} alternated rounds")
    print(f"{'variant':<34}{'median tok/s':>14}{'min':>10}{'max':>10}{'speed-up':>10}")
    for label, values in rates.items():
        med = statistics.median(values)
        print(f"{label:<34}{med:>14,.0f}{min(values):>10,.0f}{max(values):>10,.0f}{med / base:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
