"""`Params`: the whole configuration as one typed, checked object (every section of params.yaml).

Stages load params.yaml once into a `Params` (`load`, or `from_dict` for a composed config); every
value is checked in that one pass (rnnlab.schema), with one-line errors. Below the stage layer, code
takes these typed sections, never raw dicts. What a run logs to MLflow (`logged`: the whole
configuration but the machine's paths), its name and tags, the hash that decides whether an interrupted
training may resume (of the keys its outputs depend on, rnnlab.stages.reruns), and the key under which a
sweep shares prepared data all derive from a `Params` (`select`, `digest`):

    params = load("params.yaml")
    params.model.hidden_size                    # 256, checked
    params.select(("model", "paths.train"))     # {"model": {"name": "gru", ...}, "paths.train": "data/train"}
    params.logged()                             # {"corpus": {...}, ..., "seed": 1337, "threads": None, ...}

Plain Python (no torch), so the cheap stages load it quickly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnlab.errors import UserError
from rnnlab.checks import between, check_types
from rnnlab.schema import (CorpusSpec, DataSpec, EvaluateSpec, GradStatsSpec, ModelSpec, OptimSpec, PathsSpec,
                           SampleSpec, TrackingSpec, TrainerSpec, VocabSpec)

SECTIONS = {"corpus": CorpusSpec, "vocab": VocabSpec, "model": ModelSpec, "optim": OptimSpec, "data": DataSpec,
            "trainer": TrainerSpec, "gradstats": GradStatsSpec, "tracking": TrackingSpec, "sample": SampleSpec,
            "evaluate": EvaluateSpec, "paths": PathsSpec}
RECOMPOSE = "recompose it: python -m rnnlab.config"
# What a training logs to MLflow as its params: every section and value but `paths` (where this machine keeps
# the files). MLflow flattens sections with "/": model/hidden_size, sample/temperature, tracking/experiment.
LOGGED = (*(key for key in SECTIONS if key != "paths"), "seed", "threads", "callbacks")


@dataclass(frozen=True)
class Params:
    corpus: CorpusSpec
    vocab: VocabSpec
    model: ModelSpec
    optim: OptimSpec
    data: DataSpec
    trainer: TrainerSpec
    gradstats: GradStatsSpec
    tracking: TrackingSpec
    sample: SampleSpec
    evaluate: EvaluateSpec
    paths: PathsSpec
    seed: int
    threads: int | None  # torch threads for training (null: all cores)
    callbacks: list  # Hydra `_target_` entries: extra Lightning callbacks
    choices: dict  # group -> the option picked (each section's `name`)

    def __post_init__(self) -> None:
        check_types(self, "params")
        between("threads", self.threads, 1, 4096)
        between("seed", self.seed, 0, 2**32 - 1)  # the range Lightning's seed_everything accepts

    def section(self, key: str) -> Any:
        """A section or top-level value as plain containers; a section keeps its group option as `name`."""
        value = getattr(self, key)
        if not dataclasses.is_dataclass(value):
            return value
        plain = dataclasses.asdict(value)
        if isinstance(value, TrainerSpec):
            plain = {k: v for k, v in plain.items() if k != "extra"} | value.extra
        return ({"name": self.choices[key]} if key in self.choices else {}) | plain

    def select(self, keys: tuple[str, ...]) -> dict:
        """The values of `keys` (`model`, `corpus.format`, `paths.train`, ...) as plain containers."""
        found = {}
        for key in keys:
            top, _, rest = key.partition(".")
            value = self.section(top)
            for part in filter(None, rest.split(".")):
                value = value[part]
            found[key] = value
        return found

    def logged(self) -> dict:
        """The whole configuration as MLflow logs it (LOGGED), whichever keys a stage depends on."""
        return self.select(LOGGED)

    def replace(self, **changes: dict) -> Params:
        """A copy with some values of some sections changed, checked: replace(paths={"train": "x"})."""
        return dataclasses.replace(self, **{k: dataclasses.replace(getattr(self, k), **v) if isinstance(v, dict)
                                            and dataclasses.is_dataclass(getattr(self, k)) else v
                                            for k, v in changes.items()})


def digest(values: Any) -> str:
    """A short, stable hash of plain containers (the resume check, a sweep's shared-data key)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build(cls: type, key: str, values: Any) -> Any:
    """The dataclass `cls` from the section `key` (a plain dict; `name`, the group option, is left out)."""
    if not isinstance(values, dict):
        raise UserError(f"{key}={values!r}: expected a mapping of keys; {RECOMPOSE}")
    values = {k: v for k, v in values.items() if k != "name"}
    known = [f.name for f in dataclasses.fields(cls) if not (cls is TrainerSpec and f.name == "extra")]
    if cls is TrainerSpec:
        values = {k: v for k, v in values.items() if k in known} | {"extra": trainer_extra(values, known)}
        known.append("extra")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown key {key}.{unknown[0]}; valid keys of {key}: {', '.join(sorted(known))}")
    missing = [k for k in known if k not in values]
    if missing:
        raise UserError(f"{key}.{missing[0]} is not set; {RECOMPOSE} (conf/ gives every key a value)")
    unset = [k for k, v in values.items() if v == "???"]
    if unset:
        raise UserError(f"{key}.{unset[0]} must be set: add {key}.{unset[0]}=<value> to your overrides")
    return cls(**values)


def trainer_extra(values: dict, declared: list[str]) -> dict:
    """Trainer arguments the schema does not declare, checked against lightning.pytorch.Trainer's own."""
    extra = {k: v for k, v in values.items() if k not in declared}
    if extra:
        import inspect

        import lightning.pytorch as pl  # only when there is something to check: it takes seconds

        valid = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
        unknown = sorted(set(extra) - valid)
        if unknown:
            raise UserError(f"trainer.{unknown[0]} is not a lightning.pytorch.Trainer argument; "
                            "see conf/trainer/default.yaml for the usual ones")
    return extra


def from_dict(values: Any) -> Params:
    """Check a whole composed config (plain containers) in one pass and build its `Params`."""
    if not isinstance(values, dict):
        raise UserError(f"params.yaml is not a mapping of sections; {RECOMPOSE}")
    text_keys(values)
    top = {f.name for f in dataclasses.fields(Params)} - {"choices"} - set(SECTIONS)
    for key in [*SECTIONS, *sorted(top)]:
        if key not in values:
            raise UserError(f"params.yaml has no `{key}`; {RECOMPOSE}")
    unknown = sorted(set(values) - set(SECTIONS) - top)
    if unknown:
        raise UserError(f"params.yaml has an unknown key `{unknown[0]}`; {RECOMPOSE}")
    sections = {key: build(cls, key, values[key]) for key, cls in SECTIONS.items()}
    choices = {key: values[key]["name"] for key in SECTIONS if "name" in values[key]}
    return Params(**sections, **{k: values[k] for k in top}, choices=choices)


def text_keys(value: Any, where: str = "") -> None:
    """Every key, at any depth, is text: YAML also reads `1:`, `1.5:` or `true:` as keys, which no section has
    (and which sort with no other key)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(value, dict) and not isinstance(key, str):
            raise UserError(f"params.yaml has the key {where}{key!r}, which is not a name; keys are text "
                            f"(e.g. model.hidden_size); {RECOMPOSE}")
        text_keys(item, f"{where}{key}.")


def load(path: str | Path = "params.yaml") -> Params:
    """params.yaml, checked, as a `Params`. OmegaConf reads it as Hydra wrote it: `1e-9` is a number (YAML 1.1,
    and so PyYAML, keeps it as text)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.exists():
        raise UserError(f"no {path} here; run from the repository root, or create it: python -m rnnlab.config")
    try:
        values = OmegaConf.to_container(OmegaConf.load(path))
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or err}); {RECOMPOSE}") from None
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path} is not valid YAML ({first}); fix it, or {RECOMPOSE}") from None
    return from_dict(values)


def with_overrides(params: Params, overrides: list[str]) -> Params:
    """`params` with command-line `key=value` overrides of existing keys (the sample stage's quick look)."""
    values = {key: params.section(key) for key in (*SECTIONS, "seed", "threads", "callbacks")}
    for item in overrides:
        key, eq, text = item.partition("=")
        top, _, name = key.partition(".")
        section = values.get(top)
        if not eq or not isinstance(section, dict) or name not in section or name == "name":
            keys = sorted(k for k in (section if isinstance(section, dict) else values) if k != "name")
            raise UserError(f"unknown override {item!r}; give key=value with a key of params.yaml, "
                            f"e.g. {top}.{keys[0]}=... (valid under {top}: {', '.join(keys)})")
        section[name] = text if isinstance(section[name], str) else parse(item, text)
    return from_dict(values)


def parse(item: str, text: str) -> Any:
    """A command-line value as Hydra reads it (1e-9 is a number)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
    except (yaml.YAMLError, OmegaConfBaseException):
        raise UserError(f"override {item!r}: {text!r} is not a value (a number, true/false, null, text)") from None
