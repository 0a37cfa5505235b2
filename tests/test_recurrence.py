"""The hand-written BPTT layers give nn.GRU's / nn.RNN's outputs and gradients, and RNNLM uses them to train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import conf_spec
from rnnlab import recurrence
from rnnlab.model import RNNLM

B, T, E, H = 3, 17, 5, 7


def gradients(module: nn.RNNBase, x: torch.Tensor, h0: torch.Tensor | None, fn) -> tuple[torch.Tensor, ...]:
    """Outputs and the gradients of a random linear function of (outputs, last state) w.r.t. everything."""
    torch.manual_seed(1)
    out, last = fn(x, h0)
    # randn(shape), not randn_like: the latter fills in memory order, so a transposed view would get other weights
    loss = (out * torch.randn(out.shape, dtype=out.dtype)).sum() + (last * torch.randn(last.shape, dtype=last.dtype)).sum()
    inputs = [x, *([h0] if h0 is not None else []), *module.parameters()]
    return (out.detach(), last.detach(), *torch.autograd.grad(loss, inputs))


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN])
def test_matches_the_pytorch_module(cls, num_layers, with_state):
    torch.manual_seed(0)
    module = cls(E, H, num_layers, batch_first=True).double()
    for p in module.parameters():  # non-zero biases everywhere, so every bias path is exercised
        nn.init.uniform_(p, -0.5, 0.5)
    x = torch.randn(B, T, E, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(num_layers, B, H, dtype=torch.float64, requires_grad=True) if with_state else None
    assert recurrence.supports(module, x)
    expected = gradients(module, x, h0, module)
    got = gradients(module, x, h0, lambda x, h: recurrence.run(module, x, h))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def cut_at_starts(module: nn.RNNBase, starts: torch.Tensor):
    """The reference for `starts`: the module itself, one call per piece between resets, each row's state
    zeroed where its piece starts with a reset (RNNLM's path for the torch cells)."""

    def fn(x, h0):
        cuts = [0] + [t for t in starts.any(0).nonzero().flatten().tolist() if t > 0] + [x.shape[1]]
        hidden = h0 if h0 is not None else x.new_zeros(module.num_layers, x.shape[0], module.hidden_size)
        outs = []
        for a, b in zip(cuts, cuts[1:]):
            out, hidden = module(x[:, a:b], hidden.masked_fill(starts[None, :, a, None], 0.0))
            outs.append(out)
        return torch.cat(outs, 1), hidden

    return fn


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN])
def test_resets_inside_the_loop_match_cutting_the_window(cls, num_layers):
    torch.manual_seed(0)
    module = cls(E, H, num_layers, batch_first=True).double()
    for p in module.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    x = torch.randn(B, T, E, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(num_layers, B, H, dtype=torch.float64, requires_grad=True)
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[0, [0, 4, 5]] = True  # a reset at the first step (h0 is dropped for that row) and two in a row
    starts[1, [9, 16]] = True  # one at the last step
    starts[2, 3] = True
    expected = gradients(module, x, h0, cut_at_starts(module, starts))
    got = gradients(module, x, h0, lambda x, h: recurrence.run(module, x, h, starts))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert got[3][:, 0].abs().sum() == 0 and got[3][:, 1].abs().sum() > 0  # no gradient reaches a reset h0 row
    no_resets = gradients(module, x, h0, lambda x, h: recurrence.run(module, x, h, torch.zeros_like(starts)))
    for g, e in zip(no_resets, gradients(module, x, h0, module)):  # an all-false mask: the plain layer
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN])
def test_weight_drop_is_the_module_run_with_the_same_dropped_weights(cls):
    torch.manual_seed(0)
    module = cls(E, H, 2, batch_first=True).double()
    x = torch.randn(B, T, E, dtype=torch.float64)
    torch.manual_seed(3)
    got = recurrence.run(module, x, None, weight_drop=0.5)[0]
    torch.manual_seed(3)  # the same draws: one F.dropout per W_hh, in layer order, before the first layer
    dropped = {f"weight_hh_l{l}": nn.functional.dropout(getattr(module, f"weight_hh_l{l}"), 0.5, True)
               for l in range(2)}
    expected = torch.func.functional_call(module, dropped, (x,))[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, module(x)[0])


def test_supports_only_what_it_computes():
    x = torch.randn(B, T, E)
    assert not recurrence.supports(nn.LSTM(E, H, batch_first=True), x)
    assert not recurrence.supports(nn.RNN(E, H, batch_first=True, nonlinearity="relu"), x)
    assert not recurrence.supports(nn.GRU(E, H), x)  # time-major module
    with torch.no_grad():  # sampling and evaluation use the module itself
        assert not recurrence.supports(nn.GRU(E, H, batch_first=True), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # precision=bf16-mixed too
        assert not recurrence.supports(nn.GRU(E, H, batch_first=True), x)


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    module = nn.GRU(E, H, 2, batch_first=True, dropout=0.5)
    x = torch.randn(B, T, E)
    module.eval()
    torch.testing.assert_close(recurrence.run(module, x, None)[0], module(x)[0])
    module.train()
    assert not torch.allclose(recurrence.run(module, x, None)[0], module(x)[0])


def test_rnnlm_trains_through_it_and_samples_through_the_module():
    """The training path (gradients on) and the sampling path (no_grad) give the same logits."""
    torch.manual_seed(0)
    model = RNNLM(13, conf_spec("model", cell="gru", embedding_size=6, hidden_size=10, num_layers=2)).eval()
    tokens = torch.randint(13, (2, 9))
    logits, hidden = model(tokens)
    assert logits.grad_fn is not None
    with torch.no_grad():
        ref_logits, ref_hidden = model(tokens)
    torch.testing.assert_close(logits.detach(), ref_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.detach(), ref_hidden, rtol=1e-5, atol=1e-6)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.rnn.parameters())


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_model_impl_rnnlab_and_torch_give_the_same_loss_and_gradients(cell):
    """model.impl: the hand-written BPTT (rnnlab) and nn.GRU/nn.RNN (torch) are the same function."""
    torch.manual_seed(0)
    x, y = torch.randint(0, 13, (3, 9)), torch.randint(0, 13, (3, 9))
    results = {}
    for impl in ("torch", "rnnlab", "auto"):
        torch.manual_seed(1)
        model = RNNLM(13, conf_spec("model", cell=cell, embedding_size=6, hidden_size=10, num_layers=2, impl=impl))
        h, _ = model.features(x)
        loss = model.nll(h, y)
        loss.backward()
        results[impl] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
        used = model.hand_written_bptt(model.embed(x))
        assert used == (impl != "torch")  # auto: the hand-written BPTT on the CPU with gradients on
    for impl in ("rnnlab", "auto"):
        assert torch.allclose(results[impl][0], results["torch"][0], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(results[impl][1], results["torch"][1]))


def test_model_impl_rnnlab_refuses_what_it_cannot_run():
    from rnnlab.errors import UserError

    with pytest.raises(UserError, match="model.impl=rnnlab runs RNN and GRU cells only"):
        conf_spec("model", cell="lstm", impl="rnnlab")
    model = RNNLM(13, conf_spec("model", cell="gru", embedding_size=6, hidden_size=10, impl="rnnlab"))
    with pytest.raises(UserError, match="model.impl=rnnlab needs a tanh RNN or GRU in fp32 on the CPU"):
        model.hand_written_bptt(model.embed(torch.randint(0, 13, (2, 4))).half())  # fp16: not supported
