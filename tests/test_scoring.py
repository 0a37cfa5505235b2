"""Scoring: perplexity and bits per token/char of a stream, and statistics of samples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.errors import UserError
from rnnlab.sampling import Sample, sample_stats
from rnnlab.scoring import batchify, perplexity, score_stream, summary

V = 13


class Scored(nn.Module):
    """The project's model interface: forward = scores(features), nll from the features."""

    def forward(self, tokens, hidden=None):
        h, hidden = self.features(tokens, hidden)
        return self.scores(h), hidden

    def nll(self, h, y, reduction="mean"):
        logits = self.scores(h)
        return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction=reduction)


class UniformLM(Scored):
    """Equal logits for every token: the model that knows nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # a device to run on

    def features(self, tokens, hidden=None):
        b, t = tokens.shape
        return torch.zeros(b, t, V), torch.zeros(1, b, 1)  # (B, T, V), a dummy hidden state

    def scores(self, h):
        return h


class TinyLM(Scored):
    """Embedding + GRU or LSTM + Linear with the project's interface."""

    def __init__(self, cell: type[nn.RNNBase] = nn.GRU) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.emb = nn.Embedding(V, 8)
            self.rnn = cell(8, 16, batch_first=True)
            self.head = nn.Linear(16, V)
        self.modes: list[bool] = []

    def features(self, tokens, hidden=None):
        self.modes.append(self.training)
        return self.rnn(self.emb(tokens), hidden)  # (B, T, H)

    def scores(self, h):
        return self.head(h)  # (B, T, V)


def stream(n: int = 103) -> torch.Tensor:
    return torch.arange(n) * 7 % V  # (N,)


def test_uniform_model_has_perplexity_v_and_log2_v_bits():
    ids = stream()
    out = score_stream(UniformLM(), ids, batch_size=4, bptt=5)
    assert out["tokens"] == 4 * (103 // 4 - 1)
    assert out["loss"] == pytest.approx(math.log(V))
    assert out["ppl"] == pytest.approx(V)
    assert out["bits_per_token"] == pytest.approx(math.log2(V))
    assert out["bpc"] == pytest.approx(math.log2(V))  # one character per token
    assert out["nll"] == pytest.approx(out["tokens"] * math.log(V))


def test_bpc_divides_by_the_characters_per_token():
    ids = stream(100)
    out = score_stream(UniformLM(), ids, batch_size=4, bptt=5, chars_per_token=2.5)
    assert out["bpc"] == pytest.approx(math.log2(V) / 2.5)
    assert score_stream(UniformLM(), ids, 4, 5, chars_per_token=1.0)["bpc"] == pytest.approx(math.log2(V))


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_hidden_state_is_carried_across_windows(cell):
    model, ids = TinyLM(cell), stream()
    rows = batchify(ids, 3)  # (3, 34)
    with torch.no_grad():
        logits, _ = model(rows[:, :-1])  # each row in one go
        expected = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
    for bptt in (1, 4, 33, 100):
        assert score_stream(model, ids, 3, bptt)["nll"] == pytest.approx(expected, rel=1e-5)


def test_eval_mode_while_evaluating_and_mode_restored():
    model = TinyLM()
    model.train()
    score_stream(model, stream(), 2, 8)
    assert model.training and not any(model.modes)


def test_too_short_a_stream_is_a_user_error():
    with pytest.raises(UserError, match="evaluate.batch_size"):
        score_stream(UniformLM(), stream(7), batch_size=4, bptt=5)


def test_conversions_and_the_meaning_of_an_overflowing_perplexity():
    assert perplexity(math.log(5)) == pytest.approx(5)
    assert perplexity(709.0) == pytest.approx(math.exp(709.0))  # still a double
    assert perplexity(710.0) == math.inf  # exp overflows a double: inf, by definition
    out = summary(nll=8 * math.log(2), tokens=4, chars_per_token=2.0)  # 2 bits a token, 2 characters a token
    assert out["loss"] == pytest.approx(2 * math.log(2)) and out["bits_per_token"] == pytest.approx(2)
    assert out["bpc"] == pytest.approx(1) and out["ppl"] == pytest.approx(4)


def test_sample_stats():
    samples = [
        Sample("abab", [2, 3, 2, 3], 4, "eos", 1),  # bigrams (2,3) (3,2) (2,3)
        Sample("ac", [2, 4], 2, "max_length", 0),  # bigram (2,4)
        Sample("", [], 0, "eos", 2),
    ]
    stats = sample_stats(samples, [True, False, True])
    assert stats["mean_length"] == pytest.approx(2)
    assert stats["eos_stop_rate"] == pytest.approx(2 / 3)
    assert stats["distinct_1"] == pytest.approx(3 / 6)  # {2, 3, 4} of 6 tokens
    assert stats["distinct_2"] == pytest.approx(3 / 4)  # {(2,3), (3,2), (2,4)} of 4 bigrams
    assert stats["novelty_rate"] == pytest.approx(2 / 3)
    assert stats["unk_rejection_rate"] == pytest.approx(3 / 8)  # 6 tokens + 2 stopping <eos> drawn
