"""Gradient diagnostics: norms before and after clipping, how often clipping fires, per-group norms,
and the gradient-through-time probe that shows vanishing gradients.

Exploding gradients show as spikes of the pre-clip norm (and, unclipped, as a NaN loss); the fraction
of steps where clipping fired says how much the clip threshold is doing. Vanishing gradients show in
the probe: for a fixed validation window x_1..x_T, back-propagate only the loss at the last position,
L_T, and measure ||dL_T/dx_t|| (x_t: the input embedding at step t) for every t. For a vanilla RNN the
norm decays roughly geometrically with the distance T - t (the product of Jacobians
prod_k diag(tanh') W_hh shrinks; Bengio et al. 1994, Pascanu et al. 2013); a GRU's update gate keeps
an additive path, so its curve stays much flatter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rnnlab.model import RNNLM, param_groups


def group_norms(model: RNNLM) -> dict[str, torch.Tensor]:
    """L2 norm of the gradient of each parameter group (embedding, layer{l}.input/recurrent, head)."""
    norms = {}
    for group, named in param_groups(model).items():
        grads = [p.grad for _, p in named if p.grad is not None]
        if grads:
            norms[group] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return norms


def total_norm(norms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The global gradient norm (what clip_grad_norm_ compares with the threshold)."""
    return torch.linalg.vector_norm(torch.stack(list(norms.values())))


def max_abs(model: RNNLM) -> torch.Tensor:
    """The largest gradient entry (what value clipping compares with the threshold)."""
    return torch.stack([p.grad.abs().max() for p in model.parameters() if p.grad is not None]).max()


def clip_fires(norm: torch.Tensor, largest: torch.Tensor, clip_val: float | None, algorithm: str) -> torch.Tensor:
    """Whether the Trainer's clipping changes this step's gradient (0-d bool tensor, no host sync)."""
    if not clip_val:
        return torch.zeros((), dtype=torch.bool)
    return (norm if algorithm == "norm" else largest) > clip_val


def gradient_through_time(model: RNNLM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||dL_T/dx_t|| for t = 1..T, averaged over the batch; x, y: (B, T). Returns (T,).

    Starts from the zero state; uses the summed loss so that each row's gradient is its own dL_T/dx_t.
    """
    with torch.enable_grad():
        emb = model.embed(x).detach().requires_grad_(True)  # (B, T, E)
        logits, _ = model.forward_from_embeddings(emb)  # (B, T, V)
        loss_last = F.cross_entropy(logits[:, -1], y[:, -1], reduction="sum")
        (grad,) = torch.autograd.grad(loss_last, emb)  # (B, T, E)
    return grad.norm(dim=-1).mean(dim=0)  # (T,)


def probe_distances(length: int) -> list[int]:
    """Distances T - t logged as metrics: 0, 1, 2, 4, 8, ... below T."""
    return [0] + [2**k for k in range(int(math.log2(max(length - 1, 1))) + 1) if 2**k < length]
