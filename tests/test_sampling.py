"""Sampling: the lecture's procedure (start at <eos>, feed back, stop at <eos>) and its controls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import conf_spec
from rnnlab import vocab as vocab_mod
from rnnlab.errors import UserError
from rnnlab.sampling import Sample, novelty, sample
from rnnlab.vocab import EOS_ID, UNK_ID

LINES = "hello\nworld\nhold\nhell\nlow\n"


@pytest.fixture
def vocab():
    return vocab_mod.build(LINES, conf_spec("vocab", level="char"), line_corpus=True)


class TinyLM(nn.Module):
    """Embedding + GRU + Linear with the project's interface; records input shapes and the mode."""

    def __init__(self, vocab_size: int, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.emb = nn.Embedding(vocab_size, 8)
            self.rnn = nn.GRU(8, 16, batch_first=True)
            self.head = nn.Linear(16, vocab_size)
        self.scale = scale
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    def forward(self, tokens, hidden=None):
        self.calls.append((tuple(tokens.shape), self.training))
        out, hidden = self.rnn(self.emb(tokens), hidden)  # (B, T, H)
        return self.head(out) * self.scale, hidden  # (B, T, V)


class FixedLM(nn.Module):
    """The same logits at every step, whatever the input; an (h, c) tuple as hidden state."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)  # (V,)

    def forward(self, tokens, hidden=None):
        b, t = tokens.shape
        if hidden is None:
            hidden = (torch.zeros(1, b, 1), torch.zeros(1, b, 1))
        return self.logits.expand(b, t, -1), hidden  # (B, T, V)


def favouring(vocab, token_id: int, margin: float = 10.0) -> FixedLM:
    logits = torch.zeros(len(vocab))
    logits[token_id] = margin
    return FixedLM(logits)


def texts(samples: list[Sample]) -> list[str]:
    return [s.text for s in samples]


def test_tiny_temperature_equals_greedy(vocab):
    model = TinyLM(len(vocab), scale=10.0)
    cold = sample(model, vocab, conf_spec("sample", num_samples=3, max_length=40, temperature=1e-4, seed=3))
    greedy = sample(model, vocab, conf_spec("sample", num_samples=3, max_length=40, greedy=True))
    assert len(greedy) == 1  # argmax decoding is deterministic: one sample, not three copies
    assert texts(cold) == texts(greedy) * 3


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 1e-12])
def test_a_temperature_so_small_that_the_softmax_overflows_is_argmax(vocab, temperature):
    """logits / T overflows to inf (NaN in the softmax) below about 1e-37: the limit T → 0 is argmax, not
    the last token of the vocabulary drawn from a NaN distribution ('zzzz')."""
    model = TinyLM(len(vocab), scale=10.0)
    cold = sample(model, vocab, conf_spec("sample", num_samples=2, max_length=40, temperature=temperature, seed=3))
    greedy = sample(model, vocab, conf_spec("sample", num_samples=2, max_length=40, greedy=True))
    assert texts(cold) == texts(greedy) * 2
    for top in ({"top_k": 3}, {"top_p": 0.5}):  # the filters see finite logits too
        filtered = sample(model, vocab, conf_spec("sample", num_samples=2, max_length=40, temperature=temperature,
                                                  seed=3, **top))
        assert texts(filtered) == texts(greedy) * 2


def test_top_k_1_equals_greedy(vocab):
    model = TinyLM(len(vocab), scale=3.0)
    top1 = sample(model, vocab, conf_spec("sample", num_samples=3, max_length=40, top_k=1, seed=7))
    greedy = sample(model, vocab, conf_spec("sample", num_samples=3, max_length=40, greedy=True))
    assert texts(top1) == texts(greedy) * 3


def test_seed_decides_the_samples_and_the_global_rng_is_untouched(vocab):
    model = TinyLM(len(vocab))
    spec = conf_spec("sample", num_samples=4, max_length=30, seed=1)
    state = torch.get_rng_state()
    first, again = sample(model, vocab, spec), sample(model, vocab, spec)
    assert torch.equal(state, torch.get_rng_state())
    other = sample(model, vocab, conf_spec("sample", num_samples=4, max_length=30, seed=2))
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)


def test_top_p_keeps_the_nucleus(vocab):
    logits = torch.full((len(vocab),), -5.0)
    a, b = vocab.index["h"], vocab.index["e"]
    logits[a], logits[b] = 3.0, 2.0  # p(a) ≈ 0.7, p(b) ≈ 0.26, the rest ≈ 0.04 in all
    samples = sample(FixedLM(logits), vocab, conf_spec("sample", num_samples=8, max_length=50, top_p=0.9))
    drawn = {i for s in samples for i in s.ids}
    assert drawn == {a, b}


def test_unk_reject_never_emits_unk_and_counts_rejections(vocab):
    model = favouring(vocab, UNK_ID, margin=3.0)
    spec = dict(num_samples=4, max_length=20, seed=0)
    rejecting = sample(model, vocab, conf_spec("sample", **spec, unk="reject"))
    assert all(UNK_ID not in s.ids and "<unk>" not in s.text for s in rejecting)
    assert all(s.unk_rejections > 0 for s in rejecting)
    allowing = sample(model, vocab, conf_spec("sample", **spec, unk="allow"))
    assert any(UNK_ID in s.ids for s in allowing)
    assert all(s.unk_rejections == 0 for s in allowing)


def test_unk_reject_with_greedy_takes_the_next_best(vocab):
    logits = torch.zeros(len(vocab))
    logits[UNK_ID], logits[vocab.index["w"]] = 9.0, 5.0
    (s,) = sample(FixedLM(logits), vocab, conf_spec("sample", num_samples=1, max_length=5, greedy=True, unk="reject"))
    assert s.text == "wwwww" and s.unk_rejections == 5


def test_the_start_token_is_what_precedes_a_sequence_in_training(vocab):
    from rnnlab.sampling import start_id

    assert start_id(vocab) == EOS_ID  # a line corpus: every line follows an <eos>
    running = vocab_mod.build("ab\ncd\n", conf_spec("vocab", level="char"), line_corpus=False)
    assert start_id(running) == running.index["\n"]  # running text: samples start where lines start
    words = vocab_mod.build("a b\nc d\n", conf_spec("vocab", level="word"), line_corpus=False)
    assert start_id(words) == EOS_ID


def test_stops_at_eos_which_is_not_in_the_text(vocab):
    samples = sample(favouring(vocab, EOS_ID, margin=50.0), vocab, conf_spec("sample", num_samples=3, max_length=10))
    assert [(s.text, s.ids, s.length, s.stopped) for s in samples] == [("", [], 0, "eos")] * 3


def test_stops_at_max_length(vocab):
    spec = conf_spec("sample", num_samples=3, max_length=7, unk="reject")
    samples = sample(favouring(vocab, EOS_ID, margin=-50.0), vocab, spec)
    assert all(s.length == len(s.ids) == len(s.text) == 7 and s.stopped == "max_length" for s in samples)


def test_one_batch_and_constant_work_per_token_after_the_prime(vocab):
    model = TinyLM(len(vocab), scale=0.1)
    samples = sample(model, vocab, conf_spec("sample", num_samples=4, max_length=12, prime="hel"))
    shapes = [shape for shape, _ in model.calls]
    assert shapes[0] == (4, 1 + 3)  # x<1> = <eos>, then the prime, once, for the whole batch
    assert set(shapes[1:]) == {(4, 1)}
    steps = max(s.length + (s.stopped == "eos") for s in samples)
    assert len(shapes) == steps  # one call per drawn token but the last; the loop ends when all rows stop


def test_prime_is_continued_not_repeated(vocab):
    spec = conf_spec("sample", num_samples=4, max_length=12, prime="hel", unk="reject")
    for s in sample(TinyLM(len(vocab), scale=0.1), vocab, spec):
        assert s.text == "hel" + vocab.decode(s.ids) and len(s.text) == 3 + s.length
    (s,) = sample(favouring(vocab, EOS_ID, margin=50.0), vocab, conf_spec("sample", num_samples=1, prime="hel"))
    assert (s.text, s.ids) == ("hel", [])


def test_word_level_prime_continues_its_line():
    words = vocab_mod.build("the cat sat\nthe dog ran\n", conf_spec("vocab", level="word"), line_corpus=False)
    logits = torch.zeros(len(words))
    logits[words.index["ran"]] = 50.0
    model = FixedLM(logits)
    (s,) = sample(model, words, conf_spec("sample", num_samples=1, max_length=2, prime="the cat"))
    assert s.text == "the cat ran ran"
    logits[EOS_ID] = 100.0
    (s,) = sample(model, words, conf_spec("sample", num_samples=1, max_length=2, prime="the cat"))
    assert s.text == "the cat" and s.stopped == "eos"


def test_eval_mode_while_sampling_and_mode_restored(vocab):
    model = TinyLM(len(vocab))
    model.train()
    sample(model, vocab, conf_spec("sample", num_samples=2, max_length=5))
    assert model.training
    assert not any(training for _, training in model.calls)


def test_prime_with_unknown_characters(vocab):
    spec = conf_spec("sample", num_samples=1, max_length=3, prime="hЖюЖ", unk="reject")
    message = r"sample.prime has characters not in the vocabulary: 'Ж', 'ю'; .*sample.unk=allow"
    with pytest.raises(UserError, match=message):
        sample(TinyLM(len(vocab)), vocab, spec)
    model = favouring(vocab, EOS_ID, margin=50.0)
    (s,) = sample(model, vocab, conf_spec("sample", num_samples=1, max_length=3, prime="hЖ", unk="allow"))
    assert s.text == "h<unk>"


@pytest.mark.parametrize("kwargs, key", [
    ({"temperature": 0.0}, "sample.temperature"),
    ({"temperature": -1.0}, "sample.temperature"),
    ({"top_p": 0.0}, "sample.top_p"),
    ({"top_p": 1.5}, "sample.top_p"),
    ({"top_k": 0}, "sample.top_k"),
    ({"max_length": 0}, "sample.max_length"),
    ({"num_samples": 0}, "sample.num_samples"),
    ({"unk": "drop"}, "sample.unk"),
])
def test_bad_specs(kwargs, key):
    with pytest.raises(UserError, match=key):
        conf_spec("sample", **kwargs)


def test_good_edges_are_accepted():
    conf_spec("sample", top_p=1.0, top_k=1, max_length=1, num_samples=1, temperature=1e-6, unk="reject")


def made(text: str) -> Sample:
    return Sample(text, [], 0, "eos", 0)


def test_novelty_of_lines():
    train = "hello\nworld\n"
    assert novelty([made("hello"), made("helo"), made("hello world")], train, "char", True) == [False, True, True]
    assert novelty([made("Hello , world"), made("Hello world")], "Hello, world\n", "word", True) == [False, True]


def test_novelty_of_running_text_chars():
    train = "the quick brown fox jumps over the lazy dog\n"
    cases = {"quick brown fox": False, "quick brown cow": True, "fox": False, "zzz": True, "": False,
             "lazy dog\n": False}
    assert novelty([made(t) for t in cases], train, "char", False) == list(cases.values())


def test_novelty_of_running_text_words():
    train = "the quick brown fox jumps over the lazy dog.\nand then it slept.\n"
    cases = {
        "quick brown fox jumps over the lazy dog": False,  # exactly 8 words, all in train
        "over the lazy dog .\nand then it slept": False,  # across a line break, spacing of the decoder
        "the quick brown fox jumps over the lazy cat": True,
        "lazy dog": False,
        "lazy cat": True,
        "": False,
    }
    assert novelty([made(t) for t in cases], train, "word", False) == list(cases.values())


def test_pick_samples_from_the_softmax():
    from rnnlab.sampling import pick

    logits = torch.log(torch.tensor([[0.5, 0.0, 0.3, 0.2]])).repeat(20000, 1)  # token 1 has probability 0
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(pick(logits, False, gen), minlength=4).float() / 20000
    assert counts[1] == 0
    assert torch.allclose(counts, torch.tensor([0.5, 0.0, 0.3, 0.2]), atol=0.015)


# --- the recorded trace (the step-by-step picture's data) -------------------------------------------------


@pytest.mark.parametrize("settings", [
    {"unk": "reject", "temperature": 1.3}, {"top_k": 3, "unk": "allow"}, {"top_p": 0.8, "temperature": 0.7},
    {"greedy": True, "unk": "reject"}, {"prime": "he"},
])
def test_recording_changes_no_sample_and_its_tokens_are_the_first_samples(vocab, settings):
    """The trace only reads: same samples with and without it; its drawn tokens are the first sample's."""
    from rnnlab.sampling import Trace

    spec = conf_spec("sample", num_samples=4, max_length=30, seed=3, **settings)
    plain = sample(TinyLM(len(vocab), scale=4.0), vocab, spec)
    trace = Trace(max_steps=12)
    traced = sample(TinyLM(len(vocab), scale=4.0), vocab, spec, trace)
    assert [(s.text, s.ids, s.unk_rejections) for s in traced] == [(s.text, s.ids, s.unk_rejections) for s in plain]
    first = traced[0]
    drawn = [s.drawn_id for s in trace.steps]
    assert drawn == (first.ids + [EOS_ID] * (first.stopped == "eos"))[:12]
    assert trace.stopped == first.stopped
    assert [s.input_id for s in trace.steps] == [trace.start_ids[-1]] + drawn[:-1]  # each draw is fed back
    assert trace.start_ids[1:] == [vocab.index[c] for c in spec.prime]


def test_trace_marks_rejected_unk_and_shows_the_distribution_drawn_from(vocab):
    from rnnlab.sampling import Trace

    logits = torch.full((len(vocab),), -2.0)
    logits[UNK_ID], logits[vocab.index["w"]] = 2.0, 1.0
    trace = Trace(max_steps=40, top=3)
    (s,) = sample(FixedLM(logits), vocab, conf_spec("sample", num_samples=1, max_length=40, seed=0), trace)
    assert sum(step.rejected for step in trace.steps) == s.unk_rejections > 0
    assert all(step.first_id == UNK_ID and step.drawn_id != UNK_ID for step in trace.steps if step.rejected)
    assert all(step.first_id == step.drawn_id for step in trace.steps if not step.rejected)
    probs = (logits / 0.8).double().softmax(-1)  # the default temperature, 0.8
    step = trace.steps[0]
    assert step.top_ids[:2] == [UNK_ID, vocab.index["w"]]
    assert step.top_probs == pytest.approx(probs.topk(3).values.tolist())
    assert step.entropy == pytest.approx(float(-(probs * probs.log2()).sum()))
    assert len(trace.steps) == 40 and trace.stopped == "max_length"


def test_trace_stops_recording_at_the_first_samples_eos(vocab):
    from rnnlab.sampling import Trace

    trace = Trace(max_steps=10)
    samples = sample(favouring(vocab, EOS_ID), vocab, conf_spec("sample", num_samples=2, max_length=5), trace)
    assert [s.drawn_id for s in trace.steps] == [EOS_ID] and trace.stopped == "eos" == samples[0].stopped
    assert trace.to_json(vocab)["steps"][0]["drawn"] == "<eos>"
