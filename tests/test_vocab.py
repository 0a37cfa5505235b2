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
