"""Downloads for `corpus=url`: a file fetched into `paths.raw` (block by block, checked against its pinned
sha256, kept only when it matches), or copied from a local mirror folder of downloaded files (corpus.mirror,
checked the same way), and the members of a zip or tar archive extracted next to it.

    path = fetch(url, sha256, raw_dir, "corpus")     # cached: a file there with the right sha256 stays
    paths = extract(archive, {"train": "wiki.train.tokens", ...}, out_dir)

Why not `pooch`: it fetches only http(s)/ftp/doi URLs, not the `file://` URLs that offline users (and the
presets' tests) give, its archive processors extract whole member lists into its own folder layout, and the
mirror folder and the one-line errors would still be ours; the download itself here is 20 lines of urllib.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from rnnlab.errors import UserError
from rnnlab.files import atomic_write, read_errors, sha256_file

CHUNK = 1 << 16  # bytes copied at a time
REFETCH = "check its permissions, or delete it (in paths.raw) to download it again"


def fetch(url: str, sha256: str | None, raw_dir: Path, key: str, mirror: str | None = None) -> Path:
    """The file at `url` in raw_dir, downloaded unless a copy with the pinned sha256 (`key`.sha256) is there,
    or in the local `mirror` folder (corpus.mirror, else $RNNLAB_CORPUS_MIRROR): a file of the same name,
    checked against the same sha256 and copied (an offline compute node needs no network)."""
    target = raw_dir / (Path(urllib.parse.urlparse(url).path).name or "download")
    if target.exists():
        with read_errors(target, REFETCH):
            if sha256_file(target) == sha256:
                return target
    found = mirrored(target.name, sha256, key, mirror or os.environ.get(MIRROR_ENV))
    if found:
        atomic_write(target, lambda fh: copy_file(found, fh), mode="wb")
        return target
    atomic_write(target, lambda fh: download(url, fh, sha256, key), mode="wb")
    return target


MIRROR_ENV = "RNNLAB_CORPUS_MIRROR"


def mirrored(name: str, sha256: str | None, key: str, mirror: str | None) -> Path | None:
    """`name` in the mirror folder, if it is there; a copy whose sha256 is not the pinned one is an error."""
    if not mirror:
        return None
    folder = Path(os.environ.get("DVC_ROOT", ".")) / os.path.expanduser(mirror)  # relative: to the repository
    if not folder.is_dir():
        raise UserError(f"the corpus mirror {folder} is not a folder; set corpus.mirror (or ${MIRROR_ENV}) to the "
                        "folder holding the downloaded files, or null")
    path = folder / name
    if not path.is_file():
        return None
    with read_errors(path, f"check its permissions, or remove it from {folder}"):
        digest = sha256_file(path)
    if not sha256:
        raise UserError(f"{key}.sha256 is not set, so {path} cannot be checked; pin it: {key}.sha256={digest}")
    if digest != sha256:
        raise UserError(f"{path} in the corpus mirror has sha256 {digest}, but {key}.sha256 pins {sha256}; "
                        "replace it with the right file, or remove it to download it")
    return path


def copy_file(path: Path, fh: BinaryIO) -> None:
    with read_errors(path, "check its permissions"), open(path, "rb") as src:
        shutil.copyfileobj(src, fh, CHUNK)


def download(url: str, fh: BinaryIO, sha256: str | None, key: str) -> None:
    """Copy `url` into `fh` block by block, then check the sha256 pinned by `key`.sha256 (an error: the
    download is not kept)."""
    digest = hashlib.sha256()
    with download_errors(url):
        response = urllib.request.urlopen(url, timeout=60)
    with response:
        while True:
            with download_errors(url):
                block = response.read(CHUNK)
            if not block:
                break
            digest.update(block)
            fh.write(block)
    if not sha256:
        raise UserError(f"{key}.sha256 is not set for {url}; pin it: {key}.sha256={digest.hexdigest()}")
    if digest.hexdigest() != sha256:
        raise UserError(
            f"{url} has sha256 {digest.hexdigest()}, but {key}.sha256 pins {sha256}; "
            "check the URL, or pin the new checksum if the change is expected"
        )


@contextlib.contextmanager
def download_errors(url: str):
    """Talking to `url` inside this block: a network or address error is one UserError."""
    try:
        yield
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"cannot download {url} ({reason}); check the address and the network, "
            "or download it yourself and use corpus=file corpus.path=<the file>"
        ) from None


def extract(archive: Path, members: dict[str, str], out_dir: Path) -> dict[str, Path]:
    """Copy `members` (key -> member name) of a zip or tar archive under out_dir (atomically, block by
    block); returns key -> the extracted file."""
    for name in members.values():
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if not parts or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or ".." in parts:
            raise UserError(f"archive member {name!r} is refused (an absolute path or '..' would be written "
                            f"outside {out_dir}); give its relative name inside {archive.name}")
    with member_opener(archive, members) as open_member:
        for name in members.values():
            with open_member(name) as src:
                atomic_write(out_dir / name, lambda fh, src=src: shutil.copyfileobj(src, fh, CHUNK), mode="wb")
    return {key: out_dir / name for key, name in members.items()}


@contextlib.contextmanager
def member_opener(archive: Path, members: dict[str, str]):
    """A function opening a member of the zip or tar `archive` (checked to hold every one of `members`)."""
    with read_errors(archive, REFETCH):
        kind = "zip" if zipfile.is_zipfile(archive) else "tar" if tarfile.is_tarfile(archive) else None
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            check_members(archive, members, zf.namelist())
            yield zf.open
    elif kind == "tar":
        with tarfile.open(archive) as tf:
            files = {m.name: m for m in tf.getmembers() if m.isfile()}
            check_members(archive, members, list(files))
            yield lambda name: tf.extractfile(files[name])
    else:
        raise UserError(f"{archive} is not a zip or tar archive; for a plain text download leave corpus.members null")


def check_members(archive: Path, members: dict[str, str], names: list[str]) -> None:
    missing = [name for name in members.values() if name not in names]
    if missing:
        raise UserError(f"{archive.name} has no member {missing[0]!r}; it holds: {', '.join(names[:10])}"
                        + (" …" if len(names) > 10 else ""))
