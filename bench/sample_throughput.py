"""Benchmark: sampling speed, batched and single-stream, and whether the cost per token stays flat.

Uses the pipeline's model (data/train/model) when it exists, else an untrained model of the default
size; `<eos>` is masked out so every row runs to max_length. Prints the median of `--runs` runs.

    python bench/sample_throughput.py [--runs 5]

The sampler carries the hidden state and feeds one token per step, so 2,000 characters should take
about twice as long as 1,000 (ratio <= 2.1), never quadratically longer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from rnnlab.model import RNNLM
from rnnlab.sampling import sample
from rnnlab.vocab import EOS_ID, Vocab, build
from rnnlab.config import spec as conf_spec  # conf/'s defaults, with changes

REPO = Path(__file__).resolve().parents[1]


class NoEos(nn.Module):
    """The model with `<eos>` masked out, so that every sample runs to max_length."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens, hidden=None):
        logits, hidden = self.model(tokens, hidden)
        logits[..., EOS_ID] = float("-inf")
        return logits, hidden


def load() -> tuple[nn.Module, Vocab, str]:
    model_dir = REPO / "data" / "train" / "model"
    if model_dir.exists():
        from rnnlab.trained_model import load_trained

        vocab, model, _ = load_trained(REPO / "data" / "vocab", model_dir)
        return model, vocab, "the pipeline's model (data/train/model)"
    vocab = build("".join(chr(c) for c in range(32, 111)) + "\n", conf_spec("vocab", level="char"), line_corpus=False)
    return RNNLM(len(vocab), conf_spec("model", cell="gru", embedding_size=64, hidden_size=256)), vocab, "an untrained GRU 1x256"


def seconds(model: nn.Module, vocab: Vocab, num: int, length: int) -> float:
    start = time.perf_counter()
    sample(model, vocab, conf_spec("sample", num_samples=num, max_length=length, temperature=1.0, seed=0))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    runs = p.parse_args().runs
    model, vocab, what = load()
    model = NoEos(model.eval())
    seconds(model, vocab, 8, 50)  # warm-up
    print(f"model: {what}; torch threads {torch.get_num_threads()}; median of {runs} runs")
    rows = {}
    for name, num, length in (("batched 64 x 1000", 64, 1000), ("one stream x 1000", 1, 1000),
                              ("one stream x 2000", 1, 2000)):
        t = statistics.median(seconds(model, vocab, num, length) for _ in range(runs))
        rows[name] = t
        print(f"{name:<20}{num * length / t:>12,.0f} chars/s{t:>9.2f} s")
    print(f"time(2000) / time(1000) = {rows['one stream x 2000'] / rows['one stream x 1000']:.2f}  (flat cost: ~2.0)")


if __name__ == "__main__":
    main()
