"""DVC reruns exactly what a change touches (rnnlab.stages.reruns, the table dvc.yaml's `params:` equal).

Generated: every leaf key of the composed config, over every option of every config group, is set to another
value that the schema accepts, and `dvc status` (DVC's own comparison of params.yaml with dvc.lock) must
name exactly the stages the table says: those whose `params:` hold the key, the `params` stage (it depends
on params.yaml as a whole and always runs), and for a `paths.*` key the stages whose files it moves. The
baseline dvc.lock is bookkeeping, not a training: every dependency and output of the real dvc.yaml is
created empty and `dvc commit` records them with the default params.yaml. Planted drifts (a key missing
from a stage, a key added to one) must be caught. Slow: on a trained tiny workspace, a sampling
temperature reruns sample and evaluate, never train, and a comment edited in conf/ reruns nothing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, TINY, copy_project, run, set_args, train_outputs

pytestmark = pytest.mark.slow  # real dvc (in-process status, `dvc commit`, `dvc repro`)

# A composition where a key can take another valid value only beside others: corpus=file's splits
EXTRA = [["corpus=file", "corpus.splits.train=a.txt", "corpus.splits.val=b.txt"]]
GENERIC = [1, 2, 0.5, 0.25, "x", "0" * 64, True, False, [1, 2], "00:00:10:00", None]  # after other options' values


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """key -> value of every leaf (a scalar, a list or an empty mapping) under `value`."""
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in leaves(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def groups() -> dict[str, list[str]]:
    conf = REPO / "conf"
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(conf.iterdir())
            if d.is_dir() and d.name != "hydra"}


@functools.lru_cache(maxsize=1)
def compositions() -> dict[str, dict]:
    """The composed config (plain containers) for the defaults and for each option of each group."""
    from omegaconf import OmegaConf

    from rnnlab.config import compose_config

    defaults = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["defaults"]
    chosen = {next(iter(d)) for d in defaults if isinstance(d, dict)}
    overrides = [[f"{'' if group in chosen else '+'}{group}={option}"] for group, options in groups().items()
                 for option in options]
    return {" ".join(o): OmegaConf.to_container(compose_config(o, REPO / "conf")) for o in [[], *overrides, *EXTRA]}


@functools.lru_cache(maxsize=1)
def composed_leaves() -> dict[str, dict[str, Any]]:
    """compositions(), each as its leaves."""
    return {override: leaves(values) for override, values in compositions().items()}


@functools.lru_cache(maxsize=1)
def all_leaves() -> dict[str, str]:
    """Every leaf key of every composition -> the first composition (override) that has it."""
    found: dict[str, str] = {}
    for override, keys in composed_leaves().items():
        for key in keys:
            found.setdefault(key, override)
    return found


def put(values: dict, key: str, value: Any, source: dict) -> dict:
    """`values` with `key` set, intermediate sections taken from `source` where `values` lacks them."""
    out = copy.deepcopy(values)
    here, there = out, source
    *parents, last = key.split(".")
    for part in parents:
        there = there[part]
        if not isinstance(here.get(part), dict):
            here[part] = copy.deepcopy(there)
        here = here[part]
    here[last] = value
    return out


def valid(values: dict) -> bool:
    from rnnlab.errors import UserError
    from rnnlab.params import from_dict

    try:
        from_dict(values)
    except UserError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def choices() -> list[str]:
    """Every choice rnnlab.choices declares (cells, encodings, schedules, ...): candidates for a text key."""
    from rnnlab import choices as declared

    found = [v for name in dir(declared) if name.isupper() for v in getattr(declared, name)]
    return [v for v in found if isinstance(v, str)]


def at(values: Any, key: str) -> Any:
    """The value (a leaf or a section) at `key`, or KeyError."""
    for part in key.split("."):
        if not isinstance(values, dict):
            raise KeyError(key)
        values = values[part]
    return values


def another_value(key: str) -> Any:
    """A value for `key` that differs from its own and that the schema accepts in some composition that has
    the key (the values other options give it first, then generic ones and every declared choice): some
    keys are only valid beside others (corpus.members needs corpus.url, model.tie_weights equal sizes)."""
    holding = [o for o, keys in composed_leaves().items() if key in keys]
    baseline = composed_leaves()[""].get(key, ...)  # dvc.lock's value (... where the default lacks the key)
    seen = []
    for values in compositions().values():
        with contextlib.suppress(KeyError):
            seen.append(at(values, key))
    for override in holding:
        base, current = compositions()[override], composed_leaves()[override][key]
        if isinstance(current, bool):
            tries = [not current]
        elif isinstance(current, (int, float)):
            tries = [current * 2 or 1, current + 1, current / 2]
        elif isinstance(current, list):
            tries = [current[:1], current[:-1], current + current[-1:]] if current else [[1]]
        elif key == "callbacks":
            tries = [[{"_target_": "lightning.pytorch.callbacks.LearningRateMonitor"}]]
        else:
            tries = [current + "x"] if isinstance(current, str) and current else []
        for value in [*seen, *tries, *GENERIC, *choices()]:
            if value != current and value != baseline and valid(put(base, key, value, base)):
                return value
    raise AssertionError(f"no other valid value found for {key} (add one to the test)")


def templated(key: str) -> set[str]:
    """Stages whose dvc.yaml deps or outs sit under `${key}` (a path moves their files)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name for name, stage in stages.items()
            if "${" + key + "}" in json.dumps([stage.get("deps", []), stage.get("outs", []), stage.get("metrics", []),
                                                stage.get("plots", [])])}


def expected(key: str) -> set[str]:
    from rnnlab.stages.reruns import stages_of

    return stages_of(key) | {"params"} | templated(key)


def bookkept(root: Path) -> Path:
    """`root` with every dependency and output of its dvc.yaml created (empty) and dvc.lock committed for the
    default params.yaml: what DVC compares params.yaml with, without running any stage."""
    values = yaml.safe_load((root / "params.yaml").read_text())
    text = (root / "dvc.yaml").read_text()
    stages = yaml.safe_load(re.sub(r"\$\{paths\.(\w+)\}", lambda m: values["paths"][m.group(1)], text))["stages"]
    for stage in stages.values():
        for item in [item for kind in ("deps", "outs", "metrics", "plots") for item in stage.get(kind, [])]:
            path = root / (item if isinstance(item, str) else next(iter(item)))
            if path.exists():
                continue
            if path.suffix:  # a file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n")
            else:  # a folder output (model/, plots/)
                path.mkdir(parents=True)
                (path / "placeholder").write_text("x\n")
    run(["dvc", "commit", "--force", "--quiet"], root)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from rnnlab.config import write_params

    root = copy_project(tmp_path_factory.mktemp("reruns"))
    write_params([], root / "params.yaml", REPO / "conf")  # the default composition
    return bookkept(root)


def batches(keys: list[str]) -> list[list[str]]:
    """Keys in groups where none holds another (corpus.generator and corpus.generator.seed go apart), so
    that one params.yaml can change every key of a group."""
    from rnnlab.stages.reruns import holds

    groups: list[list[str]] = []
    for key in keys:
        free = next((g for g in groups if not any(holds(k, key) or holds(key, k) for k in g)), None)
        groups.append([key]) if free is None else free.append(key)
    return groups


def changed(status: dict) -> dict[str, set[str]]:
    """`dvc status`, per stage: the params keys and the paths of its deps and outs that it finds changed."""
    found: dict[str, set[str]] = {}
    for stage, entries in status.items():
        names = found.setdefault(stage, set())
        for entry in entries:
            for kind, changes in (entry.items() if isinstance(entry, dict) else [(entry, {})]):
                for name, what in changes.items():
                    names |= set(what) if name == "params.yaml" and isinstance(what, dict) else {name}
    return found


def touches(name: str, key: str, value: Any) -> bool:
    """Does a change that `dvc status` names come from `key` (set to `value`)? A params key that holds it or
    that it holds; a dep or out under its new folder (paths.*)."""
    from rnnlab.stages.reruns import holds

    moved = key.startswith("paths.") and (name == value or name.startswith(f"{value}/"))
    return holds(name, key) or holds(key, name) or moved


def named(root: Path, keys: list[str]) -> dict[str, tuple[set[str], set[str]]]:
    """For each key: (the stages `dvc status` names for its change, the stages the table says). DVC reads
    dvc.yaml, dvc.lock and params.yaml afresh for each status (about a second here), so the keys change in a
    few batches, and each change DVC names (a params key, a moved file) is traced back to its key."""
    from dvc.repo import Repo

    default = yaml.safe_load((root / "params.yaml").read_text())
    original = (root / "params.yaml").read_text()
    values = {key: another_value(key) for key in keys}
    found = {}
    try:
        with contextlib.chdir(root), Repo(str(root)) as repo:  # stage names are relative to the working folder
            assert set(repo.status()) == {"params"}, repo.status()  # the baseline: only the always-run check
            for batch in batches(keys):
                edited = default
                for key in batch:
                    edited = put(edited, key, values[key], compositions()[all_leaves()[key]])
                (root / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
                seen = changed(repo.status())
                for key in batch:
                    stages = {stage for stage, names in seen.items()
                              if stage == "params" or any(touches(name, key, values[key]) for name in names)}
                    found[key] = (stages, expected(key))
    finally:
        (root / "params.yaml").write_text(original)
    return found


def wrong(found: dict) -> dict:
    return {key: {"dvc status": sorted(seen), "table": sorted(want)} for key, (seen, want) in found.items()
            if seen != want}


def test_dvc_status_names_exactly_the_stages_of_the_table_for_every_key(workspace):
    from test_dvc_deps import unclassified

    keys = sorted(all_leaves())
    assert unclassified(keys) == [], "classify each key once in src/rnnlab/stages/reruns.py"
    found = named(workspace, keys)
    print(f"{len(keys)} keys checked over {len(compositions())} compositions "
          f"(the defaults and every option of {len(groups())} groups)")
    assert wrong(found) == {}
    assert found["sample.temperature"][0] == {"params", "sample"}  # the examples
    assert found["tracking.experiment"][0] == {"params"}
    assert found["tracking.register_model"][0] == {"params", "register"}  # registers, never trains
    assert found["threads"][0] == {"params", "train"} and found["evaluate.cache_size"][0] == {"params", "evaluate"}


def test_planted_drifts_in_dvc_yaml_are_caught(workspace, tmp_path):
    """dvc.yaml doctored: a key its outputs depend on missing from train, a sampling key added to it."""
    root = tmp_path / "drifted"
    shutil.copytree(workspace, root, symlinks=True)
    text = (root / "dvc.yaml").read_text()
    assert text.count("      - optim.lr\n") == 1
    text = text.replace("      - optim.lr\n", "      - sample.temperature\n")
    (root / "dvc.yaml").write_text(text)
    run(["dvc", "commit", "--force", "--quiet"], root)
    found = wrong(named(root, ["optim.lr", "sample.temperature", "model.cell", "tracking.experiment"]))
    assert found == {"optim.lr": {"dvc status": ["params"], "table": ["params", "train"]},
                     "sample.temperature": {"dvc status": ["params", "sample", "train"], "table": ["params", "sample"]}}


# --- on a trained workspace ------------------------------------------------------------------------------------


def test_a_sampling_change_or_a_conf_comment_never_retrains(trained_project):
    project = trained_project  # TINY, `dvc repro`, committed
    trained = train_outputs(project)
    import sqlite3

    logged = {k for (k,) in sqlite3.connect(project / "mlflow.db").execute("select key from params")}
    assert {"model/hidden_size", "sample/temperature", "tracking/experiment", "evaluate/cache_size", "seed"} <= logged

    # A comment and a blank line edited in conf/: `dvc repro` reruns nothing and leaves git clean but the edit.
    conf = project / "conf" / "model" / "gru.yaml"
    conf.write_text(conf.read_text().replace("\n", "  # a comment\n\n", 1))
    out = run(["dvc", "repro"], project).stdout
    assert "Running stage" not in out.replace("Running stage 'params'", ""), out
    status = run(["git", "status", "--porcelain"], project).stdout.splitlines()
    assert status == [" M conf/model/gru.yaml"], status
    run(["git", "checkout", "--", "conf"], project)

    # An MLflow experiment name reruns no stage but the params check ...
    out = run(["dvc", "exp", "run", *set_args([*TINY, "tracking.experiment=other"])],
              project).stdout
    assert "Running stage" not in out.replace("Running stage 'params'", ""), out
    # ... and another sampling temperature reruns sample and evaluate (it reads the samples), never train.
    out = run(["dvc", "exp", "run", *set_args([*TINY, "sample.temperature=0.5"])], project).stdout
    assert "Stage 'train' didn't change, skipping" in out and "Running stage 'train'" not in out, out
    assert "Running stage 'sample'" in out and "Running stage 'evaluate'" in out, out
    assert train_outputs(project) == trained

    # Registering the model already trained is the register stage alone: seconds, no training in the log.
    out = run(["dvc", "exp", "run", *set_args([*TINY, "tracking.register_model=tiny-gru"])],
              project).stdout
    assert "Running stage 'register'" in out and "Running stage 'train'" not in out, out
    assert train_outputs(project) == trained
    from mlflow.tracking import MlflowClient

    (version,) = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_model_versions("name = 'tiny-gru'")
    run_id = json.loads((project / "data" / "train" / "model" / "meta.json").read_text())["mlflow_run_id"]
    assert version.run_id == run_id  # the model that was trained, not a new one
