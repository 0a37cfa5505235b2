"""Feasibility check: can a small word-level RNN / GRU learn long-range subject–verb agreement in seconds?

Trains one RNNLM per cell (emb 32, hidden 64, Adam 3e-3, clip 1.0, batch 64 × bptt 64) for a fixed
wall-clock budget on `generate(conf_spec("corpus.generator", ...))`, with the plain stateful truncated-BPTT loop (the
detached hidden state carries over between windows), then prints the agreement probe as a Markdown table.
A script, not a test, and not part of the pipeline.

    python bench/agreement_feasibility.py [--seconds 90] [--max-distance 40] [--cells rnn gru] [--plot out.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rnnlab import plots  # noqa: E402
from rnnlab.agreement import generate  # noqa: E402
from rnnlab.agreement_probe import markdown_table, probe  # noqa: E402
from rnnlab.model import RNNLM, detach_hidden  # noqa: E402
from rnnlab.scoring import batchify  # noqa: E402
from rnnlab.vocab import build  # noqa: E402
from rnnlab.config import spec as conf_spec  # conf/'s defaults, with changes

BATCH, BPTT = 64, 64


def train(cell: str, data: torch.Tensor, vocab_size: int, seconds: float) -> tuple[RNNLM, dict]:
    torch.manual_seed(0)
    model = RNNLM(vocab_size, conf_spec("model", cell=cell, embedding_size=32, hidden_size=64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    hidden, i, steps, tokens, loss = None, 0, 0, 0, torch.tensor(float("nan"))
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if i + BPTT + 1 > data.shape[1]:  # next epoch: the streams start over from the zero state
            hidden, i = None, 0
        x, y = data[:, i: i + BPTT], data[:, i + 1: i + 1 + BPTT]  # (B, T), (B, T)
        logits, hidden = model(x, hidden)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hidden = detach_hidden(hidden)
        i, steps, tokens = i + BPTT, steps + 1, tokens + x.numel()
    elapsed = time.perf_counter() - start
    return model, {"steps": steps, "tokens/s": tokens / elapsed, "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=90.0, help="training wall-clock per cell")
    parser.add_argument("--cells", nargs="+", default=["rnn", "gru"])
    parser.add_argument("--n-sentences", type=int, default=20000)
    parser.add_argument("--min-distance", type=int, default=0)
    parser.add_argument("--max-distance", type=int, default=40)
    parser.add_argument("--distances", type=int, nargs="+", default=[0, 5, 10, 20, 30, 40, 50, 60])
    parser.add_argument("--per-distance", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--plot", type=Path, default=None, help="also write the accuracy plot (PNG) here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = conf_spec("corpus.generator", args.n_sentences, args.min_distance, args.max_distance, seed=0)
    text = generate(spec)
    vocab = build(text, conf_spec("vocab", level="word"), line_corpus=True)
    data = batchify(vocab.encode(text), BATCH)
    print(f"corpus: {spec}; {data.numel()} tokens, vocab {len(vocab)}, torch threads {torch.get_num_threads()}")
    curves = {}
    for cell in args.cells:
        model, stats = train(cell, data, len(vocab), args.seconds)
        print(f"{cell}: {stats['steps']} steps in {args.seconds:g} s, {stats['tokens/s']:.0f} tokens/s, "
              f"last train loss {stats['loss']:.3f} nats/token")
        curves[cell] = probe(model, vocab, args.distances, args.per_distance, seed=1)
    print()
    print(markdown_table(curves))
    if args.plot:
        plots.agreement(curves, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
