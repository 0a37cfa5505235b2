"""Corpus preparation: sources, cleaning, splits, and every user error."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import tracemalloc
from pathlib import Path

import pytest

from conftest import SHARED_CORPORA, TINY_TEXT, conf_spec
from rnnlab import corpus, shakespeare, sources, splits
from rnnlab.errors import UserError
from rnnlab.files import sha256_bytes, sha256_file


def prepare(tmp_path: Path, **kw) -> dict:
    return corpus.prepare(conf_spec("corpus", **kw), tmp_path / "out", tmp_path / "raw")


def test_markdown_play_becomes_speaker_verse_blank_line():
    md = (
        "# Macbeth\n\n## ACT I\n\n_Thunder. Enter three Witches_\n\n**First Witch**  \n"
        "When shall we three meet again  \nIn thunder, _\\[Aside]_ or in rain?\n\n_Exeunt_\n\n"
        "Who comes here\\--now?\n"
    )
    assert shakespeare.markdown_play_to_text(md) == (
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


# --- streaming reads: max_chars bounds memory, the outputs stay those of the whole file ----------------

# Pieces that test every place a cut could go wrong: "\r\n" and "\r", blank and space-only lines, 2-, 3- and
# 4-byte characters, combining marks alone and after a base (NFC composes and reorders them), Hangul jamo
# that compose, a compatibility ligature (NFKC), final sigma and a case-ignorable "'" (lowercase).
PIECES = ["the", "cat", " ", " ", "\n", "\n", "\r\n", "\r", "\n\n", " \n", "é", "€", "𝄞", "e\u0301", "\u0301",
          "\u0323\u0301", "\u1100\u1161", "\u1161", "ﬁ", "ΟΔΟΣ", "Σ", "Σ'", "İ", "\t"]


def random_texts(rng, count: int) -> list[str]:
    return ["".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 500))) for _ in range(count)]


def prepared(tmp_path: Path, spec) -> tuple[dict, dict] | str:
    """What `prepare` writes (stats, split file bytes), or its one-line error."""
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    try:
        stats = corpus.prepare(spec, out, tmp_path / "raw")
    except UserError as err:
        return str(err)
    return stats, {name: (out / f"{name}.txt").read_bytes() for name in corpus.SPLITS}


def in_memory(raw: str | dict[str, str], sha: str, spec) -> tuple[dict, dict] | str:
    """The oracle: what preparing the corpus whole in memory writes (the code before issue 20), or its error."""
    try:
        if isinstance(raw, dict):
            parts = {name: corpus.clean(raw.get(name, ""), spec) for name in corpus.SPLITS}
            splits.check_presplit({name: not part.strip() for name, part in parts.items()},
                                  {name: parts[name] == parts["train"] for name in ("val", "test")}, spec)
            text = "".join(parts.values())
        else:
            text = corpus.clean(raw, spec)
            if not text.strip():
                raise UserError("the corpus (file) is empty after cleaning; give a file with some text in it")
            parts = splits.split(text, spec)
    except UserError as err:
        return str(err)
    stats = {"source": "file", "format": spec.format, "input_sha256": sha,
             "chars": {name: len(part) for name, part in parts.items()} | {"total": len(text)},
             "lines": {name: part.count("\n") for name, part in parts.items()}, "distinct_chars": len(set(text))}
    return stats, {name: part.encode() for name, part in parts.items()}


@pytest.mark.slow  # each case prepares a corpus twice
@pytest.mark.parametrize("kw", [
    {},
    {"format": "lines"},
    {"normalize": "NFKC", "lowercase": True},
    {"format": "lines", "normalize": "NFD", "lowercase": True},
    {"encoding": "bytes", "normalize": "none"},
    {"presplit": True, "normalize": "NFC", "lowercase": True},
    {"val_chars": 20, "test_chars": 10},
])
def test_block_by_block_preparation_writes_what_the_whole_text_in_memory_gives(tmp_path, monkeypatch, kw):
    """Tiny blocks everywhere (multi-byte characters cut between reads, cleaning, spool pieces and copies),
    with and without max_chars: the files and stats are those of cleaning and splitting the whole text."""
    from rnnlab import spool

    for module, name, value in [(sources, "CHUNK", 7), (corpus, "BLOCK", 23), (corpus, "MARGIN", 0),
                                (spool, "PIECE", 11), (spool, "COPY", 5)]:
        monkeypatch.setattr(module, name, value)
    rng = random.Random(str(kw))
    kw = dict(kw)
    presplit, errors, cases = kw.pop("presplit", False), 0, 0
    for trial in range(12):
        texts = random_texts(rng, rng.randrange(2, 5))  # presplit: the last one is val
        paths = [tmp_path / f"in{trial}_{i}.txt" for i in range(len(texts))]
        for path, text in zip(paths, texts):
            path.write_bytes(text.encode())
        where = ({"splits": {"train": [str(p) for p in paths[:-1]], "val": str(paths[-1])}} if presplit
                 else {"path": [str(p) for p in paths]})
        read = [t.encode().decode("latin-1") if "encoding" in kw else t if t.endswith("\n") or not t else t + "\n"
                for t in texts]
        raw = {"train": "".join(read[:-1]), "val": read[-1]} if presplit else "".join(read)
        sha = sha256_bytes(b"".join(t.encode() for t in texts))
        for max_chars in (None, 30, 97, 400):
            spec = conf_spec("corpus", source="file", max_chars=max_chars, val_frac=0.2, test_frac=0.2, **where, **kw)
            got = prepared(tmp_path, spec)
            assert got == in_memory(raw, sha, spec)
            errors, cases = errors + isinstance(got, str), cases + 1
    assert errors < cases // 2  # mostly corpora that prepare



def big_file(tmp_path, line: bytes, megabytes: int):
    """tmp_path/big.txt: `line` repeated to about `megabytes` MB."""
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        for _ in range(megabytes):
            fh.write(line * (2**20 // len(line)))
    return big


def prepare_traced(spec, tmp_path) -> tuple[dict, int]:
    """corpus.prepare's statistics and its peak traced memory (bytes)."""
    tracemalloc.start()
    try:
        stats = corpus.prepare(spec, tmp_path / "out", tmp_path / "raw")
        return stats, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_max_chars_bounds_the_memory_a_large_file_needs(tmp_path):
    line = "the cat , which ate the fish , was full .\n".encode()
    big = big_file(tmp_path, line, 60)
    stats, peak = prepare_traced(conf_spec("corpus", source="file", path=str(big), max_chars=10_000), tmp_path)
    assert stats["chars"]["total"] == 10_000 and stats["input_sha256"] == sha256_file(big)
    assert peak < 4 * 2**20  # reading the file whole: over 120 MB (its bytes and its text)


@pytest.mark.slow  # prepares a 120 MB file
def test_preparing_a_large_file_takes_the_memory_of_a_few_blocks(tmp_path, monkeypatch):
    """Without max_chars too: the text is cleaned a block at a time into a spool (a temporary file) and
    copied from there: 4 MB here. Read whole (before issue 20), this 24 MB file took 530 MB: a str of 4
    bytes a character (because of the emoji), its cleaned copies, the parts."""
    line = "the cat , which ate the fish 🙂 , was full .\r\n".encode()
    big = big_file(tmp_path, line, 24)
    monkeypatch.setattr(corpus, "BLOCK", 1 << 16)
    stats, peak = prepare_traced(conf_spec("corpus", source="file", path=str(big), lowercase=True), tmp_path)
    assert stats["chars"]["total"] == 24 * (2**20 // len(line)) * (len(line) - 4)  # "\r\n" -> "\n", 🙂: 4 bytes
    assert stats["input_sha256"] == sha256_file(big) and stats["distinct_chars"] == len(set(line.decode())) - 1
    assert peak < 8 * 2**20


def test_the_utf8_checks_still_cover_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK", 5)
    path = tmp_path / "late.txt"
    for tail, message in [(b"caf\xc3", "byte 0xc3 at byte offset 1003"), (b"\xe2\x82", "byte 0xe2 at byte offset 1000"),
                          (b"ok\xff \x00", r"NUL byte at byte offset 1004")]:
        path.write_bytes(b"word " * 200 + tail)
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            prepare(tmp_path, source="file", path=str(path), max_chars=20)


# --- unreadable inputs, unwritable outputs: one line each ---------------------------------------------


def deny_open(monkeypatch, denied: Path, error: OSError) -> None:
    """Make `open` of `denied` raise `error` (as it would for a file without read permission, even as root)."""
    real_open = open

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file) == denied:
            raise error
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)


@pytest.mark.parametrize("error, why", [
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    (IsADirectoryError(errno.EISDIR, "Is a directory"), "Is a directory"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error"),
])
def test_an_unreadable_corpus_file_is_one_line(tiny_file, tmp_path, monkeypatch, error, why):
    deny_open(monkeypatch, tiny_file, error)
    with pytest.raises(UserError) as err:
        prepare(tmp_path, source="file", path=str(tiny_file), max_chars=1000)
    assert str(err.value) == (f"cannot read {tiny_file} ({why}); "
                              "check its permissions, or point corpus.path at a readable file")
    assert not (tmp_path / "out").exists()


def test_a_folder_read_as_a_corpus_file_is_one_line(tmp_path):
    spec = conf_spec("corpus", source="file", path="x")
    with pytest.raises(UserError, match=f"cannot read {tmp_path} \\(Is a directory\\); check its permissions"):
        inputs = {"train": [sources.Input(tmp_path, str(tmp_path), "check its permissions")]}
        list(sources.read_inputs(inputs, spec, hashlib.sha256())["train"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_a_corpus_file_without_read_permission_is_one_line(tiny_file, tmp_path):
    tiny_file.chmod(0)
    with pytest.raises(UserError, match=f"cannot read {tiny_file} \\(Permission denied\\); check its permissions"):
        prepare(tmp_path, source="file", path=str(tiny_file))


def test_a_file_where_the_output_folder_should_be_is_one_line(tmp_path):
    from conftest import tiny_params
    from rnnlab.stages import prepare as prepare_stage

    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    for prepared_dir in (blocker / "prepared", blocker):  # mkdir fails: NotADirectoryError, FileExistsError
        with pytest.raises(UserError) as err:
            prepare_stage.run(tiny_params(tmp_path, f"paths.prepared={prepared_dir}"))
        why = "Not a directory" if prepared_dir != blocker else "File exists"
        assert str(err.value) == (f"cannot write {prepared_dir / 'train.txt'}: {why}; {blocker} is a file, not a "
                                  "folder: move it, or choose another folder with the paths.* key that names this one")
    assert blocker.read_text() == "a file, not a folder\n"


@pytest.mark.parametrize("code, why, fix", [
    (errno.EACCES, "Permission denied", "make {folder} writable, or choose another folder with the paths.* key"),
    (errno.EROFS, "Read-only file system", "make {folder} writable, or choose another folder with the paths.* key"),
    (errno.ENOSPC, "No space left on device", "free some space and run again (the previous version of the file"),
])
def test_an_unwritable_output_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, code, why, fix):
    from conftest import tiny_params
    from rnnlab.stages import prepare as prepare_stage

    params = tiny_params(tmp_path)
    folder = tmp_path / "data" / "prepared"

    def refuse(src, dst):
        raise OSError(code, why)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(UserError) as err:
        prepare_stage.run(params)
    assert str(err.value).startswith(f"cannot write {folder / 'train.txt'}: {why}; {fix.format(folder=folder)}")
    assert "\n" not in str(err.value) and list(folder.iterdir()) == []


def test_a_folder_in_place_of_the_output_file_is_one_line(tmp_path):
    from rnnlab.files import write_text

    (tmp_path / "stats.json").mkdir()
    with pytest.raises(UserError, match=r"stats\.json: Is a directory; .*stats\.json is a folder: move it"):
        write_text(tmp_path / "stats.json", "{}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its permissions")
def test_a_read_only_output_folder_is_one_line(tmp_path):
    from conftest import tiny_params
    from rnnlab.stages import prepare as prepare_stage

    folder = tmp_path / "data" / "prepared"
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    with pytest.raises(UserError, match=f"cannot write {folder / 'train.txt'}: Permission denied; make {folder} writable"):
        prepare_stage.run(tiny_params(tmp_path))
