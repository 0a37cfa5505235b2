"""Corpus preparation: sources, cleaning, splits, and every user error."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SHARED_CORPORA, TINY_TEXT, conf_spec
from rnnlab import corpus
from rnnlab.errors import UserError
from rnnlab.files import sha256_bytes


def prepare(tmp_path: Path, **kw) -> dict:
    return corpus.prepare(conf_spec("corpus", **kw), tmp_path / "out", tmp_path / "raw")


def test_markdown_play_becomes_speaker_verse_blank_line():
    md = (
        "# Macbeth\n\n## ACT I\n\n_Thunder. Enter three Witches_\n\n**First Witch**  \n"
        "When shall we three meet again  \nIn thunder, _\\[Aside]_ or in rain?\n\n_Exeunt_\n\n"
        "Who comes here\\--now?\n"
    )
    assert corpus.markdown_play_to_text(md) == (
        "First Witch:\nWhen shall we three meet again\nIn thunder,  or in rain?\n\n"
        "First Witch:\nWho comes here--now?\n"
    )


def test_embedded_shakespeare_has_no_markdown(tmp_path):
    stats = prepare(tmp_path, source="shakespeare", max_chars=200_000)
    train = (tmp_path / "out" / "train.txt").read_text()
    assert stats["chars"]["total"] == 200_000
    assert train.startswith("THESEUS:\nNow, fair Hippolyta")
    assert not any(mark in train for mark in ("**", "#", "\\[", "_"))


def test_text_split_is_contiguous_at_line_starts(tiny_file, tmp_path):
    stats = prepare(tmp_path, source="file", path=str(tiny_file), val_frac=0.1, test_frac=0.1)
    parts = [(tmp_path / "out" / f"{s}.txt").read_text() for s in corpus.SPLITS]
    assert "".join(parts) == TINY_TEXT
    assert all(p.endswith("\n") for p in parts)
    assert stats["chars"]["train"] == pytest.approx(0.8 * len(TINY_TEXT), rel=0.05)
    assert stats["input_sha256"] == sha256_bytes(TINY_TEXT.encode())


def test_nanogpt_split_has_no_test(tiny_file, tmp_path):
    stats = prepare(tmp_path, source="file", path=str(tiny_file), val_frac=0.1, test_frac=0)
    assert stats["chars"]["test"] == 0 and stats["chars"]["val"] > 0


def test_lines_are_shuffled_by_seed_and_complete(tmp_path):
    names = "".join(f"name{i}\n" for i in range(100))
    (tmp_path / "names.txt").write_text(names)
    a = prepare(tmp_path, source="file", path=str(tmp_path / "names.txt"), format="lines", split_seed=1)
    got = {s: (tmp_path / "out" / f"{s}.txt").read_text().split("\n")[:-1] for s in corpus.SPLITS}
    assert a["lines"] == {"train": 90, "val": 5, "test": 5}
    assert sorted(sum(got.values(), [])) == sorted(names.split())
    assert got["train"][:10] != [f"name{i}" for i in range(10)]  # shuffled
    prepare(tmp_path, source="file", path=str(tmp_path / "names.txt"), format="lines", split_seed=1)
    assert (tmp_path / "out" / "val.txt").read_text().split("\n")[:-1] == got["val"]  # reproducible


def test_glob_and_cleaning(tmp_path):
    (tmp_path / "a.txt").write_text("Café\r\nONE\n")
    (tmp_path / "b.txt").write_text("Two\n" * 40)
    stats = prepare(tmp_path, source="file", path=str(tmp_path / "*.txt"), lowercase=True, normalize="NFKC")
    text = "".join((tmp_path / "out" / f"{s}.txt").read_text() for s in corpus.SPLITS)
    assert text.startswith("café\none\ntwo\n") and "\r" not in text
    assert stats["distinct_chars"] == len(set(text))


def test_url_with_pinned_checksum_is_cached(tiny_file, tmp_path):
    sha = sha256_bytes(tiny_file.read_bytes())
    prepare(tmp_path, source="url", url=tiny_file.as_uri(), sha256=sha)
    assert (tmp_path / "raw" / "tiny.txt").read_bytes() == tiny_file.read_bytes()
    tiny_file.unlink()  # the cached copy is used: no download needed
    prepare(tmp_path, source="url", url=tiny_file.as_uri(), sha256=sha)


@pytest.mark.parametrize(
    "content, kw, message",
    [
        (b"", {}, "is empty"),
        (b"   \n\n", {}, "is empty"),
        (b"abc\x00def\n", {}, "looks binary (NUL byte at byte offset 3)"),
        ("caf\u00e9\n".encode("latin-1"), {}, "is not UTF-8: byte 0xe9 at byte offset 3"),
        (b"tiny\n", {}, "too small for the split"),
        (b"one\ntwo\n", {"format": "lines"}, "too small for the split"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, content, kw, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        prepare(tmp_path, source="file", path=str(path), **kw)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"source": "file", "path": "no/such/file.txt"}, "matches no file"),
        ({"source": "file", "path": "no/such/*.txt"}, "matches no file"),
        ({"source": "file", "path": None}, "needs a path"),
        ({"source": "url", "url": "http://127.0.0.1:9/x.txt", "sha256": "0" * 64}, "cannot download"),
        ({"source": "nope"}, "corpus.source='nope' is not known; use one of shakespeare, file, url"),
        ({"source": "file", "path": "x", "format": "csv"}, "corpus.format='csv' is not known"),
        ({"source": "file", "path": "x", "val_frac": 0.6, "test_frac": 0.5}, "leave no training data"),
    ],
)
def test_bad_specs_are_one_line_errors(tmp_path, kw, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        prepare(tmp_path, **kw)


def test_url_checksum_mismatch_and_missing_checksum(tiny_file, tmp_path):
    with pytest.raises(UserError, match="has sha256 .* but corpus.sha256 pins"):
        prepare(tmp_path, source="url", url=tiny_file.as_uri(), sha256="0" * 64)
    digest = sha256_bytes(tiny_file.read_bytes())
    with pytest.raises(UserError, match=f"pin it: corpus.sha256={digest}"):
        prepare(tmp_path, source="url", url=tiny_file.as_uri(), sha256=None)
    assert not (tmp_path / "raw" / "tiny.txt").exists()


@pytest.mark.skipif(not SHARED_CORPORA.exists(), reason="../shared/corpora is not on this machine")
def test_shared_names_as_lines(tmp_path):
    stats = prepare(tmp_path, source="file", path=str(SHARED_CORPORA / "names.txt"), format="lines")
    assert sum(stats["lines"].values()) == 32033


# --- pre-split corpora, exact cuts, bytes, archives ----------------------------------------------------


def write_splits(folder: Path, texts: dict[str, str]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return {name: folder / f"{name}.txt" for name in texts}


SPLIT_TEXTS = {"train": "the cat sat .\nthe dog ran !\n", "val": "a cow sat\n", "test": "the <unk> ran .\n"}


def test_presplit_files_train_on_exactly_those_files(tmp_path, monkeypatch, capsys):
    """The done-when check of `dvc exp run -S corpus=file -S corpus.splits.train=… … -S vocab=word`: the real
    config composed with those overrides, run through the prepare and vocab stages."""
    from conftest import REPO
    from rnnlab.config import compose
    from rnnlab.stages import prepare as prepare_stage
    from rnnlab.stages import vocab as vocab_stage
    from rnnlab.vocab import VocabDir

    write_splits(tmp_path / "corpus", SPLIT_TEXTS)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # split paths are relative to the repository root
    paths = [f"paths.{k}={tmp_path / 'data' / k}" for k in ("raw", "prepared", "vocab")]
    params = compose(["corpus=file", "vocab=word", "vocab.tokenizer=whitespace", *paths,
                      *(f"corpus.splits.{name}=corpus/{name}.txt" for name in corpus.SPLITS)], REPO / "conf")
    prepare_stage.run(params)
    assert {s: corpus.read_split(tmp_path / "data" / "prepared", s) for s in corpus.SPLITS} == SPLIT_TEXTS
    stats = vocab_stage.run(params)
    for name, text in SPLIT_TEXTS.items():  # whitespace tokens + one <eos> per line
        assert stats["splits"][name]["tokens"] == len(text.split()) + text.count("\n")
    assert stats == VocabDir(tmp_path / "data" / "vocab").stats()
    assert "OOV rate val" in capsys.readouterr().out


def test_presplit_without_test_and_with_lists(tmp_path):
    files = write_splits(tmp_path / "c", {"a": "one\n", "b": "two", "v": "Café\r\n"})
    stats = prepare(tmp_path, source="file", splits={"train": [str(files["a"]), str(files["b"])],
                                                     "val": str(files["v"]), "test": None}, normalize="NFKC")
    got = {s: (tmp_path / "out" / f"{s}.txt").read_text() for s in corpus.SPLITS}
    assert got == {"train": "one\ntwo\n", "val": "Café\n", "test": ""}
    assert stats["chars"]["test"] == 0 and stats["lines"]["train"] == 2


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"path": "x.txt", "splits": {"train": "a", "val": "b"}}, "corpus.path and corpus.splits are both set"),
        ({"splits": {"train": "a"}}, "corpus.splits.val is not set"),
        ({"splits": {"train": "a", "valid": "b"}}, "corpus.splits.valid is not a split"),
        ({"splits": {"train": "a", "val": "no/such/*.txt"}}, "corpus.splits.val 'no/such/*.txt' matches no file"),
        ({"splits": {"train": "a", "val": 3}}, "corpus.splits.val=3: expected a path"),
        ({"source": "url", "splits": {"train": {"url": "x"}, "val": {"url": "y"}}}, "corpus.splits.train="),
        ({"source": "shakespeare", "splits": {"train": "a", "val": "b"}}, "corpus.splits is for corpus=file"),
        ({"members": "x"}, "corpus.members names files inside the archive"),
        ({"path": "x", "val_chars": 5, "format": "lines"}, "cut running text"),
        ({"path": "x", "encoding": "latin-1"}, "corpus.encoding='latin-1' is not known"),
        ({"source": "url", "url": "http://x/a.zip", "sha256": "ABC"}, "corpus.sha256='ABC': expected 64"),
    ],
)
def test_bad_presplit_specs_are_one_line_errors(tmp_path, monkeypatch, kw, message):
    (tmp_path / "a").write_text("some text\n")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("*", r"\*")) as err:
        prepare(tmp_path, **({"source": "file"} | kw))
    assert "\n" not in str(err.value)


def test_empty_presplit_split_names_it(tmp_path):
    files = write_splits(tmp_path / "c", {"train": "text\n", "val": " \n"})
    with pytest.raises(UserError, match="corpus.splits.val is empty after cleaning"):
        prepare(tmp_path, source="file", splits={k: str(v) for k, v in files.items()})
    assert not (tmp_path / "out").exists()


def test_exact_character_cuts_ignore_line_starts(tiny_file, tmp_path):
    stats = prepare(tmp_path, source="file", path=str(tiny_file), val_chars=101, test_chars=57)
    parts = {s: (tmp_path / "out" / f"{s}.txt").read_text() for s in corpus.SPLITS}
    assert "".join(parts.values()) == TINY_TEXT
    assert (len(parts["val"]), len(parts["test"])) == (101, 57) and stats["chars"]["test"] == 57
    with pytest.raises(UserError, match="too small for corpus.val_chars=4000 plus corpus.test_chars=4000"):
        prepare(tmp_path, source="file", path=str(tiny_file), val_chars=4000, test_chars=4000)


def test_bytes_encoding_keeps_every_byte(tmp_path):
    data = bytes(range(256)) + b"a\r\nb\rc\n"
    (tmp_path / "bin.dat").write_bytes(data)
    stats = prepare(tmp_path, source="file", path=str(tmp_path / "bin.dat"), encoding="bytes", normalize="none",
                    val_chars=10, test_chars=0)
    text = "".join(corpus.read_split(tmp_path / "out", s) for s in corpus.SPLITS)
    assert text.encode("latin-1") == data and stats["chars"]["total"] == len(data)


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_archive_members_outside_the_folder_are_refused(tmp_path, member):
    import zipfile

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(member, "evil\n")
    with pytest.raises(UserError, match="is refused"):
        prepare(tmp_path, source="url", url=archive.as_uri(), sha256=sha256_bytes(archive.read_bytes()), members=member)
    assert not (tmp_path / "evil.txt").exists() and not Path("/etc/evil.txt").exists()


def test_tar_archive_members_and_a_missing_member(tmp_path):
    import io
    import tarfile

    archive = tmp_path / "corpus.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, text in SPLIT_TEXTS.items():
            info = tarfile.TarInfo(f"c/{name}.txt")
            info.size = len(text.encode())
            tf.addfile(info, io.BytesIO(text.encode()))
    sha = sha256_bytes(archive.read_bytes())
    members = {name: f"c/{name}.txt" for name in corpus.SPLITS}
    prepare(tmp_path, source="url", url=archive.as_uri(), sha256=sha, members=members)
    assert {s: corpus.read_split(tmp_path / "out", s) for s in corpus.SPLITS} == SPLIT_TEXTS
    assert (tmp_path / "raw" / "corpus" / "c" / "val.txt").read_text() == SPLIT_TEXTS["val"]
    with pytest.raises(UserError, match="corpus.tar.gz has no member 'c/nope.txt'; it holds: c/train.txt"):
        prepare(tmp_path, source="url", url=archive.as_uri(), sha256=sha, members=members | {"val": "c/nope.txt"})
