"""Sampling novel sequences from a trained language model: the lecture's procedure with modern controls.

The lecture's steps ("sampling novel sequences"):
  1. start with a zero hidden state a<0> and a zero input x<1>. Here x<1> is the token that precedes a
     sequence in training, so that the model knows what to do with it: `<eos>` for line corpora and word
     models (every line ends with it), and for a character model of running text, which never sees
     `<eos>`, the newline, so that samples start where lines start rather than mid-word (`start_id`);
  2. run one step and draw the next token from the softmax output ŷ<1> (`np.random.choice` in the
     lecture; here inverse-CDF sampling, the distribution of `torch.multinomial` at a lower cost);
  3. feed the drawn token back as the next input x<2> = ŷ<1>, carrying the hidden state, and repeat;
  4. stop when `<eos>` is drawn, or after a fixed number of tokens.

Modern controls act on the logits of step 2, in this order: divide by the `temperature` (below 1
sharper, above 1 flatter); keep the `top_k` most likely tokens; keep the nucleus, the smallest set of
most likely tokens whose probability reaches `top_p` (Holtzman et al., 2020); then draw, or take the
argmax when `greedy` (deterministic: one sample, whatever `num_samples` says). A `prime` is run
through the model once, after x<1>, to set the hidden state, and generation continues from it.
`unk: reject` never emits `<unk>`: a row that draws it redraws with `<unk>` excluded, and the
rejections are counted.

All samples are generated as one batch (B = num_samples). After the start input (and prime), each
step feeds one token per row (T = 1) with the carried hidden state, so the work per token is constant;
the prefix is never re-run. Randomness comes from a local `torch.Generator` seeded with `seed`: the
same seed gives the same text and the global RNG is left alone.

A `Trace` passed to `sample` records the first sample's first steps (the distribution drawn from, the
token drawn and fed back, `<unk>` rejected): the sample stage draws it as sampling_steps.png. It reads
only, so the samples are the same with it or without it.

`novelty` tells which samples are not copies of the training split; `sample_stats` summarises a batch
of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from statistics import fmean

import torch

from rnnlab.errors import UserError
from rnnlab.files import write_json, write_text
from rnnlab.schema import SampleSpec
from rnnlab.vocab import EOS_ID, PATTERNS, UNK_ID, Vocab

NOVELTY_N = 8  # running text: a sample is novel if it has an n-gram of this many tokens absent from train
WORDS = PATTERNS["words"]  # novelty compares words with one tokenizer on both sides


@dataclass
class Sample:
    text: str  # prime + continuation, decoded with the vocabulary
    ids: list[int]  # the generated continuation only: no prime, no final <eos>
    length: int  # len(ids)
    stopped: str  # "eos" | "max_length"
    unk_rejections: int  # times <unk> was drawn and redrawn (unk: reject)


def sample(model: torch.nn.Module, vocab: Vocab, spec: SampleSpec, trace: Trace | None = None) -> list[Sample]:
    """Generate `spec.num_samples` sequences as one batch (see the module docstring); `trace`, if given,
    records the first steps of the first sample."""
    if spec.greedy:
        spec = replace(spec, num_samples=1)  # argmax decoding gives the same text every time
    prime_ids = encode_prime(vocab, spec)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            rows, rejections = generate(model, [start_id(vocab)] + prime_ids, spec, trace)
    finally:
        model.train(was_training)
    return [to_sample(vocab, prime_ids, row, n) for row, n in zip(rows, rejections)]


def start_id(vocab: Vocab) -> int:
    """x<1>: `<eos>`, or the newline for a character model of running text (see the module docstring)."""
    running_chars = vocab.level == "char" and not vocab.newline_is_eos
    return vocab.index["\n"] if running_chars and "\n" in vocab.index else EOS_ID


def encode_prime(vocab: Vocab, spec: SampleSpec) -> list[int]:
    """The prime's ids; unknown tokens are an error under `unk: reject`, `<unk>` otherwise."""
    tokens = vocab.tokenize(spec.prime)
    if vocab.level == "word" and tokens and not spec.prime.endswith("\n"):
        tokens = tokens[:-1]  # tokenize closes every line with <eos>; an unfinished prime line goes on
    unknown = list(dict.fromkeys(tok for tok in tokens if tok not in vocab.index))
    if unknown and spec.unk == "reject":
        kind = "characters" if vocab.level == "char" else "words"
        raise UserError(f"sample.prime has {kind} not in the vocabulary: {', '.join(map(repr, unknown))}; "
                        "remove them or set sample.unk=allow")
    return [vocab.index.get(tok, UNK_ID) for tok in tokens]


def generate(model: torch.nn.Module, start_ids: list[int], spec: SampleSpec,
             trace: Trace | None = None) -> tuple[list[list[int]], list[int]]:
    """Rows of `max_length` ids drawn after `start_ids` (x<1> and the prime), `<eos>` after a row stops,
    and the `<unk>` rejections per row. `trace` records row 0's first steps (see `Trace`)."""
    device = next(model.parameters(), torch.empty(0)).device
    start = torch.tensor(start_ids, device=device).repeat(spec.num_samples, 1)  # (B, 1 + P): x<1>, then the prime
    logits, hidden = model(start, None)  # (B, 1 + P, V); hidden=None is the zero state a<0>
    gen = torch.Generator(device=logits.device).manual_seed(spec.seed)
    out = torch.full((spec.num_samples, spec.max_length), EOS_ID, dtype=torch.long, device=logits.device)
    done = torch.zeros(spec.num_samples, dtype=torch.bool, device=logits.device)  # (B,)
    rejections = torch.zeros(spec.num_samples, dtype=torch.long, device=logits.device)  # (B,)
    if trace is not None:
        trace.begin(start_ids)
    for t in range(spec.max_length):
        if t:
            logits, hidden = model(token[:, None], hidden)  # (B, 1) in: one step per token
        token, rejected = draw(logits[:, -1], spec, gen, trace)  # (B,), (B,)
        token = token.masked_fill(done, EOS_ID)  # a stopped row keeps feeding <eos>; its output is ignored
        rejections += rejected & ~done
        out[:, t] = token
        done |= token == EOS_ID
        if bool(done.all()):
            break
    rows = out.tolist()
    if trace is not None:
        trace.stopped = "eos" if EOS_ID in rows[0] else "max_length"
    return rows, rejections.tolist()


def draw(logits: torch.Tensor, spec: SampleSpec, gen: torch.Generator,
         trace: Trace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from the last step's logits (B, V); also which rows drew (and rejected) `<unk>`.

    A rejecting row redraws with the same filters applied to its logits without `<unk>`, so the redraw
    never comes up empty (with top_k=1 it takes the next best token). `trace` only reads what was drawn
    from: it takes no random numbers and changes no value, so the samples are the same with or without it."""
    kept = filtered(logits, spec)  # (B, V)
    token = pick(kept, spec.greedy, gen)  # (B,)
    rejected = token == UNK_ID if spec.unk == "reject" else torch.zeros_like(token, dtype=torch.bool)
    first = int(token[0]) if trace is not None and trace.recording else None  # row 0's draw, before a redraw
    if bool(rejected.any()):
        without_unk = logits[rejected].index_fill(1, torch.tensor([UNK_ID], device=logits.device), -math.inf)
        token[rejected] = pick(filtered(without_unk, spec), spec.greedy, gen)
    if first is not None:
        trace.record(kept[0], first, int(token[0]), bool(rejected[0]))
    return token, rejected


def filtered(logits: torch.Tensor, spec: SampleSpec) -> torch.Tensor:
    """Temperature, then top-k, then top-p; removed tokens get -inf. (B, V) -> (B, V).

    A temperature so small that logits / T overflows (+inf, NaN in the softmax) is the limit T → 0: the
    logits are shifted to a maximum of 0 first, so the best token keeps probability 1 (argmax); the shift
    is taken only then, so ordinary temperatures draw exactly as before, bit for bit."""
    scaled = logits.float() / spec.temperature
    if not bool(torch.isfinite(scaled.amax(dim=-1)).all()):
        shifted = logits.float() - logits.float().amax(dim=-1, keepdim=True)  # (B, V), max 0 per row
        scaled = (shifted / spec.temperature).nan_to_num(nan=0.0, neginf=-math.inf)
    logits = scaled
    if spec.top_k is not None:
        logits = top_k_filter(logits, spec.top_k)
    if spec.top_p is not None and spec.top_p < 1:
        logits = top_p_filter(logits, spec.top_p)
    return logits


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens until their probability reaches p (the top token always stays)."""
    ranked, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = ranked.softmax(dim=-1)
    ahead = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop = torch.zeros_like(ahead, dtype=torch.bool).scatter(1, order, ahead >= p)  # back to vocabulary order
    return logits.masked_fill(drop, -math.inf)


def pick(logits: torch.Tensor, greedy: bool, gen: torch.Generator) -> torch.Tensor:
    """Sample one token per row from softmax(logits), or take the argmax.

    Inverse-CDF sampling: the same distribution as `torch.multinomial`, which on the CPU costs more than
    the GRU step itself at these sizes (bench/sample_throughput.py). u is drawn in [0, total mass), so a
    token of probability 0 (filtered out, or a rejected `<unk>`) is never chosen."""
    if greedy:
        return logits.argmax(dim=-1)  # (B,)
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    u = torch.rand(cdf.size(0), 1, generator=gen, device=cdf.device) * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.size(1) - 1)  # (B,)


def to_sample(vocab: Vocab, prime_ids: list[int], row: list[int], rejections: int) -> Sample:
    stopped = "eos" if EOS_ID in row else "max_length"
    ids = row[: row.index(EOS_ID)] if stopped == "eos" else row
    return Sample(vocab.decode(prime_ids + ids), ids, len(ids), stopped, rejections)


# --- the procedure, step by step -----------------------------------------------------------------------


@dataclass
class Step:
    """One step of row 0: the token fed in (x<t>), the most likely candidates of the distribution it was
    drawn from (after temperature, top-k and top-p), the token drawn, and `<unk>` drawn first and redrawn."""
    input_id: int
    top_ids: list[int]
    top_probs: list[float]
    first_id: int  # what the first draw gave (`<unk>` when it was rejected)
    drawn_id: int  # the token emitted and fed back as the next input
    drawn_prob: float
    rejected: bool
    entropy: float  # of the distribution drawn from, in bits


@dataclass
class Trace:
    """A recorder for `generate`: the first `max_steps` steps of the first sample (row 0), until it draws
    `<eos>`; `stopped` is that sample's stop reason (also when it runs on past the recorded steps)."""
    max_steps: int = 24
    top: int = 5
    start_ids: list[int] = field(default_factory=list)  # x<1> and the prime
    steps: list[Step] = field(default_factory=list)
    stopped: str | None = None

    @property
    def recording(self) -> bool:
        return len(self.steps) < self.max_steps and not (self.steps and self.steps[-1].drawn_id == EOS_ID)

    def begin(self, start_ids: list[int]) -> None:
        self.start_ids, self.steps, self.stopped = list(start_ids), [], None

    def record(self, kept: torch.Tensor, first: int, drawn: int, rejected: bool) -> None:
        """Row 0's filtered logits (V,) and what was drawn from them. The softmax is computed here, apart
        from the sampler's own, in float64."""
        probs = kept.double().softmax(dim=-1)  # (V,)
        top = probs.topk(min(self.top, probs.numel()))
        logp = probs.clamp_min(1e-300).log2()
        self.steps.append(Step(
            input_id=self.steps[-1].drawn_id if self.steps else self.start_ids[-1],
            top_ids=top.indices.tolist(), top_probs=top.values.tolist(), first_id=first, drawn_id=drawn,
            drawn_prob=float(probs[drawn]), rejected=rejected, entropy=float(-(probs * logp).sum())))

    def tokens(self, vocab: Vocab) -> list[str]:
        """The drawn tokens as text (`<eos>` included when drawn)."""
        return [vocab.tokens[s.drawn_id] for s in self.steps]

    def to_json(self, vocab: Vocab) -> dict:
        """The trace with tokens spelled out (sampling_steps.json, and the picture's data)."""
        name = vocab.tokens.__getitem__
        return {"prime": [name(i) for i in self.start_ids], "stopped": self.stopped, "steps": [
            {"input": name(s.input_id), "top": [[name(i), p] for i, p in zip(s.top_ids, s.top_probs)],
             "first": name(s.first_id), "drawn": name(s.drawn_id), "drawn_prob": s.drawn_prob,
             "rejected": s.rejected, "entropy_bits": s.entropy} for s in self.steps]}


# --- novelty ---------------------------------------------------------------------------------------------


def novelty(samples: list[Sample], train_text: str, level: str, line_corpus: bool) -> list[bool]:
    """Which samples are new: for a line corpus, a line absent from `train_text`; for running text, one
    with at least one `NOVELTY_N`-gram of tokens absent from it (all of a shorter sample; an empty one is
    not new). Pass `train_text` as the vocabulary sees it (lowercased if it lowercases)."""
    if line_corpus:
        seen = {line_key(line, level) for line in train_text.split("\n")}
        return [line_key(s.text, level) not in seen for s in samples]
    if level == "char":
        return [any(gram not in train_text for gram in ngrams(s.text)) for s in samples]
    return novel_word_texts(samples, train_text)


def line_key(line: str, level: str) -> str | tuple[str, ...]:
    """Word samples are decoded with spaces between tokens: compare words, not spacing."""
    return line if level == "char" else tuple(WORDS.findall(line))


def novel_word_texts(samples: list[Sample], train_text: str) -> list[bool]:
    grams = [ngrams(tuple(WORDS.findall(s.text))) for s in samples]
    found = occurring(set().union(*grams), WORDS.findall(train_text))
    return [bool(g - found) for g in grams]


def ngrams(seq: str | tuple, n: int = NOVELTY_N) -> set:
    """The n-grams (substrings or sub-tuples) of `seq`; all of it when shorter than n."""
    n = min(n, len(seq))
    return {seq[i : i + n] for i in range(len(seq) - n + 1)} if n else set()


def occurring(wanted: set[tuple], tokens: list[str]) -> set[tuple]:
    """The n-grams of `wanted` that occur in `tokens`: one pass per n-gram length, no train n-gram set
    is built (`set.intersection` consumes the sliding windows in C)."""
    found: set[tuple] = set()
    for n in {len(g) for g in wanted}:
        windows = zip(*(islice(tokens, j, None) for j in range(n)))  # lazily: no list copies
        found |= {g for g in wanted if len(g) == n}.intersection(windows)
    return found


def save_samples(out_dir: Path, samples: list[Sample], vocab: Vocab, train_text: str, line_corpus: bool) -> dict:
    """Write samples.txt (the texts) and samples.json (per sample: text, length, stop reason,
    `<unk>` rejections, novelty; plus their statistics). Returns the statistics."""
    text = train_text.lower() if vocab.lowercase else train_text
    novel = novelty(samples, text, vocab.level, line_corpus)
    stats = sample_stats(samples, novel)
    rows = [{"text": s.text, "length": s.length, "stopped": s.stopped, "unk_rejections": s.unk_rejections,
             "novel": n} for s, n in zip(samples, novel)]
    sep = "\n\n" if vocab.level == "char" and not line_corpus else "\n"
    write_text(Path(out_dir) / "samples.txt", sep.join(s.text.rstrip("\n") for s in samples) + "\n")
    write_json(Path(out_dir) / "samples.json", {"stats": stats, "samples": rows})
    return stats


# --- statistics of a batch of samples ----------------------------------------------------------------------


def sample_stats(samples: list, novel: list[bool]) -> dict:
    """Summary of `rnnlab.sampling.Sample`s: lengths, stops, diversity, novelty, `<unk>` rejections."""
    assert samples and len(novel) == len(samples), "one novelty flag per sample"
    draws = sum(s.length + (s.stopped == "eos") for s in samples)  # tokens drawn, stopping <eos> included
    return {
        "mean_length": fmean(s.length for s in samples),
        "eos_stop_rate": fmean(s.stopped == "eos" for s in samples),
        "distinct_1": distinct(samples, 1),
        "distinct_2": distinct(samples, 2),
        "novelty_rate": fmean(novel),
        "unk_rejection_rate": sum(s.unk_rejections for s in samples) / draws if draws else 0.0,
    }


def distinct(samples: list, n: int) -> float:
    """Distinct n-grams / all n-grams of the generated ids, n-grams taken within each sample (Li et al., 2016)."""
    grams = [tuple(s.ids[i : i + n]) for s in samples for i in range(len(s.ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
