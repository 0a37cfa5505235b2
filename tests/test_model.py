"""RNNLM: shapes for every cell, weight tying, init, hidden-state helpers, parameter groups, and a tiny overfit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import conf_spec
from rnnlab.errors import UserError
from rnnlab.choices import CELLS
from rnnlab.model import RNNLM, detach_hidden, param_groups, reset_hidden_where

V, B, T = 11, 3, 5


def tiny(cell: str, num_layers: int = 1, **kw) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(V, conf_spec("model", cell=cell, embedding_size=8, hidden_size=12, num_layers=num_layers, **kw))


def hidden_tensors(hidden) -> tuple[torch.Tensor, ...]:
    return hidden if isinstance(hidden, tuple) else (hidden,)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", list(CELLS))
def test_forward_shapes(cell, num_layers):
    model = tiny(cell, num_layers, dropout=0.2)
    logits, hidden = model(torch.randint(V, (B, T)))
    assert logits.shape == (B, T, V)
    assert isinstance(hidden, tuple) == (cell == "lstm")
    assert all(h.shape == (num_layers, B, 12) for h in hidden_tensors(hidden))


@pytest.mark.parametrize("cell", list(CELLS))
def test_carried_state_continues_the_sequence(cell):
    """Two windows with the state carried over give the same logits as one long window."""
    model = tiny(cell, num_layers=2).eval()
    x = torch.randint(V, (B, 2 * T))
    whole, _ = model(x)
    first, hidden = model(x[:, :T])
    second, _ = model(x[:, T:], detach_hidden(hidden))
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def test_forward_from_embeddings_gives_input_gradients():
    model = tiny("gru").eval()
    x = torch.randint(V, (B, T))
    emb = model.embed(x).detach().requires_grad_()
    logits, _ = model.forward_from_embeddings(emb)
    torch.testing.assert_close(logits, model(x)[0])
    logits[:, -1].sum().backward()
    assert emb.grad.shape == (B, T, 8) and emb.grad[:, 0].abs().sum() > 0


def test_tie_weights_shares_storage():
    model = RNNLM(V, conf_spec("model", embedding_size=12, hidden_size=12, tie_weights=True))
    assert model.head.weight is model.embedding.weight
    assert model.head.weight.data_ptr() == model.embedding.weight.data_ptr()


def test_tie_weights_size_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="model.tie_weights.*model.embedding_size"):
        conf_spec("model", embedding_size=8, hidden_size=12, tie_weights=True)


@pytest.mark.parametrize("bad", [dict(cell="transformer"), dict(hidden_size=0), dict(num_layers=0),
                                 dict(dropout=1.0), dict(dropout=-0.1)])
def test_bad_spec_is_a_user_error(bad):
    with pytest.raises(UserError):
        conf_spec("model", **bad)


def test_lstm_forget_gate_bias_is_one():
    model = tiny("lstm", num_layers=2)
    h = 12
    for layer in range(2):
        total = getattr(model.rnn, f"bias_ih_l{layer}") + getattr(model.rnn, f"bias_hh_l{layer}")
        assert torch.all(total[h: 2 * h] == 1) and torch.all(total[:h] == 0) and torch.all(total[2 * h:] == 0)


def test_recurrent_weights_are_orthogonal_per_gate():
    model = tiny("gru")
    for gate in model.rnn.weight_hh_l0.detach().chunk(3):
        torch.testing.assert_close(gate @ gate.T, torch.eye(12), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_detach_hidden(cell):
    model = tiny(cell)
    _, hidden = model(torch.randint(V, (B, T)))
    assert all(h.requires_grad for h in hidden_tensors(hidden))
    detached = detach_hidden(hidden)
    assert type(detached) is type(hidden)
    for d, h in zip(hidden_tensors(detached), hidden_tensors(hidden)):
        assert not d.requires_grad and torch.equal(d, h)
    assert detach_hidden(None) is None


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reset_hidden_where_zeroes_only_masked_rows(cell):
    model = tiny(cell, num_layers=2)
    _, hidden = model(torch.randint(V, (B, T)))
    mask = torch.tensor([True, False, True])
    reset = reset_hidden_where(hidden, mask)
    assert type(reset) is type(hidden)
    for r, h in zip(hidden_tensors(reset), hidden_tensors(hidden)):
        assert torch.all(r[:, mask] == 0)
        assert torch.equal(r[:, ~mask], h[:, ~mask])
    assert reset_hidden_where(None, mask) is None


@pytest.mark.parametrize("tie", [False, True])
def test_param_groups_cover_every_parameter_once(tie):
    model = RNNLM(V, conf_spec("model", cell="lstm", embedding_size=12, hidden_size=12, num_layers=2, tie_weights=tie))
    groups = param_groups(model)
    assert list(groups) == ["embedding", "layer0.input", "layer0.recurrent",
                            "layer1.input", "layer1.recurrent", "head"]
    grouped = [p for members in groups.values() for _, p in members]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert [n for n, _ in groups["layer1.recurrent"]] == ["rnn.weight_hh_l1", "rnn.bias_hh_l1"]
    assert [n for n, _ in groups["head"]] == (["head.bias"] if tie else ["head.weight", "head.bias"])


@pytest.fixture
def one_thread():
    """Tiny ops run faster on one thread than on OpenMP threads fighting over 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gru_overfits_a_repeating_sequence(one_thread):
    torch.manual_seed(0)
    stream = torch.tensor([2, 3, 4] * 10)  # "abcabc…": each next token is determined by the current one
    x, y = stream[:-1].view(1, -1).repeat(2, 1), stream[1:].view(1, -1).repeat(2, 1)  # (2, 29)
    model = RNNLM(5, conf_spec("model", cell="gru", embedding_size=16, hidden_size=32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 5), y.reshape(-1))
        if loss.item() < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"loss {loss.item():.3f} after {step + 1} steps"


def test_reset_at_eos_restarts_each_line_from_the_zero_state():
    torch.manual_seed(0)
    model = RNNLM(6, conf_spec("model", cell="gru", embedding_size=4, hidden_size=5, reset_at_eos=True)).eval()
    stream = torch.tensor([[0, 2, 3, 0, 4, 5, 2]])  # two lines, each starting with <eos> (id 0)
    with torch.no_grad():
        logits, _ = model(stream, hidden=torch.randn(1, 1, 5))  # the carried state is dropped at <eos>
        first, _ = model(stream[:, :3])
        second, _ = model(stream[:, 3:])
    assert torch.allclose(logits, torch.cat([first, second], dim=1), atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_reset_at_eos_in_training_is_the_same_in_both_recurrences(cell):
    """Training with gradients: rnnlab.recurrence resets inside its loop (one call per window), the torch
    cell cuts the window at each <eos>; same outputs, same gradients."""
    kw = dict(cell=cell, embedding_size=4, hidden_size=5, num_layers=2, reset_at_eos=True, dropout=0.0)
    models = []
    for impl in ("rnnlab", "torch"):
        torch.manual_seed(0)
        models.append(RNNLM(6, conf_spec("model", impl=impl, **kw)).train())
    stream = torch.tensor([[0, 2, 3, 0, 4, 5, 2], [3, 0, 1, 1, 2, 0, 0]])
    hidden = torch.randn(2, 2, 5)
    outs = [m(stream, hidden=hidden)[0] for m in models]
    assert models[0].hand_written_bptt(models[0].embed(stream))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for out in outs:
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


# --- the adaptive head, tying, dropout variants, init (issue 13) -------------------------------------------


def test_adaptive_head_with_degenerate_cutoffs_is_the_full_softmax():
    """cutoffs=[V-1]: the head scores V-1 words and one cluster holding the last word alone, so the adaptive
    distribution is a full softmax whose last logit is the cluster's; with the same weights both give the
    same exact NLL, through the model's own scoring path."""
    from rnnlab.scoring import score_stream

    adaptive = tiny("gru", head="adaptive", cutoffs=[V - 1])
    full = tiny("gru")
    full.embedding.load_state_dict(adaptive.embedding.state_dict())
    full.rnn.load_state_dict(adaptive.rnn.state_dict())
    with torch.no_grad():
        full.head.weight.copy_(adaptive.head.head.weight)  # (V, H): V-1 words, then the cluster
        full.head.bias.zero_()
    ids = torch.randint(V, (400,), generator=torch.Generator().manual_seed(1))
    a, f = score_stream(adaptive, ids, 4, 7), score_stream(full, ids, 4, 7)
    assert a["tokens"] == f["tokens"] and a["nll"] == pytest.approx(f["nll"], rel=1e-6)
    h, _ = adaptive.features(ids[None, :-1])
    torch.testing.assert_close(adaptive.scores(h), F.log_softmax(full.scores(h), -1), rtol=1e-5, atol=1e-6)


def test_adaptive_scores_are_the_normalised_distribution_its_loss_uses():
    model = RNNLM(50, conf_spec("model", embedding_size=8, hidden_size=16, head="adaptive", cutoffs=[5, 20]))
    x, y = torch.randint(50, (B, T)), torch.randint(50, (B, T))
    h, _ = model.features(x)
    logp = model.scores(h)  # (B, T, V) log-probabilities over the whole vocabulary
    torch.testing.assert_close(logp.logsumexp(-1), torch.zeros(B, T), atol=1e-5, rtol=0)
    exact = -logp.gather(-1, y[..., None]).sum()
    torch.testing.assert_close(model.nll(h, y, "sum"), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.nll(h, y), exact / y.numel(), rtol=1e-5, atol=1e-5)
    model.nll(h, y).backward()
    assert "head" in param_groups(model) and all(p.grad is not None for _, p in param_groups(model)["head"])


@pytest.mark.parametrize("cutoffs", [None, [], [5, 5], [0, 5], [20, 5], [5, V]])
def test_bad_cutoffs_are_one_line_errors(cutoffs):
    with pytest.raises(UserError, match="model.cutoffs"):
        RNNLM(V, conf_spec("model", head="adaptive", cutoffs=cutoffs))


def test_tying_needs_the_full_head():
    with pytest.raises(UserError, match="tie_weights=true needs model.head=full"):
        conf_spec("model", head="adaptive", cutoffs=[5], tie_weights=True, embedding_size=8, hidden_size=8)


def test_variational_dropout_keeps_one_mask_per_sequence():
    model = tiny("gru", dropout=0.5, variational=True).train()
    out = model.dropout(torch.ones(B, 40, 12), 0.5)  # (B, T, D)
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same at every step
    assert {0.0, 2.0} == set(out.unique().tolist())
    standard = tiny("gru", dropout=0.5).train().dropout(torch.ones(B, 40, 12), 0.5)
    assert not torch.equal(standard, standard[:, :1].expand_as(standard))


def test_embedding_dropout_drops_whole_words():
    model = tiny("gru", embedding_dropout=0.5).train()
    tokens = torch.arange(V).repeat(2, 1)  # every word twice
    emb = model.embed(tokens)
    dropped = (emb == 0).all(-1)  # (2, V)
    assert torch.equal(dropped[0], dropped[1]) and 0 < dropped[0].sum() < V
    assert torch.equal(model.eval().embed(tokens), model.embedding(tokens))


def test_uniform_init_puts_every_parameter_in_range():
    model = tiny("lstm", 2, init="uniform", init_range=0.05)
    assert all(p.abs().max() <= 0.05 and p.abs().max() > 0.04 for p in model.parameters())
    torch_init = tiny("lstm", init="torch")
    assert torch_init.rnn.bias_hh_l0.abs().max() > 0  # PyTorch's default, not rnnlab's zero bias
    assert tiny("lstm").rnn.bias_hh_l0.abs().max() == 0
