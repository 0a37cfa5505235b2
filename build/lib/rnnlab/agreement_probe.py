"""The agreement probe: how far a trained word-level model carries the subject's number to the verb.

The sentences come from agreement.py ("the cat , which <N filler words> , was full .").
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
10 and at chance from 20 (measured with bench/agreement_feasibility.py). So a plot "GRU ≈ 100 %,
RNN ≈ 50 % at distance ≥ 30" is a claim about both the cell and the chosen `min_distance` /
`max_distance`; report them with it.

    rows = probe(model, vocab, distances=[0, 10, 20, 40, 60])   # [{"distance", "accuracy", "n"}, ...]
    print(markdown_table({"rnn": rnn_rows, "gru": gru_rows}))
"""

from __future__ import annotations

import random

import torch
from torch import nn

from rnnlab.agreement import VERBS, prefix
from rnnlab.errors import UserError
from rnnlab.vocab import EOS_ID, UNK_ID, Vocab


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


def markdown_table(curves: dict[str, list[dict]]) -> str:
    """A Markdown table: one row per distance, one accuracy (%) column per label; "–" where not probed."""
    by_label = {label: {r["distance"]: r["accuracy"] for r in rows} for label, rows in curves.items()}
    distances = sorted({d for acc in by_label.values() for d in acc})
    lines = ["| distance | " + " | ".join(by_label) + " |", "|---:|" + "---:|" * len(by_label)]
    for d in distances:
        cells = [f"{100 * acc[d]:.0f} %" if d in acc else "–" for acc in by_label.values()]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
