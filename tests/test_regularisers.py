"""AWD-LSTM's additions, checked against hand computations on tiny inputs: weight drop (DropConnect on
the recurrent weights), AR/TAR, and NT-ASGD's averaging and trigger; then through a real training, that
a run with all of them resumes exactly and saves the averaged weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import conf_spec
from rnnlab import averaging
from rnnlab.errors import UserError
from rnnlab.model import RNNLM, activation_penalty

V = 11


def tiny(cell: str = "lstm", **kw) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(V, conf_spec("model", cell=cell, embedding_size=6, hidden_size=6, num_layers=2, **kw))


# --- weight drop -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_weight_drop_off_or_in_evaluation_changes_nothing(cell):
    x = torch.randint(0, V, (3, 7))
    plain, dropped = tiny(cell, impl="torch"), tiny(cell, impl="torch", weight_drop=0.5)
    for a, b in ((plain.eval(), dropped.eval()),):
        assert torch.equal(a(x)[0], b(x)[0])  # evaluation and sampling: never dropped
    zero = tiny(cell, impl="torch", weight_drop=0.0).train()
    torch.manual_seed(1)
    out_zero = zero(x)[0]
    torch.manual_seed(1)
    assert torch.equal(out_zero, plain.train()(x)[0])  # off: the same function, the same random draws


def test_weight_drop_is_dropconnect_on_every_recurrent_weight_with_one_mask_per_call():
    x = torch.randint(0, V, (3, 7))
    model = tiny(weight_drop=0.4).train()
    torch.manual_seed(5)
    out, _ = model(x)
    # By hand: the same draws (one F.dropout per weight_hh, in parameter order), weights swapped in a copy
    hand = tiny(weight_drop=0.0).train()
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in range(2):
            w = getattr(hand.rnn, f"weight_hh_l{layer}")
            w.copy_(F.dropout(w, 0.4, True))
    assert torch.allclose(out, hand(x)[0], atol=1e-6)
    # The gradient reaches the kept weights only, scaled by 1 / (1 - p); the dropped ones get none
    torch.manual_seed(5)
    masks = [F.dropout(torch.ones_like(getattr(model.rnn, f"weight_hh_l{k}")), 0.4, True) for k in range(2)]
    model.zero_grad()
    torch.manual_seed(5)
    model(x)[0].sum().backward()
    for k, mask in enumerate(masks):
        grad = getattr(model.rnn, f"weight_hh_l{k}").grad
        assert torch.all(grad[mask == 0] == 0) and grad[mask > 0].abs().sum() > 0
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in hand.named_parameters()]  # same names


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_weight_drop_in_the_hand_written_recurrence_is_the_torch_cells(cell):
    """impl=auto runs RNN/GRU weight drop in rnnlab.recurrence, with the torch path's draws and result."""
    x = torch.randint(0, V, (3, 7))
    kw = dict(weight_drop=0.5, dropout=0.0, input_dropout=0.0, embedding_dropout=0.0)
    ours, torch_cell = tiny(cell, impl="rnnlab", **kw).train(), tiny(cell, impl="torch", **kw).train()
    assert ours.hand_written_bptt(ours.embed(x)) and not torch_cell.hand_written_bptt(torch_cell.embed(x))
    torch.manual_seed(5)
    got = ours(x)[0]
    torch.manual_seed(5)
    expected = torch_cell(x)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    expected.sum().backward()
    for (name, a), b in zip(ours.named_parameters(), torch_cell.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


# --- AR / TAR ----------------------------------------------------------------------------------------------


def test_activation_penalty_by_hand():
    dropped = torch.tensor([[[1.0, -2.0], [0.0, 3.0]]])  # (B=1, T=2, H=2)
    raw = torch.tensor([[[1.0, 1.0], [2.0, -1.0]]])
    ar = (1 + 4 + 0 + 9) / 4  # mean of squares
    tar = ((2 - 1) ** 2 + (-1 - 1) ** 2) / 2  # mean over the one step's differences
    assert activation_penalty(dropped, raw, 2.0, 0.0).item() == pytest.approx(2 * ar)
    assert activation_penalty(dropped, raw, 0.0, 1.0).item() == pytest.approx(tar)
    assert activation_penalty(dropped, raw, 2.0, 1.0).item() == pytest.approx(2 * ar + tar)
    assert activation_penalty(dropped, raw, 0.0, 0.0).item() == 0.0
    assert activation_penalty(dropped[:, :1], raw[:, :1], 0.0, 1.0).item() == 0.0  # one step: no difference


def test_raw_outputs_are_the_core_before_the_output_dropout():
    x = torch.randint(0, V, (3, 7))
    model = tiny(dropout=0.5, variational=True).train()
    torch.manual_seed(2)
    h, _, raw = model.features_with_raw(x)
    assert not torch.equal(h, raw)
    kept = h != 0
    assert torch.allclose(h[kept], raw[kept] / 0.5)  # inverted dropout of the very same outputs
    model.eval()
    h, _, raw = model.features_with_raw(x)
    assert torch.equal(h, raw)


# --- NT-ASGD ---------------------------------------------------------------------------------------------


def test_the_non_monotone_trigger_is_awd_lstms():
    """awd-lstm-lm main.py: switch when len(best_val_loss) > nonmono and val_loss > min(best_val_loss[:-nonmono]),
    checked before the loss is appended."""
    avg = averaging.Average(torch.nn.Linear(1, 1), nonmono=2)
    losses = [5.0, 4.0, 3.0, 3.5, 2.9, 3.1]
    started = [avg.observe(v) for v in losses]
    # 3.5: earlier [5, 4, 3], best before the last 2 = min([5]) = 5: no. 2.9: min([5, 4]) = 4: no.
    # 3.1: min([5, 4, 3]) = 3 < 3.1: start.
    assert started == [False, False, False, False, False, True]
    assert avg.active and avg.observe(100.0) is False  # starts once


def test_the_average_is_the_mean_of_the_iterates_after_the_trigger_and_validation_swaps_it_in():
    lin = torch.nn.Linear(2, 1, bias=False)
    avg = averaging.Average(lin, nonmono=1)
    iterates = [[1.0, 2.0], [3.0, 0.0], [2.0, 4.0], [6.0, 2.0]]
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([iterates[0]]))
    avg.step()  # before the trigger: nothing
    assert avg.count == 0
    assert [avg.observe(v) for v in (1.0, 0.5, 2.0)] == [False, False, True]  # 2.0 > min([1.0]): start
    for w in iterates[1:]:
        with torch.no_grad():
            lin.weight.copy_(torch.tensor([w]))
        avg.step()
    mean = torch.tensor([[(3 + 2 + 6) / 3, (0 + 4 + 2) / 3]])
    assert avg.count == 3 and torch.allclose(avg.mean["weight"], mean)
    with avg.swapped():
        assert torch.allclose(lin.weight, mean)
    assert torch.equal(lin.weight, torch.tensor([[6.0, 2.0]]))  # the SGD iterate back for training
    # a checkpoint holds both; `weights` gives the averaged ones
    ckpt = {"state_dict": {"model.weight": lin.weight.detach().clone()}, "rnnlab": {"average": avg.state_dict()}}
    assert torch.allclose(averaging.weights(ckpt)["model.weight"], mean)
    fresh = averaging.Average(lin, nonmono=1)
    fresh.load_state_dict(avg.state_dict())
    assert fresh.count == 3 and torch.equal(fresh.mean["weight"], avg.mean["weight"])


def test_tied_weights_are_averaged_once_under_both_names():
    model = tiny(tie_weights=True)
    avg = averaging.Average(model, nonmono=0)
    avg.observe(1.0), avg.observe(2.0)
    for step in range(3):
        with torch.no_grad():
            model.embedding.weight.add_(1.0)
        avg.step()
    assert avg.mean["embedding.weight"] is avg.mean["head.weight"]
    with avg.swapped():
        assert model.head.weight is model.embedding.weight
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "rnnlab": {"average": avg.state_dict()}}
    state = averaging.weights(ckpt)
    assert torch.equal(state["model.head.weight"], state["model.embedding.weight"])


def test_no_average_before_the_trigger_or_before_a_step():
    lin = torch.nn.Linear(1, 1)
    ckpt = {"state_dict": {"model.weight": lin.weight}, "rnnlab": {"average": None}}
    assert averaging.weights(ckpt)["model.weight"] is lin.weight
    avg = averaging.Average(lin, nonmono=0)
    avg.observe(1.0), avg.observe(2.0)
    ckpt["rnnlab"]["average"] = avg.state_dict()  # triggered at the last validation, no step since
    assert averaging.weights(ckpt)["model.weight"] is lin.weight
    assert averaging.weights({"state_dict": {"w": lin.weight}})["w"] is lin.weight  # older checkpoints


@pytest.mark.parametrize("key, value, message", [
    ("ar", -1.0, "optim.ar=-1.0 must be at least 0"),
    ("tar", float("nan"), "optim.tar=nan: expected a finite number"),
    ("nonmono", -1, "optim.nonmono=-1 must be at least 0"),
])
def test_bad_values_are_one_line(key, value, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        conf_spec("optim", **{key: value})


# --- random window lengths ------------------------------------------------------------------------------


def test_random_lengths_follow_awd_lstm_and_cover_the_stream_once():
    import numpy as np

    from rnnlab.data import StreamWindows, random_lengths

    lengths = random_lengths(10_000, 35, seed=3)
    assert sum(lengths) == 10_000 and lengths == random_lengths(10_000, 35, seed=3) != random_lengths(10_000, 35, 4)
    assert all(5 <= t <= 75 for t in lengths[:-1])
    rng, hand = np.random.default_rng(3), []  # awd-lstm-lm: bptt or bptt/2, then max(5, int(N(., 5)))
    for _ in range(20):
        mean = 35 if rng.random() < 0.95 else 17.5
        hand.append(min(max(5, int(rng.normal(mean, 5))), 75))
    assert lengths[:20] == hand
    short = sum(t < 26 for t in lengths) / len(lengths)
    assert 0.02 < short < 0.09  # the 5 % drawn around bptt / 2

    ids = np.arange(4 * 101)
    windows = StreamWindows(ids, batch_size=4, bptt=8, random_seed=7)
    xs, ys = zip(*(windows[k] for k in range(len(windows))))
    assert len({x.size(1) for x in xs}) > 1  # lengths vary
    assert torch.equal(torch.cat(xs, 1), windows.data[:, :-1]) and torch.equal(torch.cat(ys, 1), windows.data[:, 1:])
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_the_lr_is_scaled_to_the_window_for_that_step_only():
    from rnnlab.lit import LitLM

    lit = LitLM(V, "h", conf_spec("model", cell="gru", embedding_size=4, hidden_size=4), conf_spec("optim"), lr_bptt=10)
    opt = torch.optim.SGD(lit.parameters(), lr=2.0)
    x = torch.randint(0, V, (2, 5))
    lit.on_train_batch_start((x, x), 0)
    before = [p.detach().clone() for p in lit.parameters()]

    def closure():
        opt.zero_grad()
        loss = lit.model.nll(lit.model.features(x)[0], x)
        loss.backward()
        return loss

    lit.optimizer_step(0, 0, opt, closure)
    for p, b in zip(lit.parameters(), before):
        if p.grad is not None:
            assert torch.allclose(p.detach(), b - 2.0 * 5 / 10 * p.grad)  # lr x 5 / 10
    assert opt.param_groups[0]["lr"] == 2.0  # the schedule's lr is untouched


# --- through a real training -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_with_every_addition_resumes_exactly_and_saves_the_averaged_weights(vocab_dir, tmp_path, monkeypatch):
    from test_faults import Crash
    from test_training import run_training, tiny_job

    from rnnlab import trained_model, vocab

    real_observe = averaging.Average.observe

    def start_at_once(self, loss):  # the trigger at the first validation (step 10), for a 30-step run
        started = real_observe(self, loss)
        if not self.active:
            self.mean = {}
            return True
        return started

    monkeypatch.setattr(averaging.Average, "observe", start_at_once)

    def job(where):
        j = tiny_job(vocab_dir, tmp_path / where)
        j.model = conf_spec("model", cell="lstm", embedding_size=8, hidden_size=8, num_layers=2, weight_drop=0.3,
                            dropout=0.2, variational=True, tie_weights=True)
        j.optim = dataclasses.replace(j.optim, algorithm="sgd", lr=1.0, ar=2.0, tar=1.0, nonmono=5, schedule="none")
        j.data = dataclasses.replace(j.data, variable_bptt=True)
        return j

    whole = run_training(job("whole"))
    crashed = job("resumed")
    crashed.extra_callbacks = [Crash(15)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(crashed)
    resumed = run_training(job("resumed"))
    assert resumed["val_loss"] == whole["val_loss"] and resumed["step"] == whole["step"] == 30

    out = tmp_path / "whole" / "train"
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["rnnlab"]["average"]["count"] > 0
    voc = vocab.VocabDir(vocab_dir).vocab()
    model, _ = trained_model.load(out / "model", voc)
    saved = model.state_dict()
    averaged = {k.removeprefix("model."): v for k, v in averaging.weights(best).items()}
    raw = {k.removeprefix("model."): v for k, v in best["state_dict"].items()}
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)  # model.pt: the averaged weights
    assert not all(torch.equal(saved[k], raw[k]) for k in saved)  # not the SGD iterate
    resumed_model, _ = trained_model.load(tmp_path / "resumed" / "train" / "model", voc)
    assert all(torch.equal(saved[k], v) for k, v in resumed_model.state_dict().items())
