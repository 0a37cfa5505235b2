"""Benchmark: word-level training tokens/s, rnnlab's step against the pytorch/examples reference loop.

The reference is pytorch/examples `word_language_model/main.py` as written there (model.py's RNNModel:
embedding → nn.LSTM with dropout → linear decoder → log_softmax, NLLLoss, `clip_grad_norm_(0.25)`, the
manual SGD update `p.data.add_(p.grad, alpha=-lr)`, batch 20 × bptt 35, hidden state repackaged each
batch); rnnlab's is its LightningModule under a Lightning Trainer with the same model, optimiser (SGD lr
20), clipping (Trainer's gradient_clip_val 0.25), dropout 0.2, batch and window, and its gradient
statistics callback on, as `training.train` runs it (with `runtime.configure`). LSTM 2×200, emb 200,
vocabulary 10,000 (a Zipfian token stream: the head's cost depends on the vocabulary size, not on text).

Each measurement runs in a fresh process (glibc's allocator settings cannot be undone in-process); the
two alternate, `--rounds` times each, and the medians are compared: ratio = rnnlab / reference.

    python bench/word_throughput.py [--rounds 5] [--steps 40] [--vocab 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from rnnlab.config import spec as conf_spec  # conf/'s defaults, with changes

EMB, HIDDEN, LAYERS, DROPOUT, LR, CLIP, BATCH, BPTT = 200, 200, 2, 0.2, 20.0, 0.25, 20, 35


def zipf_stream(vocab: int, n: int):
    import numpy as np

    ranks = np.arange(1, vocab + 1)
    p = 1.0 / ranks
    return np.random.default_rng(0).choice(vocab, size=n, p=p / p.sum()).astype(np.int64)


def reference(vocab: int, steps: int, warmup: int) -> float:
    """pytorch/examples word_language_model's training loop, unchanged in substance."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class RNNModel(nn.Module):  # word_language_model/model.py, LSTM branch
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(DROPOUT)
            self.encoder = nn.Embedding(vocab, EMB)
            self.rnn = nn.LSTM(EMB, HIDDEN, LAYERS, dropout=DROPOUT)
            self.decoder = nn.Linear(HIDDEN, vocab)
            nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

        def forward(self, input, hidden):
            emb = self.drop(self.encoder(input))
            output, hidden = self.rnn(emb, hidden)
            decoded = self.decoder(self.drop(output)).view(-1, vocab)
            return F.log_softmax(decoded, dim=1), hidden

    torch.manual_seed(0)
    data = torch.from_numpy(zipf_stream(vocab, BATCH * (BPTT * (steps + warmup) + 1)))
    data = data[: data.size(0) // BATCH * BATCH].view(BATCH, -1).t().contiguous()  # batchify: (N, B)
    model, criterion = RNNModel(), nn.NLLLoss()
    model.train()
    hidden = tuple(torch.zeros(LAYERS, BATCH, HIDDEN) for _ in range(2))
    tokens, start = 0, 0.0
    for k, i in enumerate(range(0, (steps + warmup) * BPTT, BPTT)):
        if k == warmup:
            tokens, start = 0, time.perf_counter()
        x, y = data[i : i + BPTT], data[i + 1 : i + 1 + BPTT].reshape(-1)
        model.zero_grad()
        hidden = tuple(h.detach() for h in hidden)  # repackage_hidden
        output, hidden = model(x, hidden)
        loss = criterion(output, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-LR)
        tokens += y.numel()
    return tokens / (time.perf_counter() - start)


def rnnlab_step(vocab: int, steps: int, warmup: int) -> float:
    """rnnlab's LightningModule + Trainer, as training.train builds them (minus MLflow and checkpoints)."""
    import lightning.pytorch as pl

    from rnnlab import runtime
    from rnnlab.data import StreamWindows

    from train_throughput import lightning_loop  # noqa: I001  (bench/, next to this script)

    runtime.configure(None)
    pl.seed_everything(0, verbose=False)
    windows = StreamWindows(zipf_stream(vocab, BATCH * (BPTT * (steps + warmup) + 1)), BATCH, BPTT)
    spec = conf_spec("model", cell="lstm", embedding_size=EMB, hidden_size=HIDDEN, num_layers=LAYERS, dropout=DROPOUT,
                     init="torch")
    return lightning_loop(spec, vocab, windows, steps, warmup, conf_spec("optim", algorithm="sgd", lr=LR), CLIP)


def worker(args: argparse.Namespace) -> None:
    run = rnnlab_step if args.worker == "rnnlab" else reference
    print(json.dumps({"tokens_per_s": run(args.vocab, args.steps, args.warmup)}))


def measure(which: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--worker", which, "--vocab", str(args.vocab), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["tokens_per_s"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--worker", choices=["rnnlab", "reference"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    print(f"LSTM {LAYERS}x{HIDDEN}, emb {EMB}, vocab {args.vocab:,}, batch {BATCH} x bptt {BPTT}, SGD lr {LR}, "
          f"clip {CLIP}, dropout {DROPOUT}; {args.steps} timed steps, median of {args.rounds} alternated rounds")
    ref, ours = [], []
    for r in range(args.rounds):
        ref.append(measure("reference", args))
        ours.append(measure("rnnlab", args))
        print(f"round {r + 1}: reference {ref[-1]:,.0f} tok/s, rnnlab {ours[-1]:,.0f} tok/s", flush=True)
    mr, mo = statistics.median(ref), statistics.median(ours)
    print(f"median: reference {mr:,.0f} tok/s, rnnlab {mo:,.0f} tok/s, ratio rnnlab/reference {mo / mr:.3f}")


if __name__ == "__main__":
    main()
