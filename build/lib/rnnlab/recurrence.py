"""Backpropagation through time, written out: whole-sequence GRU and vanilla RNN layers for CPU training.

`nn.GRU` / `nn.RNN` on CPU record every operation of every time step as its own autograd node; their
backward walks that graph node by node and computes the weight gradient in one small matmul per step.
Here each layer is one `autograd.Function` whose backward is the textbook BPTT loop:

    forward, t = 1..T:  h_t = cell(x_t, h_{t-1})            keeps h_t and the gate values
    backward, t = T..1: δ_t = ∂L/∂(pre-activations at t)     from dh_t, the gates and h_{t-1}
                        dh_{t-1} = δ_t W_hh (+ direct paths) + ∂L/∂h_{t-1} from the output
    then once:          dW_hh = Σ_t δ_tᵀ h_{t-1}              one (3H × T·B) @ (T·B × H) matmul

Only the recurrent matmul and a few element-wise ops stay inside the loops; the input projection, its
gradients and dW_hh are single large matmuls. The maths is PyTorch's own (same gate order and biases,
`n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`), the parameters are the `nn.GRU` / `nn.RNN` module's
own, so checkpoints are unchanged; `tests/test_recurrence.py` checks outputs and gradients against the module.
`RNNLM` uses it when gradients are on and the tensors are on the CPU; sampling, evaluation and GPUs use
the module itself. LSTM keeps `nn.LSTM` (oneDNN).

Two training-time options act inside the loops, so a window is still one call per layer:
 * `starts` (B, T), line corpora's `model.reset_at_eos`: where a row's input at step t is <eos>, that row's
   state entering step t is zeroed (h_{t-1} · keep_t, keep_t = 0 or 1), and so is the gradient flowing back
   through it; the outputs keep the unmasked h_{t-1}. Without it a window would be cut at every <eos>.
 * `weight_drop`: DropConnect on every layer's W_hh (AWD-LSTM's weight drop), one mask per call, drawn for
   all layers first in parameter order, as `RNNLM.recurrent` draws them for the torch cell.

Shapes are time-major inside: x (T, B, E), outputs (T, B, H), states (B, H), keep (T, B, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

aten = torch.ops.aten


class GRUSequence(torch.autograd.Function):
    """xp (T, B, 3H) = x W_ihᵀ + b_ih + [b_hr, b_hz, 0]; h0 (B, H); w_hh (3H, H); b_hn (H); keep (T, B, 1) or None."""

    @staticmethod
    def forward(ctx, xp, h0, w_hh, b_hn, keep=None):
        T, B, H3 = xp.shape
        H = H3 // 3
        hs = xp.new_empty(T + 1, B, H)  # h_0 .. h_T
        gates = xp.new_empty(T, B, H3)  # r, z, n after their nonlinearities
        gh = xp.new_empty(T, B, H3)  # h_{t-1} W_hhᵀ, plus b_hn on the n block
        bias = torch.cat([b_hn.new_zeros(2 * H), b_hn])
        prev = None if keep is None else xp.new_empty(T, B, H)  # h_{t-1} · keep_t, the state step t sees
        hs[0] = h0
        w_t = w_hh.t()
        for t in range(T):
            h, x, g = hs[t] if keep is None else torch.mul(hs[t], keep[t], out=prev[t]), xp[t], gates[t]
            torch.addmm(bias, h, w_t, out=gh[t])
            rz = g[:, : 2 * H]
            torch.add(x[:, : 2 * H], gh[t, :, : 2 * H], out=rz).sigmoid_()
            n = g[:, 2 * H :]
            torch.addcmul(x[:, 2 * H :], g[:, :H], gh[t, :, 2 * H :], out=n).tanh_()
            torch.lerp(n, h, g[:, H : 2 * H], out=hs[t + 1])  # h_t = (1 - z) n + z h_{t-1}
        ctx.save_for_backward(hs, gates, gh, w_hh, prev, keep)
        return hs[1:], hs[T]

    @staticmethod
    def backward(ctx, d_out, d_last):
        hs, gates, gh, w_hh, prev, keep = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        d_out = torch.zeros_like(hs[1:]) if d_out is None else d_out
        delta = torch.empty_like(gates)  # ∂L/∂ pre-activations of r, z; ∂L/∂(W_hn h + b_hn) for n
        delta_n = torch.empty_like(hs[1:])  # ∂L/∂ pre-activation of n
        tmp = torch.empty_like(hs[0])
        dh = d_out[T - 1] if d_last is None else d_out[T - 1] + d_last
        for t in range(T - 1, -1, -1):
            g, h, d, dn = gates[t], hs[t] if keep is None else prev[t], delta[t], delta_n[t]
            r, z, n = g[:, :H], g[:, H : 2 * H], g[:, 2 * H :]
            torch.addcmul(dh, dh, z, value=-1, out=tmp)  # dh (1 - z)
            aten.tanh_backward.grad_input(tmp, n, grad_input=dn)  # · (1 - n²)
            torch.sub(h, n, out=tmp).mul_(dh)  # dh (h_{t-1} - n)
            aten.sigmoid_backward.grad_input(tmp, z, grad_input=d[:, H : 2 * H])  # · z (1 - z)
            torch.mul(dn, gh[t, :, 2 * H :], out=tmp)
            aten.sigmoid_backward.grad_input(tmp, r, grad_input=d[:, :H])
            torch.mul(dn, r, out=d[:, 2 * H :])
            if keep is None:
                dh_prev = torch.addcmul(d_out[t - 1], dh, z) if t > 0 else dh * z  # direct path through z
                dh = dh_prev.addmm_(d, w_hh)  # and through W_hh
            else:  # both paths pass through the reset; the output's own gradient does not
                dh = (dh * z).addmm_(d, w_hh).mul_(keep[t])
                dh = dh.add_(d_out[t - 1]) if t > 0 else dh
        d_w_hh = delta.view(T * B, 3 * H).t() @ (hs[:-1] if keep is None else prev).reshape(T * B, H)
        d_b_hn = delta[:, :, 2 * H :].sum((0, 1))
        d_xp = delta  # r and z: the same; n: its own pre-activation gradient
        d_xp[:, :, 2 * H :] = delta_n
        return d_xp, dh, d_w_hh, d_b_hn, None


class RNNSequence(torch.autograd.Function):
    """Elman RNN with tanh. xp (T, B, H) = x W_ihᵀ + b_ih + b_hh; h0 (B, H); w_hh (H, H); keep (T, B, 1) or None."""

    @staticmethod
    def forward(ctx, xp, h0, w_hh, keep=None):
        T, B, H = xp.shape
        hs = xp.new_empty(T + 1, B, H)
        prev = None if keep is None else xp.new_empty(T, B, H)
        hs[0] = h0
        w_t = w_hh.t()
        for t in range(T):
            h = hs[t] if keep is None else torch.mul(hs[t], keep[t], out=prev[t])
            torch.addmm(xp[t], h, w_t, out=hs[t + 1]).tanh_()
        ctx.save_for_backward(hs, w_hh, prev, keep)
        return hs[1:], hs[T]

    @staticmethod
    def backward(ctx, d_out, d_last):
        hs, w_hh, prev, keep = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        d_out = torch.zeros_like(hs[1:]) if d_out is None else d_out
        delta = torch.empty_like(hs[1:])  # ∂L/∂ pre-activation
        dh = d_out[T - 1] if d_last is None else d_out[T - 1] + d_last
        for t in range(T - 1, -1, -1):
            aten.tanh_backward.grad_input(dh, hs[t + 1], grad_input=delta[t])
            if keep is None:
                dh = torch.addmm(d_out[t - 1], delta[t], w_hh) if t > 0 else delta[t] @ w_hh
            else:
                dh = (delta[t] @ w_hh).mul_(keep[t])
                dh = dh.add_(d_out[t - 1]) if t > 0 else dh
        d_w_hh = delta.view(T * B, H).t() @ (hs[:-1] if keep is None else prev).reshape(T * B, H)
        return delta, dh, d_w_hh, None


def layer(cell: str, x: torch.Tensor, h0: torch.Tensor, w_ih, w_hh, b_ih, b_hh, keep=None):
    """One layer over a whole sequence: x (T, B, E), h0 (B, H) -> outputs (T, B, H), last state (B, H);
    keep (T, B, 1): 0 where a row's state is reset before that step."""
    H = w_hh.shape[1]
    if cell == "gru":
        # b_hr and b_hz only ever add to the input projection; b_hn sits inside r · (W_hn h + b_hn).
        bias = b_ih + torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)])
        xp = torch.addmm(bias, x.reshape(-1, x.shape[-1]), w_ih.t()).view(x.shape[0], x.shape[1], 3 * H)
        return GRUSequence.apply(xp, h0, w_hh, b_hh[2 * H :], keep)
    xp = torch.addmm(b_ih + b_hh, x.reshape(-1, x.shape[-1]), w_ih.t()).view(x.shape[0], x.shape[1], H)
    return RNNSequence.apply(xp, h0, w_hh, keep)


def supports(module: nn.RNNBase, x: torch.Tensor) -> bool:
    """Whether `run` handles this module and input: GRU or tanh RNN, batch-first, CPU, gradients on, fp32."""
    if not torch.is_grad_enabled() or x.device.type != "cpu":  # sampling, evaluation, GPUs: the module
        return False
    return (
        (isinstance(module, nn.GRU) or (isinstance(module, nn.RNN) and module.nonlinearity == "tanh"))
        and module.batch_first
        and module.bias
        and not module.bidirectional
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")  # precision=bf16-mixed: the module's own autocast rules
    )


def run(module: nn.RNNBase, x: torch.Tensor, hidden: torch.Tensor | None, starts: torch.Tensor | None = None,
        weight_drop: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Same call and result as `module(x, hidden)` for a batch-first GRU/RNN: x (B, T, E) -> (B, T, H), (L, B, H).
    `starts` (B, T) bool: reset the rows' state before those steps; `weight_drop`: DropConnect on W_hh."""
    cell = "gru" if isinstance(module, nn.GRU) else "rnn"
    B = x.shape[0]
    if hidden is None:
        hidden = x.new_zeros(module.num_layers, B, module.hidden_size)
    keep = None if starts is None else (~starts).t().to(x.dtype).unsqueeze(-1)  # (T, B, 1)
    w_hh = [getattr(module, f"weight_hh_l{l}") for l in range(module.num_layers)]
    if weight_drop > 0:
        w_hh = [F.dropout(w, weight_drop, True) for w in w_hh]
    out, last = x.transpose(0, 1).contiguous(), []
    for l in range(module.num_layers):
        if l > 0 and module.dropout > 0:
            out = F.dropout(out, module.dropout, module.training)
        weights = [getattr(module, f"weight_ih_l{l}"), w_hh[l], getattr(module, f"bias_ih_l{l}"),
                   getattr(module, f"bias_hh_l{l}")]
        out, h = layer(cell, out, hidden[l], *weights, keep)
        last.append(h)
    return out.transpose(0, 1), torch.stack(last)
