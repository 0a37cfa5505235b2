"""Evaluation maths: NLL, perplexity and bits per character over a token stream; statistics of samples.

`evaluate_stream` scores a split the way it is trained (see `rnnlab.data`): the stream is cut into
B contiguous rows and walked in T-step windows, the hidden state carried (detached) from one window
to the next, so every target but the first of each row is predicted with its whole row as context:

    row 0   a b c d e f      window 0: x = a b c, y = b c d      (T = 3)
    row 1   g h i j k l      window 1: x = d e,   y = e f        (the last window is shorter)

From the total negative log-likelihood NLL (nats) over the `tokens` predicted targets:
    loss = NLL / tokens      ppl = exp(loss)      bits_per_token = loss / ln 2
    bpc  = NLL / ln 2 / chars covered,
where `chars` counts the characters of the stream's text, separators included, so that char and word
models compare (chars covered = chars · tokens / N, the share of the stream that was scored). For a
char model chars == N and bpc == bits_per_token.

No Lightning here: the LightningModule and the evaluate stage both call these functions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import fmean

import torch
import torch.nn.functional as F

from rnnlab.errors import UserError
from rnnlab.model import detach_hidden

LN2 = math.log(2)


def perplexity(nll_nats: float, tokens: int) -> float:
    loss = nll_nats / tokens
    return math.exp(loss) if loss < 700 else math.inf  # exp overflows a float past ~709


def bits_per_char(nll_nats: float, chars: float) -> float:
    return nll_nats / LN2 / chars


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) -> (B, N // B): row r is the r-th contiguous chunk; the last N % B tokens are dropped."""
    n = ids.numel() // batch_size
    return ids[: n * batch_size].view(batch_size, n)  # (B, n)


@torch.no_grad()
def evaluate_stream(model: torch.nn.Module, ids: torch.Tensor, batch_size: int, bptt: int,
                    chars: int | None = None) -> dict:
    """Total NLL of `ids` (N,) under `model`; returns tokens, nll, loss, ppl, bits_per_token, bpc.

    `chars=None` means one token per character (a char model)."""
    device = next(model.parameters(), ids).device
    data = batchify(ids.long(), batch_size).to(device)  # (B, n)
    if data.size(1) < 2:
        raise UserError(f"the evaluation stream has {ids.numel()} tokens, too few for {batch_size} streams of "
                        "at least 2 tokens; lower data.eval_batch_size or use more data")
    was_training = model.training
    model.eval()
    try:
        nll = stream_nll(model, data, bptt)
    finally:
        model.train(was_training)
    tokens = data.size(0) * (data.size(1) - 1)
    covered = (ids.numel() if chars is None else chars) * tokens / ids.numel()
    loss = nll / tokens
    return {"tokens": tokens, "nll": nll, "loss": loss, "ppl": perplexity(nll, tokens),
            "bits_per_token": loss / LN2, "bpc": bits_per_char(nll, covered)}


def stream_nll(model: torch.nn.Module, data: torch.Tensor, bptt: int) -> float:
    """Summed NLL (nats) of every next token of the rows of `data` (B, n), hidden state carried."""
    hidden, total = None, torch.zeros((), dtype=torch.float64, device=data.device)
    for i in range(0, data.size(1) - 1, bptt):
        t = min(bptt, data.size(1) - 1 - i)
        x, y = data[:, i : i + t], data[:, i + 1 : i + 1 + t]  # (B, t), (B, t)
        logits, hidden = model(x, hidden)  # (B, t, V)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").double()
        hidden = detach_hidden(hidden)
    return total.item()


def evaluate_split(model: torch.nn.Module, vocab_dir: str | Path, split: str, batch_size: int, bptt: int) -> dict:
    """Score an encoded split written by the vocab stage; adds its OOV rate (from the vocab stats)."""
    from rnnlab.vocab import load_ids

    stats = json.loads((Path(vocab_dir) / "stats.json").read_text())["splits"][split]
    ids = torch.from_numpy(load_ids(Path(vocab_dir) / f"{split}.npy").astype("int64"))
    result = evaluate_stream(model, ids, batch_size, bptt, chars=stats["chars"])
    return result | {"oov_rate": stats["oov_rate"]}


# --- samples ---------------------------------------------------------------------------------------------


def sample_stats(samples: list, novel: list[bool]) -> dict:
    """Summary of `rnnlab.sampling.Sample`s: lengths, stops, diversity, novelty, `<unk>` rejections."""
    assert samples and len(novel) == len(samples), "one novelty flag per sample"
    draws = sum(s.length + (s.stopped == "eos") for s in samples)  # tokens drawn, stopping <eos> included
    return {
        "mean_length": fmean(s.length for s in samples),
        "eos_stop_rate": fmean(s.stopped == "eos" for s in samples),
        "distinct_1": distinct(samples, 1),
        "distinct_2": distinct(samples, 2),
        "novelty_rate": fmean(novel),
        "unk_rejection_rate": sum(s.unk_rejections for s in samples) / draws if draws else 0.0,
    }


def distinct(samples: list, n: int) -> float:
    """Distinct n-grams / all n-grams of the generated ids, n-grams taken within each sample (Li et al., 2016)."""
    grams = [tuple(s.ids[i : i + n]) for s in samples for i in range(len(s.ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
