"""Train / val / test splits of a cleaned corpus (rnnlab.corpus reads and cleans it).

`format: text` is running text, split contiguously (train first, then val, then test, cut at line starts:
nanoGPT's 90/10 convention is `val_frac: 0.1, test_frac: 0`), or cut exactly by size with `val_chars` /
`test_chars` (enwik8's and text8's 90M / 5M / 5M). `format: lines` is one item per line (names,
dinosaurs): lines are shuffled with `split_seed` before the split.

Running text is cut by position (`text_cuts`), so a text kept on disk (rnnlab.spool) is split without
being read into memory; `split` is the same for a text in memory.
"""

from __future__ import annotations

import random
from typing import Callable

from rnnlab.choices import SPLIT_NAMES as SPLITS
from rnnlab.errors import UserError
from rnnlab.schema import CorpusSpec


def split(text: str, spec: CorpusSpec) -> dict[str, str]:
    """Split cleaned text into train / val / test (contiguous for text, shuffled lines for lines)."""
    if spec.format == "lines":
        return split_lines(text, spec)
    cuts = text_cuts(len(text), lambda i: line_end(text, i), spec)
    return dict(zip(SPLITS, (text[: cuts[0]], text[cuts[0] : cuts[1]], text[cuts[1] :])))


def text_cuts(n: int, line_end: Callable[[int], int], spec: CorpusSpec) -> tuple[int, int]:
    """Where running text of n characters is cut: train is [0, c0), val [c0, c1), test [c1, n).
    `line_end(i)`: the position after the first line break at or after i (n if none), as `line_end` below."""
    if spec.val_chars is not None or spec.test_chars is not None:
        return char_cuts(n, spec.val_chars or 0, spec.test_chars or 0)

    def line_start(i: int) -> int:  # the start of the line at or after position i (no split cuts a line)
        return line_end(i - 1) if i > 0 else 0

    c0 = line_start(round(n * (1 - spec.val_frac - spec.test_frac)))
    c1 = n if spec.test_frac == 0 else line_start(round(n * (1 - spec.test_frac)))
    check_sizes({"train": c0, "val": c1 - c0, "test": n - c1}, spec, f"{n} characters")
    return c0, c1


def char_cuts(n: int, val_chars: int, test_chars: int) -> tuple[int, int]:
    """Exact cuts, not moved to line starts: the last test_chars characters, the val_chars before, the rest."""
    if val_chars + test_chars >= n:
        raise UserError(f"the corpus ({n} characters) is too small for corpus.val_chars={val_chars} plus "
                        f"corpus.test_chars={test_chars}: no training text would be left; lower them")
    return n - val_chars - test_chars, n - test_chars


def line_end(text: str, i: int) -> int:
    """The position after the first line break at or after i (len(text) if none)."""
    j = text.find("\n", i)
    return len(text) if j < 0 else j + 1


def split_lines(text: str, spec: CorpusSpec) -> dict[str, str]:
    lines = text.split("\n")[:-1]
    random.Random(spec.split_seed).shuffle(lines)
    n_test, n_val = round(len(lines) * spec.test_frac), round(len(lines) * spec.val_frac)
    groups = (lines[n_val + n_test :], lines[:n_val], lines[n_val : n_val + n_test])
    check_sizes({name: len(group) for name, group in zip(SPLITS, groups)}, spec, f"{len(lines)} lines")
    return {name: "".join(line + "\n" for line in group) for name, group in zip(SPLITS, groups)}


def check_sizes(sizes: dict[str, int], spec: CorpusSpec, size: str) -> None:
    wanted = {"train": 1.0, "val": spec.val_frac, "test": spec.test_frac}
    empty = [name for name, n in sizes.items() if wanted[name] > 0 and not n]
    if empty:
        raise UserError(
            f"the corpus ({size}) is too small for the split: {', '.join(empty)} would be empty; "
            "use a larger corpus or raise corpus.val_frac / corpus.test_frac"
        )


def check_presplit(blank: dict[str, bool], same_as_train: dict[str, bool], spec: CorpusSpec) -> None:
    """A pre-split corpus's splits, given which are blank after cleaning and which hold train's text."""
    key = "members" if isinstance(spec.members, dict) else "splits"
    empty = [name for name in ("train", "val") if blank[name]]
    if empty:
        raise UserError(f"corpus.{key}.{empty[0]} is empty after cleaning; give it a file with some text in it")
    same = [name for name in ("val", "test") if same_as_train[name]]
    if same:
        raise UserError(f"corpus.{key}.{same[0]} holds the same text as corpus.{key}.train: scores on the training "
                        f"text measure memorising, not language modelling; give the {same[0]} split its own text")
