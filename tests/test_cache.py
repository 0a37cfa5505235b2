"""The continuous cache (rnnlab.cache) against a per-token computation written from the paper's formulas,
and through the evaluate stage."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import conf_spec, tiny_params
from rnnlab import cache, scoring
from rnnlab.errors import UserError
from rnnlab.model import RNNLM

V = 9


def model(cell: str = "lstm", **kw) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(V, conf_spec("model", cell=cell, embedding_size=6, hidden_size=5, num_layers=2, **kw)).eval()


def by_hand(m: RNNLM, ids: torch.Tensor, batch_size: int, size: int, theta: float, lam: float) -> float:
    """Summed NLL, one target at a time: each row's states from one call over the whole row, then
    p = (1 - λ) p_model + λ Σ_{i: y_i = y_t} softmax_i(θ h_t·h_i) over the row's previous `size` steps."""
    rows = scoring.batchify(ids, batch_size)
    total = 0.0
    with torch.no_grad():
        for row in rows:
            x, y = row[None, :-1], row[None, 1:]
            h, _ = m.features(x)
            p_model = torch.softmax(m.scores(h), -1)[0].double()  # (T, V)
            h = h[0].double()
            for t in range(y.size(1)):
                p = p_model[t, y[0, t]].item()
                past = range(max(0, t - size), t)
                if past:
                    w = torch.softmax(theta * torch.stack([h[t] @ h[i] for i in past]), 0)
                    p_cache = sum(w[k].item() for k, i in enumerate(past) if y[0, i] == y[0, t])
                    p = (1 - lam) * p + lam * p_cache
                total -= math.log(p)
    return total


@pytest.mark.parametrize("head", ["full", "adaptive"])
def test_the_cache_is_the_papers_formula_across_windows_and_streams(head):
    m = model(head=head, **({"cutoffs": [4]} if head == "adaptive" else {}))
    ids = torch.randint(V, (2 * 41,), generator=torch.Generator().manual_seed(3))
    for size, theta, lam in ((6, 0.7, 0.3), (100, 0.0, 0.5), (1, 2.0, 0.6)):  # 100: the whole row so far
        got = cache.score(m, ids, batch_size=2, bptt=7, size=size, theta=theta, lam=lam)  # 6 windows per row
        assert got["tokens"] == 80
        assert got["nll"] == pytest.approx(by_hand(m, ids, 2, size, theta, lam), rel=1e-6)  # float32 states and weights


def test_lambda_zero_is_the_model_alone():
    m = model("gru")
    ids = torch.randint(V, (300,), generator=torch.Generator().manual_seed(4))
    plain = scoring.score_stream(m, ids, 3, 11)
    assert cache.score(m, ids, 3, 11, 50, 0.5, 0.0)["loss"] == pytest.approx(plain["loss"], rel=1e-6)


def test_tune_picks_the_grid_point_with_the_lowest_loss_and_a_repeating_stream_rewards_the_cache():
    m = model()
    phrase = torch.randint(V, (13,), generator=torch.Generator().manual_seed(5))
    ids = phrase.repeat(20)  # an untrained model cannot predict it; a pointer into the past can
    thetas, lambdas = [0.0, 1.0, 5.0], [0.0, 0.4, 0.9]
    best = cache.tune(m, ids, 2, 10, 40, thetas, lambdas)
    every = {(th, la): cache.score(m, ids, 2, 10, 40, th, la)["loss"] for th in thetas for la in lambdas}
    assert min(every, key=every.get) == (best["theta"], best["lambda"])
    assert best["loss"] == pytest.approx(min(every.values()), rel=1e-12)
    assert best["lambda"] == 0.9 and every[(best["theta"], 0.9)] < 0.9 * every[(0.0, 0.0)]  # the cache helps


@pytest.mark.slow  # trains (Lightning)
def test_the_evaluate_stage_reports_the_cache_beside_the_models_own_numbers(tmp_path, fresh_mlflow_db, monkeypatch):
    from conftest import REPO
    from rnnlab.stages import evaluate, prepare, sample, train, vocab

    monkeypatch.chdir(REPO)
    params = tiny_params(tmp_path, "trainer.max_steps=10", "trainer.val_check_interval=10", "evaluate.batch_size=2",
                         "evaluate.bptt=16", "evaluate.cache_size=30", "evaluate.cache_theta=[0.5,1.0]",
                         "evaluate.cache_lambda=[0.1,0.2]")
    for stage in (prepare, vocab, train, sample):
        stage.run(params)
    result = evaluate.run(params)
    written = json.loads((tmp_path / "data" / "eval" / "metrics.json").read_text())
    plain = evaluate.run(tiny_params(tmp_path, "trainer.max_steps=10", "trainer.val_check_interval=10",
                                     "evaluate.batch_size=2", "evaluate.bptt=16"))
    assert result["test"] == plain["test"] and "cache" not in plain  # the model's own numbers are unchanged
    got = result["cache"]
    assert got["size"] == 30 and got["theta"] in (0.5, 1.0) and got["lambda"] in (0.1, 0.2)
    assert got["test_ppl"] == pytest.approx(math.exp(got["test_loss"]), rel=1e-5)
    assert written["cache"] == got


def test_bad_cache_settings_are_one_line():
    with pytest.raises(UserError, match=r"^evaluate.cache_lambda=\[1.5\]: give one or more numbers from 0 to 1"):
        conf_spec("evaluate", cache_lambda=[1.5])
    with pytest.raises(UserError, match=r"^evaluate.cache_theta=\[\]: give one or more numbers >= 0"):
        conf_spec("evaluate", cache_theta=[])
    with pytest.raises(UserError, match=r"^evaluate.cache_size=-1 must be at least 0"):
        conf_spec("evaluate", cache_size=-1)
