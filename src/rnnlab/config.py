"""Configuration: `conf/` (Hydra) is the source, `params.yaml` (its composition) is what stages read.

DVC's Hydra integration recomposes params.yaml from conf/ on every `dvc exp run` (with its `-S`
overrides); plain `dvc repro` never does. So:
  * stage scripts read params.yaml into one checked `rnnlab.params.Params` (`rnnlab.params.load`);
  * `python -m rnnlab.config [overrides]` recomposes params.yaml by hand, exactly as DVC would;
  * the `params` stage (`check_fresh`) notices conf/ edited without recomposing and says what to run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from rnnlab import params as params_mod
from rnnlab.errors import UserError, entry_point
from rnnlab.files import write_json

PARAMS = Path("params.yaml")
CONF_DIR = Path("conf")
CONFIG_NAME = "config"


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def compose(overrides: list[str] = (), conf_dir: Path = CONF_DIR) -> params_mod.Params:
    """conf/ composed with Hydra overrides (as DVC does), checked: the `Params` a stage would load."""
    from omegaconf import OmegaConf

    return params_mod.from_dict(OmegaConf.to_container(compose_config(overrides, conf_dir)))


def compose_config(overrides: list[str] = (), conf_dir: Path = CONF_DIR):
    """Compose conf/ with Hydra overrides (a DictConfig, unchecked), turning Hydra's errors into one line."""
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
    except yaml_errors() as err:  # a conf/ file that is not YAML: Hydra lets the parser's error through
        raise UserError(f"a file in {conf_dir} is not valid YAML ({' '.join(str(err).split())[:300]}); fix it, "
                        "or bring it back with `git checkout -- conf`") from None
    except ValueError as err:  # `sample=5`: Hydra's parser made the group's choice a number
        if "Config group override must be" not in str(err):
            raise
        bad = [o for o in overrides if (Path(conf_dir) / o.split("=", 1)[0].lstrip("+~")).is_dir()]
        group = bad[0].split("=", 1)[0].lstrip("+~") if bad else "a config group"
        raise UserError(f"{bad[0] if bad else 'an override'}: {group} takes the name of one of its files, "
                        f"one of: {', '.join(group_options(group, Path(conf_dir)))}") from None
    OmegaConf.resolve(cfg)
    return cfg


def yaml_errors() -> tuple[type[BaseException], ...]:
    """What YAML syntax errors look like through Hydra (PyYAML's parser, OmegaConf's own)."""
    import yaml
    from omegaconf.errors import GrammarParseError

    return yaml.YAMLError, GrammarParseError


@functools.lru_cache(maxsize=8)
def defaults(conf_dir: Path = CONF_DIR, overrides: tuple[str, ...] = ()) -> params_mod.Params:
    """conf/'s default composition (cached): where a test or a benchmark takes the values it does not change."""
    return compose(list(overrides), conf_dir)


def spec(key: str, conf_dir: Path = CONF_DIR, **changes: Any) -> Any:
    """A section of the default composition with some values changed, checked again:
    `spec("model", cell="lstm", hidden_size=64)`; `corpus.generator` is corpus=agreement's generator."""
    if key == "corpus.generator":
        return dataclasses.replace(defaults(Path(conf_dir), ("corpus=agreement",)).corpus.agreement, **changes)
    return dataclasses.replace(getattr(defaults(Path(conf_dir)), key), **changes)


def check_overrides(overrides: list[str], conf_dir: Path = CONF_DIR) -> params_mod.Params:
    """Check sweep overrides (`model=rnn,gru`, `trainer.gradient_clip_val=0,1`) before any job starts:
    every group option and key must exist; errors are one line (see `compose`). Returns the config of
    the first job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as err:
        raise UserError(f"{str(err).strip().splitlines()[0]} (check the override's syntax)") from None
    choices = {o.input_line: candidates(o) for o in parsed}
    keys = {o.input_line: o.get_key_element() for o in parsed}
    first = [f"{keys[line]}={values[0]}" for line, values in choices.items()]
    cfg = compose(first, conf_dir)
    for i, (line, values) in enumerate(choices.items()):
        for value in values[1:]:
            compose(first[:i] + [f"{keys[line]}={value}"] + first[i + 1:], conf_dir)
    return cfg


def candidates(override) -> list[str]:
    """The values an override gives its key: each of a choice or range; an interval's two ends (Optuna)."""
    if override.is_interval_sweep():
        interval = override.value()
        cast = int if "int" in (interval.tags or set()) else float
        return [str(cast(interval.start)), str(cast(interval.end))]
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def to_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def write_params(overrides: list[str] = (), path: Path = PARAMS, conf_dir: Path = CONF_DIR) -> None:
    """params.yaml composed from conf/, written only once every value is checked."""
    from omegaconf import OmegaConf

    from rnnlab.files import write_text

    cfg = compose_config(overrides, conf_dir)
    params_mod.from_dict(OmegaConf.to_container(cfg))
    write_text(path, to_yaml(cfg))


# --- noticing a stale params.yaml ---------------------------------------------------------------------------


def tree_hashes(conf_dir: Path) -> dict[str, str]:
    """Each YAML file of conf/ by its content: a comment or a blank line changes no hash, a value does."""
    return {str(p.relative_to(conf_dir)): content_hash(p) for p in sorted(conf_dir.rglob("*.yaml"))}


def content_hash(path: Path) -> str:
    """The parsed YAML and its `# @package` line (a comment that Hydra reads); unparsable YAML: the bytes
    (composing it then says what is wrong)."""
    import yaml

    text = path.read_bytes()
    try:
        content = [yaml.safe_load(text), [line for line in text.splitlines() if line.startswith(b"# @package")]]
    except yaml.YAMLError:
        return hashlib.sha256(text).hexdigest()[:16]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fresh_state(state_path: Path, params_path: Path = PARAMS, conf_dir: Path = CONF_DIR) -> dict:
    """What `check_fresh` records (params.yaml's hash, conf/'s content hashes); raises when conf/ changed
    since the state at `state_path` while params.yaml did not (nobody recomposed it).

    Inside `dvc exp run` (DVC_EXP_NAME set) params.yaml was just composed by DVC, so it is fresh. An edit
    that changes nothing in the composition (a comment, an option not selected) is not reported.
    """
    now = {"params": hashlib.sha256(params_path.read_bytes()).hexdigest()[:16], "conf": tree_hashes(conf_dir)}
    before = previous_state(state_path)
    if before and "DVC_EXP_NAME" not in os.environ and before["params"] == now["params"]:
        changed = sorted(k for k in set(now["conf"]) | set(before["conf"]) if now["conf"].get(k) != before["conf"].get(k))
        if changed and not composes_to_params(params_path, conf_dir):
            raise UserError(
                f"params.yaml is stale: conf/{changed[0]} changed after params.yaml was composed, and `dvc repro` "
                "never recomposes; run `dvc exp run` (it recomposes conf/ into params.yaml; repeat your -S overrides), "
                "or `python -m rnnlab.config [overrides]` and then `dvc repro`"
            )
    return now


def check_fresh(state_path: Path, params_path: Path = PARAMS, conf_dir: Path = CONF_DIR) -> None:
    """Fail when conf/ changed since the last check while params.yaml did not (`fresh_state`); else record
    the state (the file is rewritten only when it changes, so a comment edit leaves it as it was)."""
    record_state(state_path, fresh_state(state_path, params_path, conf_dir))


def record_state(state_path: Path, state: dict) -> None:
    if previous_state(state_path) != state:
        write_json(state_path, state)


def previous_state(state_path: Path) -> dict | None:
    """What the last check recorded, or None (none yet, or a damaged file: this run records it afresh)."""
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(state, dict) and isinstance(state.get("params"), str) and isinstance(state.get("conf"), dict)
    return state if ok else None


def composes_to_params(params_path: Path, conf_dir: Path) -> bool:
    """Does composing conf/ with the group options recorded in params.yaml give params.yaml?"""
    params = params_mod.load(params_path)
    choices = [f"{group}={option}" for group, option in params.choices.items()]
    # Only the group choices are replayed, so required values (`???`) may be unset: no schema check here.
    return to_yaml(compose_config(choices, conf_dir)) == params_path.read_text(encoding="utf-8")


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
