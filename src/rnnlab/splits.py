"""Train / val / test splits of a cleaned corpus (rnnlab.corpus reads and cleans it).

`format: text` is running text, split contiguously (train first, then val, then test, cut at line starts:
nanoGPT's 90/10 convention is `val_frac: 0.1, test_frac: 0`), or cut exactly by size with `val_chars` /
`test_chars` (enwik8's and text8's 90M / 5M / 5M). `format: lines` is one item per line (names,
dinosaurs): lines are shuffled with `split_seed` before the split.
"""

from __future__ import annotations

import random

from rnnlab.choices import SPLIT_NAMES as SPLITS
from rnnlab.errors import UserError
from rnnlab.schema import CorpusSpec


def split(text: str, spec: CorpusSpec) -> dict[str, str]:
    """Split cleaned text into train / val / test (contiguous for text, shuffled lines for lines)."""
    if spec.format == "lines":
        return split_lines(text, spec)
    n = len(text)
    if spec.val_chars is not None or spec.test_chars is not None:
        return split_chars(text, spec.val_chars or 0, spec.test_chars or 0)
    cuts = [line_start(text, round(n * (1 - spec.val_frac - spec.test_frac))), line_start(text, round(n * (1 - spec.test_frac)))]
    if spec.test_frac == 0:
        cuts[1] = n
    parts = dict(zip(SPLITS, (text[: cuts[0]], text[cuts[0] : cuts[1]], text[cuts[1] :])))
    check_sizes(parts, spec, f"{n} characters")
    return parts


def split_chars(text: str, val_chars: int, test_chars: int) -> dict[str, str]:
    """Exact cuts, not moved to line starts: the last test_chars characters, the val_chars before, the rest."""
    n = len(text)
    if val_chars + test_chars >= n:
        raise UserError(f"the corpus ({n} characters) is too small for corpus.val_chars={val_chars} plus "
                        f"corpus.test_chars={test_chars}: no training text would be left; lower them")
    cuts = (n - val_chars - test_chars, n - test_chars)
    return dict(zip(SPLITS, (text[: cuts[0]], text[cuts[0] : cuts[1]], text[cuts[1] :])))


def line_start(text: str, i: int) -> int:
    """The start of the line at or after position i (so no split cuts a line in two)."""
    j = text.find("\n", i - 1) if i > 0 else 0
    return len(text) if j < 0 else (j + 1 if i > 0 else 0)


def split_lines(text: str, spec: CorpusSpec) -> dict[str, str]:
    lines = text.split("\n")[:-1]
    random.Random(spec.split_seed).shuffle(lines)
    n_test, n_val = round(len(lines) * spec.test_frac), round(len(lines) * spec.val_frac)
    groups = (lines[n_val + n_test :], lines[:n_val], lines[n_val : n_val + n_test])
    parts = {name: "".join(line + "\n" for line in group) for name, group in zip(SPLITS, groups)}
    check_sizes(parts, spec, f"{len(lines)} lines")
    return parts


def check_sizes(parts: dict[str, str], spec: CorpusSpec, size: str) -> None:
    wanted = {"train": 1.0, "val": spec.val_frac, "test": spec.test_frac}
    empty = [name for name, text in parts.items() if wanted[name] > 0 and not text]
    if empty:
        raise UserError(
            f"the corpus ({size}) is too small for the split: {', '.join(empty)} would be empty; "
            "use a larger corpus or raise corpus.val_frac / corpus.test_frac"
        )


def check_presplit(parts: dict[str, str], spec: CorpusSpec) -> None:
    key = "members" if isinstance(spec.members, dict) else "splits"
    empty = [name for name in ("train", "val") if not parts[name].strip()]
    if empty:
        raise UserError(f"corpus.{key}.{empty[0]} is empty after cleaning; give it a file with some text in it")
    same = [name for name in ("val", "test") if parts[name] == parts["train"]]
    if same:
        raise UserError(f"corpus.{key}.{same[0]} holds the same text as corpus.{key}.train: scores on the training "
                        f"text measure memorising, not language modelling; give the {same[0]} split its own text")
