"""The standard corpora presets (conf/corpus/{ptb,wikitext2,wikitext103,enwik8,text8}.yaml), offline.

Each test composes the real preset with `rnnlab.config.compose` and overrides only its URLs, checksums
and sizes, pointing them at a tiny fixture of the same format served through `file://` URLs: so the
preset's own members, encoding and cuts are what is tested, with the same download, checksum, cache and
extraction code a real run uses.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, conf_spec
from rnnlab import config, corpus, downloads, vocab
from rnnlab.errors import UserError
from rnnlab.files import sha256_file

PRESETS = ("ptb", "wikitext2", "wikitext103", "enwik8", "text8")
PTB = {  # PTB style: pre-tokenised, a leading space, literal <unk>, N for numbers
    "train": " the cat sat on the mat \n the <unk> sat on N mats \n a dog ran \n",
    "val": " the dog sat \n a <unk> ran on the <unk> \n",
    "test": " the mat ran \n",
}
WIKI = {  # WikiText style: headings, empty lines, <unk>, @-@
    "train": " \n = Valkyria Chronicles = \n \n The game <unk> in 2011 @-@ 12 . \n",
    "val": " \n = Robert = \n \n He was <unk> . \n",
    "test": " \n = Ceres = \n \n It orbits . \n",
}


@functools.lru_cache(maxsize=None)
def spec_of(*overrides: str) -> corpus.CorpusSpec:
    """conf/'s corpus section with `overrides` (frozen: each set is composed once per worker)."""
    return config.compose(list(overrides), REPO / "conf").corpus


def prepare(tmp_path: Path, *overrides: str) -> dict:
    return corpus.prepare(spec_of(*overrides), tmp_path / "out", tmp_path / "raw")


def prepared(tmp_path: Path) -> dict[str, str]:
    return {name: corpus.read_split(tmp_path / "out", name) for name in corpus.SPLITS}


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def archive_overrides(preset: str, archive: Path, **sizes: int) -> list[str]:
    return [f"corpus={preset}", f"corpus.url={archive.as_uri()}", f"corpus.sha256={sha256_file(archive)}",
            *(f"corpus.{k}={v}" for k, v in sizes.items())]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_with_a_pinned_checksum(preset):
    spec = spec_of(f"corpus={preset}")
    pins = [spec.sha256] if spec.url else [entry["sha256"] for entry in spec.splits.values()]
    assert spec.source == "url" and pins and all(len(pin) == 64 for pin in pins)


def test_ptb_three_files_are_the_splits_and_its_unk_is_ours(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    overrides = ["corpus=ptb"]
    for name, text in PTB.items():
        path = src / f"ptb.{'valid' if name == 'val' else name}.txt"
        path.write_text(text)
        overrides += [f"corpus.splits.{name}.url={path.as_uri()}", f"corpus.splits.{name}.sha256={sha256_file(path)}"]
    stats = prepare(tmp_path, *overrides)
    assert prepared(tmp_path) == PTB  # untouched: no re-splitting, no normalisation
    assert stats["lines"] == {"train": 3, "val": 2, "test": 1}
    assert (tmp_path / "raw" / "ptb.valid.txt").read_text() == PTB["val"]

    spec = conf_spec("vocab", level="word", tokenizer="whitespace", min_freq=1, max_size=None)
    stats = vocab.build_and_encode(prepared(tmp_path), spec, False, tmp_path / "vocab")
    words = {w for w in PTB["train"].split() if w != "<unk>"}
    assert stats["size"] == len(words) + 2  # + <eos>, <unk>; the literal <unk> is not a second word
    for name, text in PTB.items():
        assert stats["splits"][name]["tokens"] == len(text.split()) + text.count("\n")
    val_ids = vocab.VocabDir(tmp_path / "vocab").ids("val")
    assert stats["splits"]["val"]["unk"] == 2 and (val_ids == vocab.UNK_ID).sum() == 2


@pytest.mark.parametrize("preset, folder", [("wikitext2", "wikitext-2"), ("wikitext103", "wikitext-103")])
def test_wikitext_zip_members_are_the_official_splits(tmp_path, preset, folder):
    files = {"train": "wiki.train.tokens", "val": "wiki.valid.tokens", "test": "wiki.test.tokens"}
    archive = make_zip(tmp_path / "src" / f"{folder}-v1.zip",
                       {f"{folder}/{files[name]}": text.encode() for name, text in WIKI.items()})
    prepare(tmp_path, *archive_overrides(preset, archive))
    assert prepared(tmp_path) == WIKI
    extracted = tmp_path / "raw" / f"{folder}-v1" / folder / "wiki.valid.tokens"
    assert extracted.read_text() == WIKI["val"]  # extracted under data/raw/<archive>/


def test_enwik8_is_byte_level_with_exact_cuts(tmp_path):
    data = bytes(range(256)) * 8 + b"<page>\r\n  <title>x</title>\n" * 20  # every byte value, \r included
    archive = make_zip(tmp_path / "src" / "enwik8.zip", {"enwik8": data})
    stats = prepare(tmp_path, *archive_overrides("enwik8", archive, val_chars=300, test_chars=200))
    parts = prepared(tmp_path)
    assert [len(parts[s]) for s in corpus.SPLITS] == [len(data) - 500, 300, 200]  # one character per byte
    assert "".join(parts[s] for s in corpus.SPLITS).encode("latin-1") == data  # every byte, unchanged
    assert stats["distinct_chars"] == 256
    voc = vocab.build(parts["train"], conf_spec("vocab", level="char"), line_corpus=False)
    assert len(voc.encode(parts["test"])) == 200  # bpc of this model is bits per byte


def test_text8_is_one_line_cut_at_exact_characters(tmp_path):
    text = " anarchism originated as a term of abuse" * 30  # a-z and spaces, no line break
    archive = make_zip(tmp_path / "src" / "text8.zip", {"text8": text.encode()})
    prepare(tmp_path, *archive_overrides("text8", archive, val_chars=50, test_chars=40))
    parts = prepared(tmp_path)
    assert parts == {"train": text[:-90], "val": text[-90:-40], "test": text[-40:]}


def test_wrong_checksum_is_one_line_naming_both_and_writes_nothing(tmp_path):
    archive = make_zip(tmp_path / "src" / "enwik8.zip", {"enwik8": b"x" * 1000})
    pinned = spec_of("corpus=enwik8").sha256
    with pytest.raises(UserError) as err:
        prepare(tmp_path, "corpus=enwik8", f"corpus.url={archive.as_uri()}")  # the real pin, another file
    message = str(err.value)
    assert "\n" not in message and pinned in message and sha256_file(archive) in message
    assert not (tmp_path / "raw" / "enwik8.zip").exists() and not (tmp_path / "out").exists()


def test_a_cached_file_with_the_right_checksum_is_not_downloaded_again(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "src" / "text8.zip", {"text8": b"ab cd " * 100})
    original, cached = archive.read_bytes(), tmp_path / "raw" / "text8.zip"
    overrides = archive_overrides("text8", archive, val_chars=10, test_chars=10)
    prepare(tmp_path, *overrides)
    assert cached.read_bytes() == original

    def no_download(url, *rest):
        raise AssertionError(f"downloaded {url} again")

    monkeypatch.setattr(downloads, "download", no_download)
    archive.unlink()
    prepare(tmp_path, *overrides)  # the cached copy is used
    monkeypatch.undo()
    archive.write_bytes(original)
    cached.write_bytes(b"a truncated download")
    prepare(tmp_path, *overrides)  # a cached copy with the wrong checksum is downloaded again
    assert cached.read_bytes() == original


def ptb_overrides(folder: Path, base: str) -> list[str]:
    """The ptb preset with its three URLs under `base` and the checksums of the fixture files in `folder`."""
    return ["corpus=ptb", *(f"corpus.splits.{split}.url={base}/ptb.{name}.txt" for split, name in NAMES.items()),
            *(f"corpus.splits.{split}.sha256={sha256_file(folder / f'ptb.{name}.txt')}" for split, name in NAMES.items())]


NAMES = {"train": "train", "val": "valid", "test": "test"}


def test_a_mirror_folder_is_used_before_any_download_and_checked(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for split, name in NAMES.items():
        (mirror / f"ptb.{name}.txt").write_text(PTB[split])
    overrides = ptb_overrides(mirror, "http://127.0.0.1:9/nowhere")  # no server: a download would fail

    def no_download(url, *rest):
        raise AssertionError(f"downloaded {url}")

    monkeypatch.setattr(downloads, "download", no_download)
    prepare(tmp_path, *overrides, f"corpus.mirror={mirror}")
    assert prepared(tmp_path) == PTB  # the mirror's files, copied into paths.raw and read as they are
    assert (tmp_path / "raw" / "ptb.train.txt").read_text() == PTB["train"]

    monkeypatch.setenv(downloads.MIRROR_ENV, str(mirror))  # the environment variable, for a whole cluster
    for cached in (tmp_path / "raw").iterdir():
        cached.unlink()
    prepare(tmp_path, *overrides)
    assert prepared(tmp_path) == PTB

    (mirror / "ptb.valid.txt").write_text("another text")
    (tmp_path / "raw" / "ptb.valid.txt").unlink()
    with pytest.raises(UserError, match=r"ptb.valid.txt in the corpus mirror has sha256 \w+, but "
                                        r"corpus.splits.val.sha256 pins \w+; replace it with the right file"):
        prepare(tmp_path, *overrides)
    with pytest.raises(UserError, match="the corpus mirror .*nothing-here is not a folder"):
        prepare(tmp_path, *overrides, f"corpus.mirror={tmp_path / 'nothing-here'}")


def test_the_real_ptb_files_as_a_mirror_give_the_fields_counts(tmp_path, monkeypatch):
    real = REPO.parent / "shared" / "corpora" / "ptb"
    if not real.is_dir():
        pytest.skip(f"no local copy of the Penn Treebank at {real}")
    monkeypatch.setattr(downloads, "download", lambda url, *rest: pytest.fail(f"downloaded {url}"))
    stats = prepare(tmp_path, "corpus=ptb", f"corpus.mirror={real}")  # the preset's own pinned sha256 values
    assert stats["lines"] == {"train": 42068, "val": 3370, "test": 3761}
