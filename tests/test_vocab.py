"""Vocabulary: train-only, round trips, <eos>/<unk> rules, persistence, and user errors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from conftest import conf_spec
from rnnlab import vocab as V
from rnnlab.errors import UserError

TEXT = {"train": "the cat sat.\nthe dog ran!\n", "val": "the cow sat.\n", "test": "a cat ran\n"}


def test_char_round_trip_and_newline_is_a_char():
    voc = V.build(TEXT["train"], conf_spec("vocab", level="char"), line_corpus=False)
    assert voc.tokens[:2] == ["<eos>", "<unk>"] and "\n" in voc.tokens
    ids = voc.encode(TEXT["train"])
    assert ids.dtype == np.uint16 and len(ids) == len(TEXT["train"])
    assert voc.decode(ids) == TEXT["train"]


def test_vocabulary_comes_from_train_only_and_oov_maps_to_unk():
    voc = V.build(TEXT["train"], conf_spec("vocab", level="char"), line_corpus=False)
    assert "w" not in voc.index  # "cow" is in val only
    ids = voc.encode(TEXT["val"])
    assert (ids == V.UNK_ID).sum() == 1
    assert voc.decode(ids) == "the co<unk> sat.\n"


def test_char_line_corpus_ends_lines_with_eos():
    voc = V.build("ann\nbob\n", conf_spec("vocab", level="char"), line_corpus=True)
    assert "\n" not in voc.tokens
    ids = voc.encode("ann\nbob\n")
    assert ids.tolist() == [voc.index["a"], voc.index["n"], voc.index["n"], V.EOS_ID,
                            voc.index["b"], voc.index["o"], voc.index["b"], V.EOS_ID]
    assert voc.decode(ids) == "ann\nbob\n"


def test_word_level_tokens_punctuation_and_eos():
    voc = V.build(TEXT["train"], conf_spec("vocab", level="word", min_freq=1), line_corpus=False)
    assert voc.tokenize("the cat's hat.\n") == ["the", "cat's", "hat", ".", "<eos>"]
    assert voc.tokens[2] == "the"  # most frequent first
    ids = voc.encode(TEXT["train"])
    assert voc.decode(ids) == "the cat sat .\nthe dog ran !\n"
    assert voc.decode(voc.encode("the cow sat.\n")) == "the <unk> sat .\n"


def test_whitespace_tokenizer_for_pretokenised_text():
    voc = V.build("a b. c\n", conf_spec("vocab", level="word", tokenizer="whitespace"), line_corpus=False)
    assert voc.tokenize("a b. c\n") == ["a", "b.", "c", "<eos>"]


def test_min_freq_max_size_and_lowercase():
    spec = conf_spec("vocab", level="word", min_freq=2, lowercase=True)
    voc = V.build("The cat\nthe dog\n", spec, line_corpus=False)
    assert voc.tokens == ["<eos>", "<unk>", "the"]
    voc = V.build(TEXT["train"], conf_spec("vocab", level="word", max_size=3), line_corpus=False)
    assert voc.tokens == ["<eos>", "<unk>", "the"]
    voc = V.build("aab\n", conf_spec("vocab", level="char", min_freq=2), line_corpus=False)
    assert voc.decode(voc.encode("aab")) == "aa<unk>"


@pytest.mark.parametrize("spec", [conf_spec("vocab", level="word", min_freq=5), conf_spec("vocab", level="word", max_size=2),
                                  conf_spec("vocab", level="char", min_freq=100)])
def test_empty_vocabulary_is_a_user_error(spec):
    with pytest.raises(UserError, match="leave an empty vocabulary"):
        V.build(TEXT["train"], spec, line_corpus=False)


@pytest.mark.parametrize("kw, message", [({"level": "byte"}, "vocab.level='byte'"),
                                         ({"tokenizer": "bpe"}, "vocab.tokenizer='bpe'"),
                                         ({"min_freq": 0}, "vocab.min_freq=0")])
def test_bad_spec(kw, message):
    with pytest.raises(UserError, match=message):
        conf_spec("vocab", **kw)


def test_stage_outputs_and_json_round_trip(tmp_path):
    stats = V.build_and_encode(TEXT, conf_spec("vocab", level="word"), False, tmp_path)
    folder = V.VocabDir(tmp_path)  # the one reader of the folder's layout
    voc = folder.vocab()
    assert voc.hash == stats["hash"] and len(voc) == stats["size"] and folder.stats() == stats
    assert voc.decode(folder.ids("test")) == "<unk> cat ran\n"
    assert folder.chars_per_token("test") == len(TEXT["test"]) / 4  # "<unk> cat ran <eos>"
    assert stats["oov_rate"]["test"] == pytest.approx(1 / 4)
    assert stats["splits"]["val"]["chars"] == len(TEXT["val"])
    assert stats["coverage"] == 1.0
    data = json.loads((tmp_path / "vocab.json").read_text())
    data["tokens"][2] = "THE"
    (tmp_path / "vocab.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="was edited"):
        V.Vocab.load(tmp_path / "vocab.json")


def test_missing_vocabulary_names_the_stage(tmp_path):
    with pytest.raises(UserError, match="dvc repro vocab"):
        V.Vocab.load(tmp_path / "vocab.json")
    for read in (V.VocabDir(tmp_path).stats, lambda: V.VocabDir(tmp_path).ids("val")):
        with pytest.raises(UserError, match="dvc repro vocab"):
            read()


def test_hash_is_stable_and_content_sensitive():
    a = V.build(TEXT["train"], conf_spec("vocab", level="char"), line_corpus=False)
    b = V.build(TEXT["train"], conf_spec("vocab", level="char"), line_corpus=False)
    c = V.build(TEXT["train"], conf_spec("vocab", level="char"), line_corpus=True)
    assert a.hash == b.hash != c.hash


# --- the corpus's own <unk> (vocab.unk_token) ------------------------------------------------------------

PTB_STYLE = " the <unk> sat on N mats \n a <unk> dog ran \n the cat sat \n"


@pytest.mark.parametrize("tokenizer", ["whitespace", "words"])
def test_literal_unk_is_the_vocabularys_unk(tokenizer):
    spec = conf_spec("vocab", level="word", tokenizer=tokenizer, min_freq=1, max_size=None)
    voc = V.build(PTB_STYLE, spec, line_corpus=False)
    words = set(PTB_STYLE.split()) - {"<unk>"}
    assert len(voc) == len(words) + 2 and voc.tokens.count("<unk>") == 1  # + <eos>, <unk>
    assert voc.tokenize("a <unk> b\n") == ["a", "<unk>", "b", "<eos>"]  # one token, also for `words`
    ids = voc.encode(PTB_STYLE)
    assert ids.tolist().count(V.UNK_ID) == PTB_STYLE.count("<unk>")
    assert voc.decode(voc.encode("the <unk> sat\n")) == "the <unk> sat\n"


def test_custom_unk_token_is_stored_hashed_and_loaded(tmp_path):
    spec = conf_spec("vocab", level="word", tokenizer="words", min_freq=1, unk_token="[UNK]", lowercase=True)
    voc = V.build("The [UNK] sat.\n[unk] ran\n", spec, line_corpus=False)
    assert "[UNK]" not in voc.tokens and "[unk]" not in voc.tokens and "[" not in voc.tokens
    assert voc.encode("a [UNK] b\n").tolist()[1] == V.UNK_ID
    voc.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text())["unk_token"] == "[UNK]"
    loaded = V.Vocab.load(tmp_path / "vocab.json")
    assert loaded.unk_token == "[UNK]" and loaded.hash == voc.hash
    default = V.build("The [UNK] sat.\n[unk] ran\n", conf_spec("vocab", level="word", min_freq=1, lowercase=True), False)
    assert default.hash != voc.hash


def test_default_unk_token_keeps_old_hashes_and_files(tmp_path):
    """Vocabularies written before unk_token existed load as `<unk>` with the same hash."""
    voc = V.build(TEXT["train"], conf_spec("vocab", level="word"), line_corpus=False)
    data = voc.to_json()
    assert "unk_token" not in data
    keys = {k: data[k] for k in ("level", "tokens", "lowercase", "tokenizer", "newline_is_eos")}
    assert voc.hash == hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert V.Vocab.load(tmp_path / "old.json").unk_token == "<unk>"


def test_unk_token_has_no_effect_at_char_level():
    a = V.build("a <unk> b\n", conf_spec("vocab", level="char"), line_corpus=False)
    b = V.build("a <unk> b\n", conf_spec("vocab", level="char", unk_token="[X]"), line_corpus=False)
    assert a.hash == b.hash and "<" in a.tokens and V.UNK_ID not in a.encode("a <unk> b\n")


@pytest.mark.parametrize("bad", ["", "< unk >", "<eos>"])
def test_bad_unk_token(bad):
    with pytest.raises(UserError, match="vocab.unk_token="):
        conf_spec("vocab", level="word", unk_token=bad)


# --- block by block: the vocab stage's memory is a block's, its files those of the whole text --------------

BLOCK_PIECES = ["the", "cat", "ran", " ", " ", "\n", "\n", "\n\n", ".", "'", "é", "𝄞", "ΟΔΟΣ", "Σ", "İ", "<unk>",
                "<UNK>", "\r", "\t", "日本"]


def write_prepared(folder, texts: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / f"{name}.txt").write_bytes(text.encode())
    return folder


@pytest.mark.parametrize("kw, line_corpus", [
    ({"level": "char"}, False), ({"level": "char", "lowercase": True}, True), ({"level": "char", "min_freq": 3}, False),
    ({"level": "word", "min_freq": 1}, False), ({"level": "word", "lowercase": True, "max_size": 30}, True),
    ({"level": "word", "tokenizer": "whitespace", "unk_token": "<UNK>"}, False),
])
def test_blocks_encode_as_the_whole_text_does(tmp_path, monkeypatch, kw, line_corpus):
    """Splits read in blocks of a few characters (SplitBlocks) give the files of encoding each split whole,
    and each .npy holds the bytes np.save writes for the ids of the whole text (an empty test split too)."""
    import random
    import io

    from rnnlab import corpus

    rng = random.Random(str(kw))
    texts = {name: "".join(rng.choice(BLOCK_PIECES) for _ in range(n)) for name, n in
             (("train", 3000), ("val", 300), ("test", rng.choice([0, 200])))}
    spec = conf_spec("vocab", **kw)
    whole = V.build_and_encode(texts, spec, line_corpus, tmp_path / "whole")
    monkeypatch.setattr(corpus, "BLOCK", 7)
    prepared = write_prepared(tmp_path / "prepared", texts)
    assert "".join(corpus.SplitBlocks(prepared, "train")) == texts["train"]
    blocks = V.build_and_encode({name: corpus.SplitBlocks(prepared, name) for name in texts}, spec, line_corpus,
                                tmp_path / "blocks")
    assert blocks == whole
    voc = V.VocabDir(tmp_path / "blocks").vocab()
    for name, text in texts.items():
        written = (tmp_path / "blocks" / f"{name}.npy").read_bytes()
        assert written == (tmp_path / "whole" / f"{name}.npy").read_bytes()
        if voc.level == "char":  # the oracle: one lookup per character (per token below)
            chars = text.lower() if voc.lowercase else text
            ids = [V.EOS_ID if c == "\n" and voc.newline_is_eos else voc.index.get(c, V.UNK_ID) for c in chars]
        else:
            ids = [voc.index.get(tok, V.UNK_ID) for tok in voc.tokenize(text)]
        saved = io.BytesIO()
        np.save(saved, np.array(ids, dtype=voc.dtype), allow_pickle=False)
        assert written == saved.getvalue()
    assert (tmp_path / "blocks" / "vocab.json").read_bytes() == (tmp_path / "whole" / "vocab.json").read_bytes()


def test_split_blocks_are_whole_lines(tmp_path):
    from rnnlab import corpus

    texts = {"train": "ab\ncd\n" + "x" * 50 + "\nlast", "val": "", "test": "\n\n\n"}
    prepared = write_prepared(tmp_path, texts)
    for name, text in texts.items():
        blocks = list(corpus.SplitBlocks(prepared, name, size=4))
        assert "".join(blocks) == text == corpus.read_split(prepared, name)
        assert all(block.endswith("\n") for block in blocks[:-1]) and all(blocks[:-1])
    assert list(corpus.SplitBlocks(prepared, "val")) == [""]  # word level: an empty split is one <eos>
    assert list(corpus.SplitBlocks(prepared, "train", size=4))[2] == "x" * 50 + "\n"  # a long line, a long block


def test_a_damaged_split_is_one_line_before_anything_is_written(tmp_path):
    from conftest import tiny_params
    from rnnlab.stages import prepare as prepare_stage
    from rnnlab.stages import vocab as vocab_stage

    params = tiny_params(tmp_path)
    prepare_stage.run(params)
    val = tmp_path / "data" / "prepared" / "val.txt"
    val.write_bytes(val.read_bytes()[:50] + b"\xff" + val.read_bytes()[50:])
    with pytest.raises(UserError) as err:
        vocab_stage.run(params)
    assert str(err.value).startswith(f"{val} is damaged or not a file rnnlab wrote (UnicodeDecodeError")
    assert not (tmp_path / "data" / "vocab").exists() or not list((tmp_path / "data" / "vocab").iterdir())


@pytest.mark.slow  # builds vocabularies of large files
@pytest.mark.parametrize("level, lines, limit_mb", [("char", 100_000, 16), ("word", 20_000, 6)])
def test_the_vocab_stage_takes_the_memory_of_a_block(tmp_path, monkeypatch, level, lines, limit_mb):
    """Given whole (a str per split), the same stage takes 77 MB at char level for the 4.4 MB train split (a
    str of 4 bytes a character, its code points, its ids) and 20 MB at word level for the 0.9 MB one (its
    tokens); in blocks, 12 MB (mostly the counts and the id table of every code point) and 2 MB."""
    import tracemalloc

    from rnnlab import corpus

    line = "the cat , which ate the fish 🙂 , was full .\n"  # the emoji: 4 bytes a character in a str
    prepared = write_prepared(tmp_path / "prepared", {"train": line * lines, "val": line * 100, "test": line})
    spec = conf_spec("vocab", level=level)
    monkeypatch.setattr(corpus, "BLOCK", 1 << 16)
    tracemalloc.start()
    try:
        V.build_and_encode({name: corpus.SplitBlocks(prepared, name) for name in corpus.SPLITS}, spec, False,
                           tmp_path / "vocab")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit_mb * 2**20
