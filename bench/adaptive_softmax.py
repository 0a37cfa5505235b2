"""Benchmark: the full softmax head against the adaptive softmax (`model.head=adaptive`) on a large vocabulary.

Word level on the embedded plays with every word of the training split kept (29,969 types with the
`words` tokenizer, close to WikiText-2's 33,278): an LSTM 1×256 (emb 256), batch 32 × bptt 35, Adam 3e-3, clip 1.0, in a plain loop
over rnnlab's model (`features` + `nll`, the training step's loss). Prints
  1. training tokens/s of each head, median of `--rounds` alternated rounds of `--steps` steps;
  2. the validation loss (exact NLL over the full vocabulary, rnnlab.scoring) after the same wall time
     (`--seconds` of training each; the validation split, 64,656 tokens as scored).

    python bench/adaptive_softmax.py [--cutoffs 2000,10000] [--rounds 3] [--seconds 120]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rnnlab import corpus, runtime, scoring, vocab
from rnnlab.data import StreamWindows
from rnnlab.model import RNNLM, detach_hidden
from rnnlab.config import spec as conf_spec  # conf/'s defaults, with changes

BATCH, BPTT = 32, 35


def plays_as_words() -> tuple[vocab.Vocab, torch.Tensor, torch.Tensor]:
    parts = corpus.preview(conf_spec("corpus", val_frac=0.05, test_frac=0.0), Path("data/raw"))  # as prepare splits
    v = vocab.build(parts["train"], conf_spec("vocab", level="word", min_freq=1), False)
    return v, torch.from_numpy(v.encode(parts["train"]).astype("int64")), \
        torch.from_numpy(v.encode(parts["val"]).astype("int64"))


def make(head: str, size: int, cutoffs: list[int]) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(size, conf_spec("model", cell="lstm", embedding_size=256, hidden_size=256, head=head,
                                 cutoffs=cutoffs if head == "adaptive" else None))


def train(model: RNNLM, windows: StreamWindows, *, steps: int | None = None, seconds: float | None = None,
          warmup: int = 3) -> tuple[float, int]:
    """Train for `steps` timed steps (after warmup) or `seconds`; returns (tokens/s, steps done)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    hidden, tokens, start, k = None, 0, time.perf_counter(), 0
    while True:
        if k == warmup and steps is not None:
            tokens, start = 0, time.perf_counter()
        x, y = windows[k % len(windows)]
        h, hidden = model.features(x, hidden)
        hidden = detach_hidden(hidden)
        loss = model.nll(h, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens, k = tokens + y.numel(), k + 1
        elapsed = time.perf_counter() - start
        if (steps is not None and k >= warmup + steps) or (seconds is not None and elapsed >= seconds):
            return tokens / elapsed, k


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cutoffs", default="2000,10000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seconds", type=float, default=120.0)
    args = p.parse_args()
    runtime.configure(None)
    cutoffs = [int(c) for c in args.cutoffs.split(",")]
    v, train_ids, val_ids = plays_as_words()
    windows = StreamWindows(train_ids.numpy(), BATCH, BPTT)
    print(f"plays, word level: vocabulary {len(v):,}, {len(train_ids):,} training tokens; LSTM 1x256, "
          f"batch {BATCH} x bptt {BPTT}, Adam 3e-3; adaptive cutoffs {cutoffs}, div_value 4")
    rates: dict[str, list[float]] = {"full": [], "adaptive": []}
    for _ in range(args.rounds):
        for head in rates:
            rates[head].append(train(make(head, len(v), cutoffs), windows, steps=args.steps)[0])
    full, adaptive = statistics.median(rates["full"]), statistics.median(rates["adaptive"])
    print(f"tokens/s, median of {args.rounds} alternated rounds of {args.steps} steps: full {full:,.0f}, "
          f"adaptive {adaptive:,.0f}, speed-up {adaptive / full:.2f}x", flush=True)
    for head in rates:
        model = make(head, len(v), cutoffs)
        _, done = train(model, windows, seconds=args.seconds, warmup=0)
        model.eval()
        with torch.no_grad():
            score = scoring.score_stream(model, val_ids, batch_size=16, bptt=BPTT)
        print(f"{head:>8}: {done} steps in {args.seconds:.0f} s, val loss {score['loss']:.3f} "
              f"(ppl {score['ppl']:.1f}, {score['tokens']:,} tokens)", flush=True)


if __name__ == "__main__":
    main()
