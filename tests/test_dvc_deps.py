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


# --- params: dvc.yaml lists exactly what each stage module declares it reads ----------------------------


def params_drift(stages: dict) -> list[str]:
    """One line per stage whose dvc.yaml `params:` differ from its module's READS (rnnlab.stages.<stage>)."""
    import importlib

    problems = []
    for name, stage in stages.items():
        listed = [key for item in stage.get("params", []) for key in ([item] if isinstance(item, str)
                                                                       else sum(item.values(), []))]
        reads = list(importlib.import_module(f"rnnlab.stages.{name}").READS)
        if sorted(listed) != sorted(reads) or len(set(listed)) != len(listed):
            problems.append(f"stage {name}: dvc.yaml params {sorted(listed)} != READS {sorted(reads)}")
    return problems


def test_dvc_yaml_params_are_the_stages_declared_reads():
    assert params_drift(STAGES) == []


def test_a_planted_params_drift_is_found():
    drifted = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    drifted["train"]["params"].remove("optim")  # a key the stage reads, no longer listed
    drifted["sample"]["params"].append("model")  # a key listed that the stage does not read
    found = params_drift(drifted)
    assert len(found) == 2 and found[0].startswith("stage train:") and found[1].startswith("stage sample:")


def test_nothing_in_the_library_reads_dvc_yaml_at_run_time():
    offenders = [str(p.relative_to(REPO)) for p in (SRC / "rnnlab").rglob("*.py")
                 if '"dvc.yaml"' in p.read_text() or "'dvc.yaml'" in p.read_text()]
    assert offenders == []
