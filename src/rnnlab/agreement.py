"""Long-range subject–verb agreement: a synthetic line corpus and a probe of how far a model carries number.

The lecture's example "The cat, which already ate …, was full" / "The cats, which …, were full" made
measurable. `generate` writes one sentence per line, word-level, tokens separated by spaces:

    the cat , which already ate the fish and slept on warm grass , was full .
    the geese , which , were calm .                                   (distance 0)

**Distance** is the number of filler words between "which" and the second ","; it is the N of
`AgreementSpec.min_distance` ≤ N ≤ `max_distance` and the x axis of the probe. The subject noun and the
verb are N + 3 tokens apart (", which", N filler words, ","), so the model must carry the subject's
number through N + 3 recurrent steps. The filler words are number-neutral (no was/were/is/are, no
pronoun or determiner that agrees, only nouns whose plural is the singular), so the subject is the
only cue for the verb.

`probe` asks a trained word-level model, per distance, on fresh sentences (another seed than training):
after `<eos> the cat , which <N filler words> ,` — `<eos>` as the start token from the zero state, as
when sampling — is the logit of the correct verb form higher than that of the wrong one ("was" vs
"were")? Half the prompts are singular and half plural, so a model that ignores the subject scores
exactly 50 %, whichever form it prefers.

Why the training range of distances matters: the probe measures what the *training data* forced the
model to learn, not only what the cell could learn. A GRU trained on distances uniform in [0, 40] gets
every distance right, beyond 40 too; a vanilla RNN trained on that range stays at chance everywhere
even after 180 s of training (presumably the vanishing gradient: most of its training sentences are
too long for the verb's error to reach the subject). Trained on [0, 10] the same RNN is right up to
10 and at chance from 20 (measured; FACTS, "Agreement probe feasibility"). So a plot "GRU ≈ 100 %,
RNN ≈ 50 % at distance ≥ 30" is a claim about both the cell and the chosen `min_distance` /
`max_distance`; report them with it.

    text = generate(AgreementSpec(n_sentences=20000, max_distance=40))
    rows = probe(model, vocab, distances=[0, 10, 20, 40, 60])   # [{"distance", "accuracy", "n"}, ...]
    print(markdown_table({"rnn": rnn_rows, "gru": gru_rows}))
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rnnlab.errors import UserError
from rnnlab.vocab import EOS_ID, UNK_ID, Vocab

# Subject nouns, singular -> plural; irregular plurals so that number is not just a trailing "s".
NOUNS = {"cat": "cats", "dog": "dogs", "fox": "foxes", "bird": "birds", "horse": "horses",
         "mouse": "mice", "goose": "geese", "ox": "oxen"}
VERBS = {False: "was", True: "were"}  # keyed by "is the subject plural"
ADJECTIVES = ("full", "happy", "tired", "calm", "sleepy")
# Number-neutral filler: past-tense verbs, prepositions, adjectives, adverbs and nouns whose plural is
# the singular (fish, sheep, deer) or that are uncountable. No word here agrees with the subject.
FILLER = ("already", "ate", "the", "fish", "and", "slept", "on", "warm", "grass", "near", "old", "sheep",
          "after", "rain", "quietly", "chased", "deer", "in", "soft", "snow", "with", "milk", "bread",
          "under", "yesterday", "then", "saw", "green", "hay", "by", "water", "also", "ran", "through", "mud")


@dataclass(frozen=True)
class AgreementSpec:
    n_sentences: int = 20000
    min_distance: int = 0
    max_distance: int = 40
    seed: int = 0
    filler: str = "random"  # random: N random FILLER words | passage: the first N words of FILLER, in order

    def __post_init__(self) -> None:
        if self.n_sentences < 1:
            raise UserError(f"corpus.generator.n_sentences={self.n_sentences} must be at least 1")
        if self.min_distance < 0:
            raise UserError(f"corpus.generator.min_distance={self.min_distance} must be at least 0")
        if self.max_distance < self.min_distance:
            raise UserError(f"corpus.generator.max_distance={self.max_distance} must be at least "
                            f"corpus.generator.min_distance={self.min_distance}")


def prefix(rng: random.Random, plural: bool, distance: int, filler_kind: str = "random") -> list[str]:
    """The tokens before the verb: `the <noun> , which <distance filler words> ,`."""
    noun = rng.choice(sorted(NOUNS))
    if filler_kind == "passage":  # predictable filler: the verb's number is most of what is left to learn
        filler = [FILLER[i % len(FILLER)] for i in range(distance)]
    else:
        filler = [rng.choice(FILLER) for _ in range(distance)]
    return ["the", NOUNS[noun] if plural else noun, ",", "which", *filler, ","]


def sentence(rng: random.Random, plural: bool, distance: int, filler_kind: str = "random") -> list[str]:
    return [*prefix(rng, plural, distance, filler_kind), VERBS[plural], rng.choice(ADJECTIVES), "."]


def generate(spec: AgreementSpec) -> str:
    """`spec.n_sentences` lines, each singular or plural with probability 1/2 and a distance (filler
    length, see the module docstring) uniform in [min_distance, max_distance]; same spec, same text."""
    rng = random.Random(spec.seed)
    lines = []
    for _ in range(spec.n_sentences):
        plural = rng.random() < 0.5
        distance = rng.randint(spec.min_distance, spec.max_distance)
        lines.append(" ".join(sentence(rng, plural, distance, spec.filler)))
    return "\n".join(lines) + "\n"


def verb_ids(vocab: Vocab) -> tuple[int, int]:
    """Ids of ("was", "were"); a vocabulary without them was not built on this corpus at word level."""
    missing = [v for v in VERBS.values() if v not in vocab.index]
    if missing:
        raise UserError(
            f"the vocabulary ({vocab.level} level, {len(vocab)} tokens) lacks {' and '.join(missing)}; "
            "the agreement probe needs a word-level model trained on corpus=agreement (vocab=word)"
        )
    return vocab.index[VERBS[False]], vocab.index[VERBS[True]]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


@torch.no_grad()
def accuracy_at(model: nn.Module, vocab: Vocab, distance: int, n: int, rng: random.Random,
                filler: str = "random") -> float:
    """Share of `n` prompts (n // 2 singular, the rest plural) where the right verb form wins."""
    was, were = verb_ids(vocab)
    plural = torch.arange(n) % 2 == 1  # (B,)
    rows = [[EOS_ID] + [vocab.index.get(t, UNK_ID) for t in prefix(rng, bool(p), distance, filler)]
            for p in plural]
    tokens = torch.tensor(rows, dtype=torch.long, device=_device(model))  # (B, distance + 6)
    logits, _ = model(tokens)  # (B, T, V); hidden=None: the zero start state
    prefers_were = (logits[:, -1, were] > logits[:, -1, was]).cpu()  # (B,)
    return (prefers_were == plural).sum().item() / n


def probe(model: nn.Module, vocab: Vocab, distances: list[int], per_distance: int = 200,
          seed: int = 1, filler: str = "random") -> list[dict]:
    """Per distance, the share of `per_distance` fresh prompts where the model gives the correct verb form
    ("was"/"were") the higher logit after `<eos> the <noun> , which <filler> ,`. One batch per distance;
    each distance has its own seeded generator, so a row does not depend on which others were asked."""
    verb_ids(vocab)
    if per_distance < 1:
        raise UserError(f"per_distance={per_distance} must be at least 1")
    if any(d < 0 for d in distances):
        raise UserError(f"distances {distances} must all be at least 0")
    was_training = model.training
    model.eval()
    try:
        return [{"distance": d,
                 "accuracy": accuracy_at(model, vocab, d, per_distance, random.Random(f"agreement:{seed}:{d}"),
                                         filler),
                 "n": per_distance} for d in distances]
    finally:
        model.train(was_training)


def save_plot(curves: dict[str, list[dict]], path: str | Path, title: str = "Subject–verb agreement") -> None:
    """Accuracy against distance, one line per label, with the 50 % chance line; a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, rows in curves.items():
        ax.plot([r["distance"] for r in rows], [100 * r["accuracy"] for r in rows], marker="o", label=label)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("distance (filler words between subject and verb)")
    ax.set_ylabel("correct verb form preferred (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown_table(curves: dict[str, list[dict]]) -> str:
    """A Markdown table: one row per distance, one accuracy (%) column per label; "–" where not probed."""
    by_label = {label: {r["distance"]: r["accuracy"] for r in rows} for label, rows in curves.items()}
    distances = sorted({d for acc in by_label.values() for d in acc})
    lines = ["| distance | " + " | ".join(by_label) + " |", "|---:|" + "---:|" * len(by_label)]
    for d in distances:
        cells = [f"{100 * acc[d]:.0f} %" if d in acc else "–" for acc in by_label.values()]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
