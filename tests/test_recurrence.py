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
    loss = (out * torch.randn_like(out)).sum() + (last * torch.randn_like(last)).sum()
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
