"""dvc.yaml cannot go stale: each stage depends on every project module its script imports.

The import closure of each stage's script within `src/rnnlab` is computed from the source (every
`import` statement, also those inside functions, followed through the project's modules and their
packages' `__init__.py`), and compared with the stage's `deps:`. A module missing from dvc.yaml
means DVC would keep outputs made by old code after that module changes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SRC = REPO / "src"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The source file of project module `name` (rnnlab.x.y), or None when it is not one."""
    if name != "rnnlab" and not name.startswith("rnnlab."):
        return None
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imported_names(path: Path) -> set[str]:
    """Module names an import in `path` may load: `import a.b` -> a, a.b; `from a import b` -> a, a.b."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    parents = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    return names | parents  # importing a.b.c runs a/__init__.py and a/b/__init__.py


def closure(script: Path) -> set[str]:
    """Repository-relative paths of every project module that `script` imports, directly or not."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in imported_names(todo.pop()):
            path = module_file(name)
            if path and path not in seen:
                seen.add(path)
                todo.append(path)
    return {str(p.relative_to(REPO)) for p in seen}


def script_of(stage: dict) -> Path:
    return REPO / stage["cmd"].split()[1]  # "python pipeline/x.py"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_every_module_it_imports(name):
    stage = STAGES[name]
    deps = set(stage.get("deps", []))
    script = script_of(stage)
    assert str(script.relative_to(REPO)) in deps, f"dvc.yaml: stage {name} lacks its own script {script}"
    missing = sorted(closure(script) - deps)
    assert not missing, f"dvc.yaml: stage {name} imports {', '.join(missing)} but does not list it under deps"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lists_no_module_it_does_not_import(name):
    """Extra modules would rerun a stage for nothing; a stale list is as misleading as a short one."""
    stage = STAGES[name]
    listed = {d for d in stage.get("deps", []) if d.startswith("src/") and d.endswith(".py")}
    extra = sorted(listed - closure(script_of(stage)))
    assert not extra, f"dvc.yaml: stage {name} lists {', '.join(extra)}, which it does not import"


def test_the_closure_follows_imports_inside_functions_and_packages(tmp_path):
    """The checker itself: function-level imports and package __init__ files count."""
    script = tmp_path / "stage.py"
    script.write_text("from rnnlab.stages import main, train\n\ndef f():\n    from rnnlab import training\n")
    found = closure(script)
    assert {"src/rnnlab/__init__.py", "src/rnnlab/stages/__init__.py", "src/rnnlab/stages/train.py",
            "src/rnnlab/training.py", "src/rnnlab/recurrence.py"} <= found


# --- params: dvc.yaml lists exactly each stage's column of the table in rnnlab.stages.reruns ---------------


def params_drift(stages: dict, table: dict | None = None) -> list[str]:
    """One line per stage whose dvc.yaml `params:` differ from its column of the table (`table`: RERUNS)."""
    from rnnlab.stages import reruns

    table = reruns.RERUNS if table is None else table
    problems = []
    for name, stage in stages.items():
        listed = [key for item in stage.get("params", []) for key in ([item] if isinstance(item, str)
                                                                       else sum(item.values(), []))]
        column = [key for key, names in table.items() if name in names]
        if sorted(listed) != sorted(column) or len(set(listed)) != len(listed):
            problems.append(f"stage {name}: dvc.yaml params {sorted(listed)} != rnnlab.stages.reruns {sorted(column)}")
    return problems


def test_dvc_yaml_params_are_the_table_of_reruns():
    assert params_drift(STAGES) == []


def test_the_train_stage_hashes_its_column():
    from rnnlab.stages import reruns, train

    assert train.READS == reruns.reads("train") and "sample.temperature" not in train.READS


def test_a_planted_params_drift_is_found():
    drifted = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    drifted["train"]["params"].remove("optim.lr")  # a key its outputs depend on, no longer listed
    drifted["sample"]["params"].append("model.cell")  # a key listed that changes none of its outputs
    found = params_drift(drifted)
    assert len(found) == 2 and found[0].startswith("stage train:") and found[1].startswith("stage sample:")
    from rnnlab.stages import reruns

    table = dict(reruns.RERUNS) | {"tracking.experiment": ("train",)}  # the table drifts: a label made a dependency
    assert [line.split(":")[0] for line in params_drift(STAGES, table)] == ["stage train"]


def unclassified(keys) -> list[str]:
    """Keys the table holds and names a label too, or neither; and table entries that are no key."""
    from rnnlab.stages import reruns

    labelled = [k for k in keys if any(reruns.holds(entry, k) for entry in reruns.LABELS)]
    both = [f"{k}: both" for k in labelled if reruns.stages_of(k)]
    neither = [f"{k}: neither" for k in keys if not reruns.stages_of(k) and k not in labelled]
    entries = [*reruns.RERUNS, *reruns.LABELS]
    unknown = [f"{e}: no such key" for e in entries if not any(reruns.holds(e, k) for k in keys)]
    return both + neither + unknown


def leaf_keys(value, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        return [k for key, item in value.items() for k in leaf_keys(item, f"{prefix}{key}.")]
    return [prefix[:-1]]


def test_every_key_reruns_stages_or_is_a_label():
    """Each leaf of params.yaml is held by the table or named a label (with its reason), never both; each
    entry is a key. tests/test_dvc_reruns.py checks the same over every option of every group."""
    keys = leaf_keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert unclassified(keys) == [], "classify each key once in src/rnnlab/stages/reruns.py"
    assert unclassified([k for k in keys if k != "optim.lr"]) == ["optim.lr: no such key"]
    assert unclassified([*keys, "model.new_key"]) == ["model.new_key: neither"]


def test_nothing_in_the_library_reads_dvc_yaml_at_run_time():
    offenders = [str(p.relative_to(REPO)) for p in (SRC / "rnnlab").rglob("*.py")
                 if '"dvc.yaml"' in p.read_text() or "'dvc.yaml'" in p.read_text()]
    assert offenders == []
