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


def test_conf_is_hashed_by_content_so_a_comment_leaves_the_recorded_state_as_it_was(tmp_path, monkeypatch):
    """The params stage rewrites its state (data/state/params.json, a DVC output) only when a value changed:
    a comment or a blank line in conf/ changes nothing, not even dvc.lock; a `# @package` line is read."""
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    conf, params, state = tmp_path / "conf", tmp_path / "params.yaml", tmp_path / "state.json"
    shutil.copytree(REPO / "conf", conf)
    config.write_params([], params, conf)
    config.check_fresh(state, params, conf)
    recorded = state.read_bytes()
    gru = conf / "model" / "gru.yaml"
    gru.write_text("# a new first line\n\n" + gru.read_text().replace("\n", "   # note\n", 1) + "\n\n")
    config.check_fresh(state, params, conf)
    assert state.read_bytes() == recorded
    assert config.content_hash(gru) != config.content_hash(conf / "model" / "lstm.yaml")
    header = conf / "ablation" / "ar_tar.yaml"
    before = config.content_hash(header)
    header.write_text(header.read_text().replace("# @package _global_", "# @package optim"))
    assert config.content_hash(header) != before


def test_the_params_stage_runs_the_preflight_only_when_params_yaml_changed(tmp_path, monkeypatch):
    """`dvc repro` runs the params stage every time (dvc.yaml `always_changed`): with nothing changed, or a
    comment edited in conf/, it writes nothing and skips the preflight; a recomposed params.yaml runs it; a
    value edited in conf/ without recomposing stops it with the explanation."""
    from rnnlab import corpus, preflight
    from rnnlab.params import load
    from rnnlab.stages import params as params_stage

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    config.write_params([], tmp_path / "params.yaml", tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(preflight, "check", lambda params, parts: calls.append(params.model.hidden_size) or ["x"])
    monkeypatch.setattr(corpus, "preview", lambda spec, raw: None)

    def stage() -> None:
        params_stage.run(load().replace(paths={"state": str(tmp_path / "state")}))

    stage()
    state = (tmp_path / "state" / "params.json").stat()
    stage()
    gru = tmp_path / "conf" / "model" / "gru.yaml"
    gru.write_text(gru.read_text() + "\n# a comment\n")
    stage()
    assert calls == [256] and (tmp_path / "state" / "params.json").stat().st_mtime_ns == state.st_mtime_ns
    config.write_params(["model.hidden_size=32"], tmp_path / "params.yaml", tmp_path / "conf")
    stage()
    assert calls == [256, 32]
    gru.write_text(gru.read_text().replace("embedding_size: 64", "embedding_size: 65"))
    with pytest.raises(UserError, match=r"^params.yaml is stale: conf/model/gru.yaml changed"):
        stage()
    assert calls == [256, 32]


SAMPLING = ("temperature", "top_k", "top_p", "greedy", "prime", "unk")


def test_validation_samples_default_to_the_sample_stage_settings():
    """gradstats.sample_* are their own keys (so sample.* never rerun the training) with the sample stage's
    defaults, so that the validation samples are drawn as they always were; a conf/ file (an experiment)
    that sets one of sample.* sets its gradstats twin to the same value."""
    import yaml

    values = yaml.safe_load((REPO / "params.yaml").read_text())
    assert {k: values["gradstats"][f"sample_{k}"] for k in SAMPLING} == {k: values["sample"][k] for k in SAMPLING}
    for path in (REPO / "conf").rglob("*.yaml"):
        if path.parent.name == "sample":
            continue
        content = yaml.safe_load(path.read_text()) or {}
        sample, twins = content.get("sample") or {}, content.get("gradstats") or {}
        differ = [k for k in SAMPLING if k in sample and twins.get(f"sample_{k}") != sample[k]]
        assert not differ, f"{path.relative_to(REPO)} sets sample.{differ[0]} but not gradstats.sample_{differ[0]}"


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
