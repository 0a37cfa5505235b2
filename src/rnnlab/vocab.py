"""Vocabulary: characters or words of the *training* split, ids, encoding and decoding.

Two special tokens come first: `<eos>` (id 0) ends a line of a line corpus or of word-level text, and
stands for the zero start input x<1> when sampling; `<unk>` (id 1) replaces what the vocabulary lacks.
Where `<eos>` goes:
  char level, running text   every character is a token, "\\n" included; no `<eos>` in the stream
  char level, line corpus    each line's characters, then `<eos>` instead of "\\n"
  word level (both formats)  each line's words, then `<eos>` (the PTB convention)

Corpora that already replaced rare words (PTB, WikiText) write `<unk>` in the text. At word level that
literal token (`vocab.unk_token`, default `<unk>`) is the vocabulary's own `<unk>`: the tokenizer keeps it
whole (also the `words` tokenizer), `build` never adds it as a word, and it encodes to UNK_ID. At char
level it has no effect (`<`, `u`, `n`, `k`, `>` stay characters).

The vocabulary is saved as JSON (never pickle) with a content hash; checkpoints record the hash so a
model is never used with another vocabulary. Encoded splits are compact integer arrays (`.npy`).
The vocab stage works block by block (blocks of whole lines, rnnlab.corpus.SplitBlocks): counting, encoding
and writing each `.npy` take the memory of a block, not of the corpus, and give the arrays of encoding the
whole text at once. Used by `pipeline/vocab.py`; no torch here.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Mapping

import numpy as np

from rnnlab.errors import UserError
from rnnlab.files import atomic_write, reading, shape_error, write_json
from rnnlab.choices import TOKENIZERS
from rnnlab.schema import VocabSpec

EOS, UNK = "<eos>", "<unk>"
EOS_ID, UNK_ID = 0, 1
FIX = "rebuild it (dvc repro vocab), or bring back the pipeline's last one (dvc checkout --force vocab)"
PATTERNS = {name: re.compile(pattern) for name, pattern in TOKENIZERS.items()}  # vocab.tokenizer -> its regex
UNICODE = 0x110000  # code points: char level counts and encodes through arrays indexed by code point


def code_points(text: str) -> np.ndarray:
    """The code point of each character of `text`, as a uint32 array."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


@dataclass
class Vocab:
    """Token ↔ id mapping plus the rules that turn text into a token stream."""

    level: str
    tokens: list[str]
    lowercase: bool = False
    tokenizer: str = "words"
    newline_is_eos: bool = False
    counts: list[int] = field(default_factory=list)
    unk_token: str = UNK  # word level: the corpus's own unknown-word token

    def __post_init__(self) -> None:
        assert self.tokens[:2] == [EOS, UNK], "the specials come first"
        self.index: dict[str, int] = {}
        for i, tok in enumerate(self.tokens):
            self.index.setdefault(tok, i)  # the specials win over a stray duplicate
        self.unk_literal = self.unk_token.lower() if self.lowercase else self.unk_token
        self.pattern = PATTERNS[self.tokenizer]
        if self.tokenizer == "words":  # the unknown-word token stays whole (not `<`, `unk`, `>`)
            self.pattern = re.compile(f"{re.escape(self.unk_literal)}|{self.pattern.pattern}")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def hash(self) -> str:
        """Content hash of what decides the ids; stored in checkpoints."""
        keys = {"level": self.level, "tokens": self.tokens, "lowercase": self.lowercase,
                "tokenizer": self.tokenizer, "newline_is_eos": self.newline_is_eos} | self.custom_unk
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def custom_unk(self) -> dict:
        """unk_token when not the default: stored and hashed only then (older vocabularies keep their hash)."""
        return {} if self.unk_token == UNK else {"unk_token": self.unk_token}

    # --- text → tokens → ids --------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Split text into tokens, `<eos>` where a line ends (see the module docstring)."""
        if self.lowercase:
            text = text.lower()
        if self.level == "char":
            return [EOS if c == "\n" else c for c in text] if self.newline_is_eos else list(text)
        unk, out = self.unk_literal, []
        for line in text.split("\n")[: -1 if text.endswith("\n") else None]:
            tokens = self.pattern.findall(line)
            out.extend(tokens if unk == UNK else [UNK if t == unk else t for t in tokens])
            out.append(EOS)
        return out

    def encode(self, text: str) -> np.ndarray:
        """Text → 1-D array of ids, unknown tokens as `<unk>`."""
        if self.level == "char":
            return self.char_ids[code_points(text.lower() if self.lowercase else text)]
        tokens = self.tokenize(text)
        return np.fromiter(map(self.index.get, tokens, itertools.repeat(UNK_ID)), dtype=self.dtype, count=len(tokens))

    @functools.cached_property
    def char_ids(self) -> np.ndarray:
        """Char level: the id of every code point (`<unk>` where the vocabulary lacks it), for encoding."""
        table = np.full(UNICODE, UNK_ID, dtype=self.dtype)
        for tok, i in self.index.items():
            if len(tok) == 1:
                table[ord(tok)] = i
        if self.newline_is_eos:
            table[ord("\n")] = EOS_ID
        return table

    def decode(self, ids) -> str:
        """Ids → text: characters joined; words joined by spaces with a line break at `<eos>`."""
        toks = ["\n" if i == EOS_ID else self.tokens[i] for i in ids]
        if self.level == "char":
            return "".join(toks)
        return re.sub(r" ?\n ?", "\n", " ".join(toks))

    @property
    def dtype(self):
        return np.uint16 if len(self.tokens) <= np.iinfo(np.uint16).max else np.int32

    # --- persistence ----------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {"level": self.level, "lowercase": self.lowercase, "tokenizer": self.tokenizer,
                "newline_is_eos": self.newline_is_eos, "hash": self.hash, "size": len(self),
                "tokens": self.tokens, "counts": self.counts} | self.custom_unk

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        if not Path(path).exists():
            raise UserError(f"no vocabulary at {path}; run the vocab stage first: dvc repro vocab")
        with reading(path, FIX):
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if list(data["tokens"][:2]) != [EOS, UNK]:
                raise ValueError("it does not start with <eos>, <unk>")
            vocab = cls(str(data["level"]), list(data["tokens"]), data["lowercase"], data["tokenizer"],
                        data["newline_is_eos"], data.get("counts", []), data.get("unk_token", UNK))
            stored = data["hash"]
        if vocab.hash != stored:
            raise UserError(f"{path} was edited (its hash does not match its content); rebuild it: dvc repro vocab")
        return vocab


def build(train: str | Iterable[str], spec: VocabSpec, line_corpus: bool) -> Vocab:
    """Build the vocabulary from the training split only (never from val/test): its text, or its blocks of
    whole lines (rnnlab.corpus.SplitBlocks)."""
    unk_token = spec.unk_token if spec.level == "word" else UNK  # no effect at char level
    probe = Vocab(spec.level, [EOS, UNK], spec.lowercase, spec.tokenizer,
                  newline_is_eos=spec.level == "word" or line_corpus, unk_token=unk_token)
    blocks = [train] if isinstance(train, str) else train
    counts = count_chars(blocks, spec.lowercase) if spec.level == "char" else count_words(blocks, probe)
    if probe.newline_is_eos:
        counts.pop("\n" if spec.level == "char" else EOS, None)
    if spec.level == "word":
        counts.pop(UNK, None)  # the corpus's own <unk> is ours, not a word
    kept = [(tok, n) for tok, n in counts.items() if n >= spec.min_freq]
    kept.sort(key=(lambda tn: tn[0]) if spec.level == "char" else (lambda tn: (-tn[1], tn[0])))
    if spec.max_size is not None:
        kept = sorted(kept, key=lambda tn: (-tn[1], tn[0]))[: max(spec.max_size - 2, 0)]
        if spec.level == "char":
            kept.sort()
    if not kept:
        most = max(counts.values(), default=0)
        raise UserError(
            f"vocab.min_freq={spec.min_freq} / vocab.max_size={spec.max_size} leave an empty vocabulary "
            f"(the most frequent {spec.level} occurs {most} times in the training split); "
            "lower vocab.min_freq or raise vocab.max_size"
        )
    return Vocab(spec.level, [EOS, UNK] + [t for t, _ in kept], spec.lowercase, spec.tokenizer,
                 probe.newline_is_eos, [0, 0] + [n for _, n in kept], unk_token)


def count_chars(blocks: Iterable[str], lowercase: bool) -> dict[str, int]:
    """How often each character occurs (counted per code point with numpy: a Counter costs ~70 ns a character)."""
    total = np.zeros(UNICODE, dtype=np.int64)
    for block in blocks:
        counts = np.bincount(code_points(block.lower() if lowercase else block))
        total[: len(counts)] += counts
    return {chr(c): int(total[c]) for c in np.flatnonzero(total)}


def count_words(blocks: Iterable[str], probe: Vocab) -> Counter:
    counts: Counter = Counter()
    for block in blocks:
        counts.update(probe.tokenize(block))
    return counts


class VocabDir:
    """The vocab stage's folder, the one place that knows its layout:

        vocab.json                 the vocabulary (`Vocab.save`)
        {train,val,test}.npy       each split encoded as a 1-D id array
        stats.json                 size, coverage and per-split tokens / chars / OOV rate
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def vocab_file(self) -> Path:
        return self.path / "vocab.json"

    def split_file(self, split: str) -> Path:
        return self.path / f"{split}.npy"

    def vocab(self) -> Vocab:
        return Vocab.load(self.vocab_file)

    def ids(self, split: str) -> np.ndarray:
        if not self.split_file(split).exists():
            raise UserError(f"no encoded {split} split at {self.split_file(split)}; "
                            "run the vocab stage first: dvc repro vocab")
        size = self.stats()["size"] if (self.path / "stats.json").exists() else np.inf
        with reading(self.split_file(split), FIX):
            ids = np.load(self.split_file(split), allow_pickle=False)
            if ids.ndim != 1 or ids.dtype.kind not in "iu" or (len(ids) and not 0 <= ids.min() <= ids.max() < size):
                raise ValueError(f"not a 1-D array of token ids below the vocabulary size {size}")
            return ids

    def stats(self) -> dict:
        if not (self.path / "stats.json").exists():
            raise UserError(f"no vocabulary statistics in {self.path}; run the vocab stage first: dvc repro vocab")
        with reading(self.path / "stats.json", FIX):
            stats = dict(json.loads((self.path / "stats.json").read_text(encoding="utf-8")))
            counts = {"tokens": int, "chars": int, "oov_rate": (int, float)}
            why = shape_error(stats, {"size": int, "splits": dict}) or next(
                (f"split {name!r}: {why}" for name, split in stats["splits"].items()
                 if (why := shape_error(split, counts))), None)
            if why:
                raise ValueError(why)
            return stats

    def chars_per_token(self, split: str) -> float:
        """Characters of the split's text (separators included) per token: bpc = bits per token / this."""
        s = self.stats()["splits"][split]
        return s["chars"] / max(s["tokens"], 1)

    def write_split(self, split: str, vocab: Vocab, blocks: Iterable[str]) -> dict:
        """Encode `blocks` (a split's text, block by block) into `<split>.npy`; the split's statistics."""
        stats: dict = {}
        atomic_write(self.split_file(split), lambda fh: stats.update(save_ids(fh, vocab, blocks)), mode="wb")
        return stats

    def write(self, vocab: Vocab, stats: dict) -> None:
        vocab.save(self.vocab_file)
        write_json(self.path / "stats.json", stats)


def save_ids(fh: IO[bytes], vocab: Vocab, blocks: Iterable[str]) -> dict:
    """Write the ids of `blocks` to `fh` as one 1-D `.npy` array, block by block (the bytes `np.save` writes
    for the whole array: numpy pads a header so that any length fits, which is written again at the end);
    the split's statistics (`split_stats`)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(vocab.dtype)), "fortran_order": False, "shape": (0,)}
    np.lib.format.write_array_header_1_0(fh, header)
    data_start = fh.tell()
    tokens = chars = unk = 0
    for block in blocks:
        ids = vocab.encode(block)
        fh.write(ids.tobytes())
        tokens, chars, unk = tokens + ids.size, chars + len(block), unk + int(np.count_nonzero(ids == UNK_ID))
    fh.seek(0)
    np.lib.format.write_array_header_1_0(fh, header | {"shape": (tokens,)})
    assert fh.tell() == data_start, "the .npy header changed length"
    fh.seek(0, os.SEEK_END)
    return split_stats(tokens, chars, unk)


def split_stats(tokens: int, chars: int, unk: int) -> dict:
    return {"tokens": tokens, "chars": chars, "unk": unk, "oov_rate": round(unk / tokens, 6) if tokens else 0.0}


def build_and_encode(texts: Mapping[str, str | Iterable[str]], spec: VocabSpec, line_corpus: bool,
                     out_dir: str | Path) -> dict:
    """The vocab stage: build from train, encode every split, write them to `out_dir` (see `VocabDir`).
    Each split is its text, or its blocks of whole lines that can be read again (rnnlab.corpus.SplitBlocks:
    train is read twice, to count and to encode)."""
    blocks = {name: [text] if isinstance(text, str) else text for name, text in texts.items()}
    vocab = build(blocks["train"], spec, line_corpus)
    folder = VocabDir(out_dir)
    splits = {name: folder.write_split(name, vocab, split) for name, split in blocks.items()}
    top = sorted(zip(vocab.tokens[2:], vocab.counts[2:]), key=lambda tn: -tn[1])[:20]
    stats = {
        "level": vocab.level,
        "size": len(vocab),
        "hash": vocab.hash,
        "coverage": round(1 - splits["train"]["oov_rate"], 6),
        "oov_rate": {name: s["oov_rate"] for name, s in splits.items() if name != "train"},
        "splits": splits,
        "top_tokens": [[tok, n] for tok, n in top],
    }
    folder.write(vocab, stats)
    return stats
