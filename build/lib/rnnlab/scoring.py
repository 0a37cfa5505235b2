"""Scoring a language model on a token stream: the one path for validation, evaluation and benchmarks.

A split is one long token stream: `batchify` cuts it into B contiguous rows and `window` walks along
the rows in T-step windows, y being x shifted by one token (the diagram is in rnnlab.data).
Training draws its batches from these windows (rnnlab.data), the LightningModule's validation scores
them with `window_nll`, and the evaluate stage and the benches with `score_stream`; the hidden state
is carried (detached) from one window to the next, so each target is predicted with its whole row
so far as context. With the same B and T, training's `val/loss` and `score_stream` on the val split
are the same number (tests/test_scoring.py checks it through the real stages).

From the summed negative log-likelihood NLL (nats, accumulated in float64) over `tokens` targets:

    loss = NLL / tokens              (nats per token, the cross-entropy)
    ppl  = exp(loss)                 (inf when exp overflows a double, i.e. loss > ~709.78: a diverged
                                      model; MLflow stores inf as the largest double)
    bits_per_token = loss / ln 2
    bpc  = bits_per_token / chars_per_token

`chars_per_token` is the split's characters (separators included) over its tokens, so that char and
word models compare by bits per character; for a char model it is 1 and bpc == bits_per_token.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rnnlab.errors import UserError
from rnnlab.model import Hidden, detach_hidden

LN2 = math.log(2)
LOG_DBL_MAX = math.log(np.finfo(np.float64).max)  # ~709.78: exp() of more overflows a double


def batchify(ids: np.ndarray | torch.Tensor, batch_size: int) -> torch.Tensor:
    """1-D token ids (N,) -> (B, N // B) int64 tensor whose row r is the r-th contiguous chunk."""
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64) if isinstance(ids, np.ndarray) else ids).long()
    assert ids.dim() == 1, "a token stream is 1-D"
    n = ids.numel() // batch_size
    return ids[: n * batch_size].view(batch_size, n)  # (B, n)


def num_windows(data: torch.Tensor, bptt: int) -> int:
    """Windows of at most `bptt` targets along rows of `data` (B, n); the last one may be shorter."""
    return -(-(data.size(1) - 1) // bptt)  # ceil: the last token of a row is never an input


def window(data: torch.Tensor, k: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-th window `(x, y)`, both (B, t) with t <= bptt; y is x shifted by one token."""
    i = k * bptt
    t = min(bptt, data.size(1) - 1 - i)
    return data[:, i : i + t], data[:, i + 1 : i + 1 + t]  # (B, t), (B, t)


def window_nll(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               hidden: Hidden = None) -> tuple[torch.Tensor, Hidden]:
    """Summed NLL (nats, float64 0-d tensor) of the targets `y` given `x` (B, t) and the carried state."""
    h, hidden = model.features(x, hidden)  # (B, t, H)
    nll = model.nll(h.float(), y, reduction="sum").double()
    return nll, detach_hidden(hidden)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss <= LOG_DBL_MAX else math.inf


def summary(nll: float, tokens: int, chars_per_token: float = 1.0) -> dict:
    """loss, ppl, bits_per_token and bpc from a summed NLL (see the module docstring)."""
    loss = nll / tokens
    return {"tokens": tokens, "nll": nll, "loss": loss, "ppl": perplexity(loss),
            "bits_per_token": loss / LN2, "bpc": loss / LN2 / chars_per_token}


@torch.no_grad()
def score_stream(model: torch.nn.Module, ids: np.ndarray | torch.Tensor, batch_size: int, bptt: int,
                 chars_per_token: float = 1.0) -> dict:
    """Score the stream `ids` (N,) in eval mode, hidden state carried across windows; see `summary`."""
    device = next(model.parameters()).device
    data = batchify(ids, batch_size).to(device)  # (B, n)
    if data.size(1) < 2:
        raise UserError(f"the evaluation stream has {len(ids)} tokens, too few for {batch_size} streams of "
                        "at least 2 tokens; lower the batch size (evaluate.batch_size) or use more data")
    was_training = model.training
    model.eval()
    try:
        hidden, nll = None, torch.zeros((), dtype=torch.float64, device=device)
        for k in range(num_windows(data, bptt)):
            x, y = window(data, k, bptt)
            step, hidden = window_nll(model, x, y, hidden)
            nll += step
    finally:
        model.train(was_training)
    return summary(nll.item(), data.size(0) * (data.size(1) - 1), chars_per_token)
