"""One declaration: conf/ holds every default, the schema only types, ranges and choices.

For every option of every config group, the composed section has exactly the schema's fields (none
missing, none extra) with values of the declared types; the schema declares no defaults; every preset
(`+experiment=`) composes into a valid `Params`. `conf_drift` is the comparison; a planted drift in a
copy of conf/ shows it can fail.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import REPO
from rnnlab import choices, config, schema
from rnnlab.checks import matches
from rnnlab.params import SECTIONS, Params, from_dict

GROUPS = ("corpus", "vocab", "model", "optim", "trainer", "tracking", "sample", "evaluate")


def fields(cls: type) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if not (cls is schema.TrainerSpec
                                                                          and f.name == "extra")}


def compositions(conf_dir: Path, groups: tuple[str, ...]) -> dict[str, dict]:
    """`group=option` -> conf/ composed with it, for every option of `groups` (one Hydra context: fast)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
        return {f"{g}={o}": OmegaConf.to_container(compose("config", [f"{g}={o}"]), resolve=True)
                for g in groups for o in config.group_options(g, conf_dir)}


def conf_drift(conf_dir: Path, groups: tuple[str, ...] = GROUPS) -> list[str]:
    """Every difference between the schema and conf/'s composition, over all options of `groups`."""
    problems = []
    for choice, composed in compositions(conf_dir, groups).items():
        group, option = choice.split("=")
        for key, cls in SECTIONS.items():
            section = {k: v for k, v in composed[key].items() if k != "name"}
            where = f"{group}={option}: {key}"
            declared = fields(cls)
            problems += [f"{where}.{k} is in conf/ but not in the schema" for k in sorted(set(section) - set(declared))]
            problems += [f"{where}.{k} is in the schema but has no value in conf/" for k in sorted(set(declared) - set(section))]
            problems += [f"{where}.{k}={section[k]!r} is not {declared[k]}" for k in sorted(set(section) & set(declared))
                         if section[k] != "???" and not matches(section[k], declared[k])]
    return sorted(set(problems))


@pytest.mark.slow  # composes every group option
def test_every_schema_field_has_its_value_in_conf_for_every_group_option():
    assert conf_drift(REPO / "conf") == []


@pytest.mark.parametrize("edit, expected", [
    (lambda text: text + "momentumm: 0.9\n", "optim=sgd: optim.momentumm is in conf/ but not in the schema"),
    (lambda text: text.replace("hidden_size: 256", "hidden_size: big"), "model=gru: model.hidden_size='big' is not"),
    (lambda text: "\n".join(l for l in text.splitlines() if not l.startswith("dropout:")) + "\n",
     "model=gru: model.dropout is in the schema but has no value in conf/"),
])
def test_a_planted_drift_is_found(tmp_path, edit, expected):
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    group = "optim" if "optim" in expected else "model"
    target = conf / ("optim/sgd.yaml" if group == "optim" else "model/gru.yaml")
    target.write_text(edit(target.read_text()))
    found = conf_drift(conf, (group,))
    assert any(p.startswith(expected) for p in found), found


def test_the_schema_declares_no_defaults():
    """A default in a dataclass is a second declaration that can drift (validation samples once used one)."""
    for cls in [*SECTIONS.values(), schema.AgreementSpec, Params]:
        with_default = [f.name for f in dataclasses.fields(cls)
                        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
        assert with_default == [], f"{cls.__name__} declares defaults for {with_default}; put them in conf/"


def test_agreement_generator_keys_are_the_schema_fields():
    generator = config.compose(["corpus=agreement"], REPO / "conf").corpus.generator
    assert set(generator) == {f.name for f in dataclasses.fields(schema.AgreementSpec)}


@pytest.mark.slow  # composes every preset
def test_every_preset_composes_into_valid_params():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        for preset in config.group_options("experiment", REPO / "conf"):
            params = from_dict(OmegaConf.to_container(compose("config", [f"+experiment={preset}"]), resolve=True))
            assert isinstance(params, Params) and params.model.impl in choices.IMPLS, preset


def test_choice_lists_are_declared_once_and_used():
    """Cells and optimisers are looked up by name in the schema's tables: each name must resolve."""
    import torch

    assert all(issubclass(getattr(torch.nn, cls), torch.nn.RNNBase) for cls in choices.CELLS.values())
    assert all(issubclass(getattr(torch.optim, cls), torch.optim.Optimizer) for cls in choices.OPTIMIZERS.values())
    assert set(config.group_options("model", REPO / "conf")) == set(choices.CELLS)
    from rnnlab import sources, vocab

    assert set(sources.READERS) == set(choices.SOURCES) and set(vocab.PATTERNS) == set(choices.TOKENIZERS)


@pytest.mark.parametrize("key, changes, message", [
    ("optim", {"lr": float("nan")}, "optim.lr=nan: expected a finite number"),
    ("trainer", {"gradient_clip_val": float("inf")}, "trainer.gradient_clip_val=inf: expected a finite number"),
    ("sample", {"temperature": float("nan")}, "sample.temperature=nan: expected a finite number"),
    ("optim", {"momentum": -0.5}, "optim.momentum=-0.5 must be at least 0"),
    ("trainer", {"devices": 0}, "trainer.devices=0 must be at least 1"),
    ("trainer", {"max_time": "abc"}, "trainer.max_time='abc': give DD:HH:MM:SS"),
    ("trainer", {"max_time": {"hours": "x"}}, "trainer.max_time={'hours': 'x'}: give DD:HH:MM:SS"),
    ("sample", {"seed": 2**64}, "sample.seed=18446744073709551616: too large (at most 2**53)"),
    ("sample", {"seed": -1}, "sample.seed=-1 must be between 0 and 18446744073709551615"),
    # classes: every integer fits torch's, every float a float32 tensor
    ("model", {"hidden_size": 2**70}, "model.hidden_size=1180591620717411303424: too large (at most 2**53)"),
    ("sample", {"temperature": 2**70}, "sample.temperature=1180591620717411303424: too large (at most 2**53)"),
    ("optim", {"weight_decay": 1e308}, "optim.weight_decay=1e+308: too large (float32 holds numbers up to 3.4e38)"),
    ("evaluate", {"agreement_distances": [1, 2**60]}, "evaluate.agreement_distances=1152921504606846976: too large"),
    # what Lightning would refuse with a traceback
    ("trainer", {"precision": "abc"}, "trainer.precision='abc' is not known; use one of 32-true"),
    ("trainer", {"accelerator": "tpu"}, "trainer.accelerator='tpu' is not known; use one of auto, cpu"),
    ("trainer", {"strategy": "abc"}, "trainer.strategy='abc' is not known; use one of auto, ddp"),
    ("trainer", {"val_check_interval": 0.5}, "trainer.val_check_interval=0.5: with trainer.check_val_every_n_epoch=null"),
    ("trainer", {"val_check_interval": 0}, "trainer.val_check_interval=0 must be at least 1"),
    ("trainer", {"check_val_every_n_epoch": 0}, "trainer.check_val_every_n_epoch=0 must be at least 1"),
    ("trainer", {"limit_val_batches": -1}, "trainer.limit_val_batches=-1: give a fraction from 0 to 1"),
    ("trainer", {"log_every_n_steps": 0}, "trainer.log_every_n_steps=0 must be at least 1"),
    ("trainer", {"devices": "abc"}, "trainer.devices='abc': give a number of devices"),
    ("trainer", {"devices": [1, "a"]}, "trainer.devices=[1, 'a']: device indices are whole numbers from 0"),
    ("trainer", {"devices": [-1]}, "trainer.devices=[-1]: device indices are whole numbers from 0"),
    ("trainer", {"deterministic": "abc"}, "trainer.deterministic='abc' is not known"),
])
def test_values_that_would_reach_torch_or_lightning_unchecked_are_one_line_errors(key, changes, message):
    from rnnlab.errors import UserError

    with pytest.raises(UserError, match="^" + re.escape(message)):
        config.spec(key, REPO / "conf", **changes)


def test_a_seed_beyond_lightnings_range_and_yaml_1_1_numbers(tmp_path):
    from rnnlab.errors import UserError
    from rnnlab.params import load, with_overrides

    params = config.defaults(REPO / "conf")
    with pytest.raises(UserError, match=r"^seed=4294967296 must be between 0 and 4294967295"):
        params.replace(seed=2**32)
    # PyYAML reads 1e-9 as text (YAML 1.1 wants 1.0e-9); Hydra reads a number, and so do params.yaml's reader
    # (a file `dvc exp run -S` rewrote holds 1e-09) and the sample stage's command-line overrides
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    changed = text.replace("\n  temperature: 0.8\n", "\n  temperature: 1e-9\n")
    assert changed != text
    (tmp_path / "params.yaml").write_text(changed, encoding="utf-8")
    assert load(tmp_path / "params.yaml").sample.temperature == 1e-9
    spec = with_overrides(params, ["sample.temperature=1e-9", "sample.top_p=5e-1"]).sample
    assert (spec.temperature, spec.top_p) == (1e-9, 0.5)
    with pytest.raises(UserError, match=r"^sample.temperature='hot': expected a number"):
        with_overrides(params, ["sample.temperature=hot"])


def test_metrics_files_are_strict_json():
    import json
    import math

    from rnnlab import files, outputs

    metrics = outputs.final_metrics(10, {"train": [[10, math.inf]], "val": [[10, 2.0, math.nan, 1.0]]}, [], [])
    assert metrics["train_loss"] is None and metrics["val_ppl"] is None and metrics["val_loss"] == 2.0
    with pytest.raises(ValueError):
        files.write_json("/dev/null", {"x": math.nan})  # never `NaN` / `Infinity` in a metrics file
    text = json.dumps(metrics, allow_nan=False)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


@settings(max_examples=40, deadline=None)
@given(data=st.data(),  # no subnormal floats: a library may have set flush-to-zero in this worker
       key=st.one_of(st.integers(), st.floats(allow_nan=False, allow_subnormal=False), st.booleans()))
def test_a_key_that_is_not_text_at_any_depth_is_one_line(data, key):
    """YAML reads `1:`, `1.5:` or `true:` as keys; wherever one lands in params.yaml's values, the error is one
    line naming it (not a TypeError from sorting it among the text keys)."""
    from rnnlab.errors import UserError
    from rnnlab.params import SECTIONS

    values = config.defaults(REPO / "conf").select((*SECTIONS, "seed", "threads", "callbacks"))
    mapping, where = values, ""
    while True:  # a drawn mapping among the values: the top, a section, or one inside a section
        inner = sorted(k for k, v in mapping.items() if isinstance(v, dict))
        if not inner or not data.draw(st.booleans()):
            break
        name = data.draw(st.sampled_from(inner))
        mapping, where = mapping[name], f"{where}{name}."
    mapping[key] = "x"
    with pytest.raises(UserError) as err:
        from_dict(values)
    assert str(err.value).startswith(f"params.yaml has the key {where}{key!r}, which is not a name")
    assert "\n" not in str(err.value)
