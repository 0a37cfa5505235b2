"""The continuous cache (Grave, Joulin & Usunier 2017, "Improving Neural Language Models with a Continuous
Cache", ICLR): at evaluation, a trained model's prediction is mixed with a pointer to the words that
followed similar hidden states in the recent past of the same stream. No parameter is trained.

For a target at step t with hidden state h_t (the last layer's output, what the head sees) and the cache
of the previous `size` steps (h_i, y_i) of its stream, y_i the word that followed h_i:

    p_cache(w) = Σ_{i: y_i = w} exp(θ h_t·h_i) / Σ_i exp(θ h_t·h_i)
    p(w)       = (1 - λ) p_model(w) + λ p_cache(w)            (p_model alone while the cache is empty)

θ (how sharply the pointer picks the most similar states) and λ (how much it is trusted) are chosen on the
val split from a grid, in one pass that scores every (θ, λ) pair at once; the chosen pair then scores the
test split. The streams, windows and carried state are `rnnlab.scoring`'s, so with λ = 0 the result is
`score_stream`'s exactly (`tests/test_cache.py`). The cache rolls per stream: memory is batch × size × H.

    best = cache.tune(model, val_ids, batch_size, bptt, size, thetas, lambdas)   # {"theta", "lambda", "loss"}
    scores = cache.score(model, test_ids, batch_size, bptt, size, best["theta"], best["lambda"])
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rnnlab.errors import UserError
from rnnlab.scoring import batchify, num_windows, summary, window


def target_logp(model: torch.nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p_model(y) (B, T), float64, for features `h` (B, T, H) and targets `y` (B, T)."""
    return -model.nll(h.float(), y, reduction="none").view(y.shape).double()


def _log_pointer(scores: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """log p_cache(y_t) (B, T), float64, from θ h_t·h_i (B, T, S + T; -inf where not visible) and `same`,
    which entries hold y_t: one exp and two sums in float32 (the bulk of the cost), logs in float64."""
    top = scores.amax(-1, keepdim=True)
    weights = torch.exp(scores - top.masked_fill(~torch.isfinite(top), 0.0))  # 0 where not visible
    norm, hit = weights.sum(-1), (weights * same).sum(-1)
    return torch.where(norm > 0, hit.double().log() - norm.double().log(), torch.full_like(norm, -math.inf,
                                                                                            dtype=torch.float64))


def _nll_grid(model, ids, batch_size: int, bptt: int, size: int, thetas: list[float],
              lambdas: list[float]) -> tuple[torch.Tensor, int]:
    """Summed NLL (len(thetas), len(lambdas)) float64 of the stream under each (θ, λ), and the target count."""
    device = next(model.parameters()).device
    data = batchify(ids, batch_size).to(device)  # (B, n)
    if data.size(1) < 2:
        raise UserError(f"the stream has {len(ids)} tokens, too few for the cache's {batch_size} streams of at least "
                        "2 tokens; lower evaluate.batch_size or use more data")
    lam = torch.tensor(lambdas, dtype=torch.float64, device=device)  # (Λ,)
    nll = torch.zeros(len(thetas), len(lambdas), dtype=torch.float64, device=device)
    keys = data.new_zeros((data.size(0), 0, model.spec.hidden_size), dtype=torch.float32)  # (B, S, H)
    values = data.new_zeros((data.size(0), 0))  # (B, S): the word that followed each cached state
    hidden = None
    was_training = model.training
    model.eval()
    try:
        for k in range(num_windows(data, bptt)):
            x, y = window(data, k, bptt)  # (B, T)
            h, hidden = model.features(x, hidden)
            logp = target_logp(model, h, y)  # (B, T)
            h = h.float()
            S, T = keys.size(1), y.size(1)
            allk, allv = torch.cat([keys, h], 1), torch.cat([values, y], 1)  # (B, S + T, ·)
            # step t sees the cached S steps and the window's own steps before t, at most `size` of them
            pos = torch.arange(S + T, device=device)[None, :] - S  # cache entries at negative positions
            t = torch.arange(T, device=device)[:, None]
            visible = (pos < t) & (pos >= t - size)  # (T, S + T)
            same = allv[:, None, :] == y[:, :, None]  # (B, T, S + T): entry i predicts y_t
            dots = torch.einsum("bth,bsh->bts", h, allk)  # (B, T, S + T)
            log_cache = torch.stack([_log_pointer((th * dots).masked_fill(~visible, -math.inf), same)
                                     for th in thetas])  # (Θ, B, T)
            empty = ~visible.any(-1)  # (T,): the model alone
            mixed = torch.logaddexp(torch.log1p(-lam)[:, None, None, None] + logp[None, None],
                                    torch.log(lam)[:, None, None, None] + log_cache[None])  # (Λ, Θ, B, T)
            mixed = torch.where(empty[None, None, None, :], logp[None, None].expand_as(mixed), mixed)
            nll -= mixed.sum((2, 3)).t()  # (Θ, Λ)
            keys, values = allk[:, -size:], allv[:, -size:]
    finally:
        model.train(was_training)
    return nll, data.size(0) * (data.size(1) - 1)


@torch.no_grad()
def tune(model, ids: np.ndarray | torch.Tensor, batch_size: int, bptt: int, size: int, thetas: list[float],
         lambdas: list[float]) -> dict:
    """The (θ, λ) of the grid with the lowest loss on `ids` (the val split), and that loss."""
    nll, tokens = _nll_grid(model, ids, batch_size, bptt, size, thetas, lambdas)
    i, j = divmod(int(torch.argmin(nll)), nll.size(1))
    return {"theta": thetas[i], "lambda": lambdas[j], "loss": nll[i, j].item() / tokens}


@torch.no_grad()
def score(model, ids: np.ndarray | torch.Tensor, batch_size: int, bptt: int, size: int, theta: float, lam: float,
          chars_per_token: float = 1.0) -> dict:
    """`scoring.summary` of the stream under the cache with (θ, λ)."""
    nll, tokens = _nll_grid(model, ids, batch_size, bptt, size, [theta], [lam])
    return summary(nll.item(), tokens, chars_per_token)
