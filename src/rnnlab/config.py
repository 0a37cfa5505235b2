"""Configuration: `conf/` (Hydra) is the source, `params.yaml` (its composition) is what stages read.

DVC's Hydra integration recomposes params.yaml from conf/ on every `dvc exp run` (with its `-S`
overrides); plain `dvc repro` never does. So:
  * stage scripts read params.yaml (`load_params`) and turn sections into small dataclasses (`section`);
  * `python -m rnnlab.config [overrides]` recomposes params.yaml by hand, exactly as DVC would;
  * the `params` stage (`check_fresh`) notices conf/ edited without recomposing and says what to run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

from rnnlab.errors import UserError, entry_point
from rnnlab.files import write_json

PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")
CONF_DIR = Path("conf")
CONFIG_NAME = "config"
T = TypeVar("T")


def load_params(path: str | Path = PARAMS):
    """params.yaml as an OmegaConf DictConfig, every value checked against rnnlab.schema."""
    import yaml
    from omegaconf import OmegaConf

    if not Path(path).exists():
        raise UserError(f"no {path} here; run from the repository root, or create it: python -m rnnlab.config")
    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path} is not valid YAML ({first}); fix it, or recompose it: "
                        "python -m rnnlab.config") from None
    return validated(cfg)


def validated(cfg):
    """`cfg` itself, after rnnlab.schema checked the type and range of every value (one-line UserError)."""
    from omegaconf import OmegaConf

    from rnnlab.schema import validate

    if not OmegaConf.is_dict(cfg):
        raise UserError("params.yaml is not a mapping of sections; recompose it: python -m rnnlab.config")
    validate(OmegaConf.to_container(cfg, resolve=True))
    return cfg


def section(cfg: Any, cls: type[T], key: str) -> T:
    """Build the dataclass `cls` (rnnlab.schema) from `cfg[key]`, checked."""
    from omegaconf import OmegaConf

    from rnnlab.schema import build

    return build(cls, key, OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key])
                 else dict(cfg[key]))


def stage_keys(stage: str, path: Path = DVC_YAML) -> list[str]:
    """The params keys that dvc.yaml lists for `stage`: what the stage reads (DVC reruns it when one changes)."""
    import yaml

    if not Path(path).exists():
        raise UserError(f"no {path} here; run from the repository root")
    items = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["stages"][stage].get("params", [])
    return [key for item in items for key in ([item] if isinstance(item, str) else sum(item.values(), []))]


def stage_params(cfg: Any, stage: str) -> dict:
    """The values of `stage_keys(stage)` as plain containers, without `paths` (where files go does not
    change a result): what a training logs to MLflow and what decides whether it may resume."""
    from omegaconf import OmegaConf

    values = {}
    for key in stage_keys(stage):
        if key.split(".")[0] != "paths":
            value = OmegaConf.select(cfg, key)
            values[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return values


def with_overrides(cfg: Any, overrides: list[str]):
    """params.yaml plus command-line `key=value` overrides of existing keys (for stage scripts)."""
    import yaml
    from omegaconf import OmegaConf

    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            top = key.split(".")[0]
            keys = sorted(cfg[top].keys()) if top in cfg and OmegaConf.is_dict(cfg[top]) else sorted(cfg.keys())
            raise UserError(f"unknown override {item!r}; give key=value with a key of params.yaml, "
                            f"e.g. {top}.{keys[0]}=... (valid under {top}: {', '.join(map(str, keys))})")
    cfg = cfg.copy()
    for item in overrides:
        key, value = item.split("=", 1)
        # A string key keeps the text as typed (sample.prime=ROMEO: is not a YAML mapping).
        parsed = value if isinstance(OmegaConf.select(cfg, key), str) else yaml.safe_load(value)
        OmegaConf.update(cfg, key, parsed, merge=False)
    return validated(cfg)


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def compose(overrides: list[str] = (), conf_dir: Path = CONF_DIR, check: bool = True):
    """Compose conf/ with Hydra overrides (as DVC does), turning Hydra's errors into one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
            cfg = hydra_compose(CONFIG_NAME, overrides=list(overrides))
    except MissingConfigException as err:
        group = (err.missing_cfg_file or "").split("/")[0]
        choice = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == group), "?")
        raise UserError(
            f"unknown option {group}={choice}; valid options: {', '.join(group_options(group, Path(conf_dir)))}"
        ) from None
    except (ConfigCompositionException, OverrideParseException) as err:
        first = str(err).strip().splitlines()[0]
        groups = ", ".join(sorted(p.name for p in Path(conf_dir).iterdir() if p.is_dir()))
        raise UserError(f"{first} Check the override's spelling; config groups: {groups}") from None
    OmegaConf.resolve(cfg)
    return validated(cfg) if check else cfg


def check_overrides(overrides: list[str], conf_dir: Path = CONF_DIR):
    """Check sweep overrides (`model=rnn,gru`, `trainer.gradient_clip_val=0,1`) before any job starts:
    every group option and key must exist; errors are one line (see `compose`). Returns the config of
    the first job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as err:
        raise UserError(f"{str(err).strip().splitlines()[0]} (check the override's syntax)") from None
    choices = {o.input_line: [str(v) for v in (o.sweep_string_iterator() if o.is_sweep_override()
                                              else [o.get_value_element_as_str()])] for o in parsed}
    keys = {o.input_line: o.get_key_element() for o in parsed}
    first = [f"{keys[line]}={values[0]}" for line, values in choices.items()]
    cfg = compose(first, conf_dir)
    for i, (line, values) in enumerate(choices.items()):
        for value in values[1:]:
            compose(first[:i] + [f"{keys[line]}={value}"] + first[i + 1:], conf_dir)
    return cfg


def to_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def write_params(overrides: list[str] = (), path: Path = PARAMS, conf_dir: Path = CONF_DIR) -> None:
    from rnnlab.files import write_text

    write_text(path, to_yaml(compose(overrides, conf_dir)))


# --- noticing a stale params.yaml ---------------------------------------------------------------------------


def tree_hashes(conf_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(conf_dir)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(conf_dir.rglob("*.yaml"))}


def check_fresh(state_path: Path, params_path: Path = PARAMS, conf_dir: Path = CONF_DIR) -> None:
    """Fail when conf/ changed since the last check while params.yaml did not (nobody recomposed it).

    Inside `dvc exp run` (DVC_EXP_NAME set) params.yaml was just composed by DVC, so it is fresh. An edit
    that changes nothing in the composition (a comment, an option not selected) is not reported.
    """
    now = {"params": hashlib.sha256(params_path.read_bytes()).hexdigest()[:16], "conf": tree_hashes(conf_dir)}
    before = json.loads(state_path.read_text()) if state_path.exists() else None
    if before and "DVC_EXP_NAME" not in os.environ and before["params"] == now["params"]:
        changed = sorted(k for k in set(now["conf"]) | set(before["conf"]) if now["conf"].get(k) != before["conf"].get(k))
        if changed and not composes_to_params(params_path, conf_dir):
            raise UserError(
                f"params.yaml is stale: conf/{changed[0]} changed after params.yaml was composed, and `dvc repro` "
                "never recomposes; run `dvc exp run` (it recomposes conf/ into params.yaml; repeat your -S overrides), "
                "or `python -m rnnlab.config [overrides]` and then `dvc repro`"
            )
    write_json(state_path, now)


def composes_to_params(params_path: Path, conf_dir: Path) -> bool:
    """Does composing conf/ with the group options recorded in params.yaml give params.yaml?"""
    from omegaconf import OmegaConf

    params = load_params(params_path)
    choices = [f"{g}={params[g].name}" for g in params if OmegaConf.is_dict(params[g]) and "name" in params[g]]
    # Only the group choices are replayed, so required values (`???`) may be unset: no schema check here.
    return to_yaml(compose(choices, conf_dir, check=False)) == params_path.read_text(encoding="utf-8")


def usage(conf_dir: Path = CONF_DIR) -> str:
    """The configuration in a few lines: groups and their options, and how to change a value."""
    found = Path(conf_dir).iterdir() if Path(conf_dir).is_dir() else []
    groups = sorted(p.name for p in found if p.is_dir() and p.name != "hydra")  # hydra/: the sweep's launchers
    lines = [f"  {g + ':':12} {', '.join(group_options(g, Path(conf_dir)))}" for g in groups]
    return "\n".join([
        "Configuration: params.yaml, composed from conf/ (config.yaml + one folder per group). Groups and options:",
        *lines,
        "Change it with `python -m rnnlab.config model=rnn trainer.gradient_clip_val=0 && dvc repro`, or",
        "`dvc exp run -S model=rnn -S trainer.gradient_clip_val=0`.",
        "Every key: params.yaml; their types and ranges: src/rnnlab/schema.py.",
    ])


@entry_point
def main() -> None:
    """`python -m rnnlab.config [overrides]`: recompose params.yaml from conf/ (what `dvc exp run -S` does)."""
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        print(f"python -m rnnlab.config [key=value | group=option ...]: write params.yaml from conf/\n\n{usage()}")
        return
    write_params(sys.argv[1:])
    print(f"wrote {PARAMS} from {CONF_DIR}/ with overrides: {' '.join(sys.argv[1:]) or '(none)'}")


if __name__ == "__main__":
    main()
