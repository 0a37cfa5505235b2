"""Long-range subject–verb agreement: a synthetic line corpus for the agreement probe (agreement_probe.py).

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

The probe of what a trained model makes of these sentences is in agreement_probe.py. Plain Python
(no torch): the prepare stage imports it.

    text = generate(AgreementSpec(n_sentences=20000, min_distance=0, max_distance=40, seed=0, filler="random"))
"""

from __future__ import annotations

import random

from rnnlab.schema import AgreementSpec

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
