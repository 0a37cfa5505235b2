"""Config: conf/ composes to the committed params.yaml; variants; one-line errors; stale params.yaml."""

from __future__ import annotations

import shutil

import pytest
from hydra import compose, initialize

from conftest import REPO, run
from rnnlab import config
from rnnlab.errors import UserError
from rnnlab.params import build
from rnnlab.schema import CorpusSpec


def test_committed_params_yaml_is_the_default_composition():
    composed = config.to_yaml(config.compose_config([], REPO / "conf"))
    assert (REPO / "params.yaml").read_text() == composed, (
        "params.yaml differs from conf/: run `python -m rnnlab.config` and commit params.yaml"
    )


def test_variants_compose_with_hydra_compose_api():
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("config", overrides=["vocab=word", "corpus=file", "corpus.path=x.txt", "corpus.format=lines"])
    assert cfg.vocab.level == "word" and cfg.corpus.source == "file"
    spec = config.compose(["vocab=word", "corpus=file", "corpus.path=x.txt", "corpus.format=lines"], REPO / "conf").corpus
    assert spec.path == "x.txt" and spec.format == "lines"
    assert config.compose(["vocab=word"], REPO / "conf").vocab.min_freq == 2


def test_unknown_group_option_lists_valid_ones():
    with pytest.raises(UserError, match=r"unknown option vocab=bpe; valid options: char, pretokenized, word"):
        config.compose(["vocab=bpe"], REPO / "conf")


def test_unknown_key_is_one_line():
    with pytest.raises(UserError) as err:
        config.compose(["corpus.no_such_key=1"], REPO / "conf")
    assert "no_such_key" in str(err.value) and "\n" not in str(err.value)


def test_section_rejects_unknown_missing_and_unset_keys():
    values = config.defaults(REPO / "conf").section("corpus") | {"source": "file", "path": "???", "colour": 1}
    with pytest.raises(UserError, match="unknown key corpus.colour; valid keys of corpus: "):
        build(CorpusSpec, "corpus", values)
    del values["colour"]
    with pytest.raises(UserError, match=r"corpus.path must be set: add corpus.path=<value>"):
        build(CorpusSpec, "corpus", values)
    del values["path"]
    with pytest.raises(UserError, match=r"^corpus.path is not set; recompose it: python -m rnnlab.config"):
        build(CorpusSpec, "corpus", values)


def test_stale_params_yaml_is_noticed(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    conf, params, state = tmp_path / "conf", tmp_path / "params.yaml", tmp_path / "state.json"
    shutil.copytree(REPO / "conf", conf)
    config.write_params(["vocab=word"], params, conf)
    config.check_fresh(state, params, conf)  # first run: records the state

    (conf / "corpus" / "url.yaml").write_text((conf / "corpus" / "url.yaml").read_text() + "# a comment\n")
    config.check_fresh(state, params, conf)  # an edit that changes no composition is fine

    word = conf / "vocab" / "word.yaml"
    word.write_text(word.read_text().replace("min_freq: 2", "min_freq: 3"))
    with pytest.raises(UserError, match=r"params.yaml is stale: conf/vocab/word.yaml changed .*`dvc exp run`"):
        config.check_fresh(state, params, conf)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")  # inside `dvc exp run`, DVC just recomposed params.yaml
    config.check_fresh(state, params, conf)
    monkeypatch.delenv("DVC_EXP_NAME")
    config.write_params(["vocab=word"], params, conf)  # recomposed by hand
    config.check_fresh(state, params, conf)
    assert "min_freq: 3" in params.read_text()


def test_a_yaml_syntax_error_in_conf_and_a_number_as_a_group_choice_are_one_line(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    done = run(["python", "-m", "rnnlab.config", "sample=5"], tmp_path, check=False)  # the command line: one line
    assert done.returncode == 2 and done.stderr.startswith("error: sample=5: sample takes") and "Traceback" not in done.stderr
    assert not (tmp_path / "params.yaml").exists()
    with pytest.raises(UserError, match=r"^sample=5: sample takes the name of one of its files, one of: default$"):
        config.compose(["sample=5"], conf)
    with (conf / "optim" / "adam.yaml").open("a") as fh:
        fh.write("lr: [1,\n")
    with pytest.raises(UserError, match=r"^a file in .*conf is not valid YAML \(.*adam.yaml.*\); fix it, or bring "
                                        r"it back with `git checkout -- conf`$"):
        config.compose([], conf)
