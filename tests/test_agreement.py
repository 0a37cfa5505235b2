"""The agreement corpus (seeded, bounded distances, verb agrees, no number cue in the filler) and its probe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import conf_spec
from rnnlab import agreement, agreement_probe, plots
from rnnlab.agreement import generate
from rnnlab.agreement_probe import markdown_table, probe
from rnnlab.errors import UserError
from rnnlab.model import RNNLM
from rnnlab.vocab import build

PLURALS = set(agreement.NOUNS.values())
# Words that would reveal (or agree with) a number if they sat in the filler.
NUMBER_WORDS = {"a", "an", "one", "it", "its", "itself", "they", "their", "them", "themselves", "this", "these",
                "that", "those", "is", "are", "was", "were", "has", "have", "does", "do"}


def parse(line: str) -> tuple[str, list[str], str]:
    """`the <noun> , which <filler> , <verb> <adj> .` -> (noun, filler, verb)."""
    toks = line.split()
    assert toks[:1] + toks[2:4] == ["the", ",", "which"] and toks[-4] == "," and toks[-1] == ".", line
    return toks[1], toks[4:-4], toks[-3]


def word_vocab(text: str):
    return build(text, conf_spec("vocab", level="word", min_freq=1), line_corpus=True)


@pytest.fixture(scope="module")
def corpus() -> str:
    return generate(conf_spec("corpus.generator", n_sentences=2000, min_distance=3, max_distance=12, seed=5))


def test_generation_is_seeded(corpus):
    spec = conf_spec("corpus.generator", n_sentences=2000, min_distance=3, max_distance=12, seed=5)
    assert generate(spec) == corpus
    assert generate(conf_spec("corpus.generator", n_sentences=2000, min_distance=3, max_distance=12, seed=6)) != corpus


def test_distances_within_bounds_and_verb_agrees(corpus):
    lines = corpus.splitlines()
    assert len(lines) == 2000 and corpus.endswith("\n")
    parsed = [parse(line) for line in lines]
    distances = {len(filler) for _, filler, _ in parsed}
    assert distances == set(range(3, 13))  # every distance in [3, 12] occurs, none outside
    for noun, _, verb in parsed:
        assert noun in agreement.NOUNS or noun in PLURALS
        assert verb == ("were" if noun in PLURALS else "was")
    n_plural = sum(noun in PLURALS for noun, _, _ in parsed)
    assert 800 < n_plural < 1200


def test_filler_has_no_number_cue(corpus):
    fillers = {False: set(), True: set()}
    for noun, filler, _ in map(parse, corpus.splitlines()):
        fillers[noun in PLURALS].update(filler)
    assert fillers[False] == fillers[True] == set(agreement.FILLER)  # same words whatever the number
    cues = set(agreement.NOUNS) | PLURALS | set(agreement.VERBS.values()) | NUMBER_WORDS
    assert not cues & set(agreement.FILLER)


def test_distance_zero_and_spec_errors():
    (line,) = generate(conf_spec("corpus.generator", n_sentences=1, min_distance=0, max_distance=0)).splitlines()
    assert parse(line)[1] == []
    with pytest.raises(UserError, match="corpus.generator.max_distance=2 must be at least"):
        conf_spec("corpus.generator", min_distance=5, max_distance=2)
    with pytest.raises(UserError, match="corpus.generator.n_sentences=0"):
        conf_spec("corpus.generator", n_sentences=0)
    with pytest.raises(UserError, match="corpus.generator.min_distance=-1"):
        conf_spec("corpus.generator", min_distance=-1)


def test_untrained_model_gives_valid_chance_rows(corpus):
    vocab = word_vocab(corpus)
    torch.manual_seed(0)
    model = RNNLM(len(vocab), conf_spec("model", cell="gru", embedding_size=8, hidden_size=16))
    model.train()
    rows = probe(model, vocab, distances=[0, 5, 20], per_distance=100)
    assert [r["distance"] for r in rows] == [0, 5, 20] and all(r["n"] == 100 for r in rows)
    assert all(0.3 <= r["accuracy"] <= 0.7 for r in rows), rows
    assert model.training  # the mode is restored
    assert probe(model, vocab, distances=[20], per_distance=100) == rows[2:]  # a row is its own seed


class Oracle(nn.Module):
    """Same interface as RNNLM; scores "were" above "was" iff the subject (input position 2) is plural."""

    def __init__(self, vocab) -> None:
        super().__init__()
        self.vocab_size = len(vocab)
        self.was, self.were = vocab.index["was"], vocab.index["were"]
        self.plural_ids = torch.tensor([vocab.index[w] for w in PLURALS if w in vocab.index])

    def forward(self, tokens, hidden=None):
        b, t = tokens.shape
        logits = torch.zeros(b, t, self.vocab_size)  # (B, T, V)
        plural = torch.isin(tokens[:, 2], self.plural_ids)  # (B,)
        logits[:, -1, self.were] = plural.float()
        logits[:, -1, self.was] = (~plural).float()
        return logits, hidden


def test_oracle_scores_everything(corpus):
    vocab = word_vocab(corpus)
    rows = probe(Oracle(vocab), vocab, distances=[0, 7, 60], per_distance=50)
    assert [r["accuracy"] for r in rows] == [1.0, 1.0, 1.0]


def test_vocabulary_without_verbs_is_a_user_error():
    vocab = build("the cat sat on the mat\n", conf_spec("vocab", level="word"), line_corpus=True)
    with pytest.raises(UserError, match="lacks was and were.*corpus=agreement"):
        probe(RNNLM(len(vocab), conf_spec("model", embedding_size=4, hidden_size=4)), vocab, distances=[1])
    char_vocab = build("the cat was full\n", conf_spec("vocab", level="char"), line_corpus=True)
    with pytest.raises(UserError, match="lacks"):
        agreement_probe.verb_ids(char_vocab)


def test_table_and_plot(tmp_path):
    curves = {"rnn": [{"distance": 0, "accuracy": 1.0, "n": 10}, {"distance": 30, "accuracy": 0.5, "n": 10}],
              "gru": [{"distance": 30, "accuracy": 0.98, "n": 10}]}
    table = markdown_table(curves).splitlines()
    assert table[0] == "| distance | rnn | gru |"
    assert table[2:] == ["| 0 | 100 % | – |", "| 30 | 50 % | 98 % |"]
    plots.agreement(curves, tmp_path / "plots" / "agreement.png")
    assert (tmp_path / "plots" / "agreement.png").read_bytes()[:4] == b"\x89PNG"
