"""What an Optuna study searches and how: the search space and the sweeper's settings, checked before the
first trial (rnnlab.search runs the study).

    spec = checked(settings, arguments)   # settings: hydra.sweeper's keys; arguments: the command line's
    spec.dists, spec.fixed                # Optuna distributions of the searched keys; fixed `key=value`s

Every mistake is one `UserError` line naming the value and the fix: interval bounds (finite, low < high,
positive on a log scale, whole numbers for `int`), unknown tags, empty ranges, n_trials / n_jobs (whole
numbers ≥ 1), direction, the study's name, the sampler and the pruner (`null`: no pruning), and a key
given both a fixed value and a search range. The rule for that last one: a fixed `key=value` on the
command line takes the key out of the preset's search space (`hydra.sweeper.params`), and the sweep says
so in one line; a key both fixed and searched on the command line itself is an error.
A resumed study must search the space it was started with (`check_same_space`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from rnnlab.errors import UserError

SIMPLE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+")
TAGS = {"log", "int"}
DIRECTIONS = ("minimize", "maximize")
NAME_MAX = 512  # Optuna's column for study names
# How the sweeper (rnnlab.search) hands each job its trial (rnnlab.trial reads them): Hydra's hydra.job.env_set
STORAGE_ENV, STUDY_ENV, TRIAL_ENV = "RNNLAB_OPTUNA_STORAGE", "RNNLAB_OPTUNA_STUDY", "RNNLAB_OPTUNA_TRIAL"


@dataclasses.dataclass
class Spec:
    """A checked study: its search space, fixed overrides and settings (sampler, pruner instantiated)."""

    dists: dict
    fixed: list[str]
    n_trials: int
    n_jobs: int | None
    direction: str
    study_name: str | None
    sampler: Any
    pruner: Any
    notes: list[str]


def checked(settings: dict, arguments: list[str]) -> Spec:
    """The sweeper's settings (hydra.sweeper.*, as plain values) and the command line's overrides, checked."""
    n_trials = count("n_trials", settings.get("n_trials"))
    n_jobs = None if settings.get("n_jobs") is None else count("n_jobs", settings.get("n_jobs"))
    direction = settings.get("direction")
    if direction not in DIRECTIONS:
        raise UserError(f"hydra.sweeper.direction={direction!r}: give minimize or maximize")
    name = study_name(settings.get("study_name"))
    dists, fixed, notes = search_space(settings.get("params") or {}, arguments)
    return Spec(dists, fixed, n_trials, n_jobs, direction, name, sampler(settings.get("sampler")),
                pruner(settings.get("pruner")), notes)


def count(key: str, value: Any) -> int:
    """A whole number ≥ 1 (`hydra.sweeper.n_trials=2.5`, `abc` or `true` are mistakes, not rounded)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"hydra.sweeper.{key}={value!r} must be a whole number of at least 1")
    return value


def study_name(name: Any) -> str | None:
    """None (the sweep folder's name) or a printable name Optuna can store."""
    if name is None:
        return None
    text = str(name)
    if type(name) not in (str, int) or not text.strip() or len(text) > NAME_MAX or not text.isprintable():
        raise UserError(f"hydra.sweeper.study_name={name!r}: give a name of 1 to {NAME_MAX} printable characters "
                        "(or null: the sweep folder's name)")
    return text


def instantiated(key: str, config: Any, kind: type):
    """hydra.sweeper.<key> (`_target_: optuna.<…>` and its arguments) as an object of `kind`."""
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(config, (dict, DictConfig)) or "_target_" not in config:
        raise UserError(f"hydra.sweeper.{key}={config!r}: give `_target_: optuna.{key}s.<class>` and its arguments")
    try:
        made = instantiate(OmegaConf.create(config) if isinstance(config, dict) else config)
    except (HydraException, TypeError, ValueError, ImportError) as err:
        cause = err.__cause__ or err
        first = " ".join(str(cause).split()).split(", set env var HYDRA")[0] or type(cause).__name__
        off = "; hydra.sweeper.pruner=null turns pruning off" if key == "pruner" else ""
        raise UserError(f"hydra.sweeper.{key}: {first[:200]}; see optuna.{key}s for the classes and their "
                        f"arguments{off}") from None
    if not isinstance(made, kind):
        raise UserError(f"hydra.sweeper.{key}._target_={config['_target_']} is not an optuna.{key}s class")
    return made


def sampler(config: Any):
    from optuna.samplers import BaseSampler

    return instantiated("sampler", config, BaseSampler)


def pruner(config: Any):
    """The study's pruner; `hydra.sweeper.pruner=null` turns pruning off (Optuna's NopPruner)."""
    from optuna.pruners import BasePruner, NopPruner

    return NopPruner() if config is None else instantiated("pruner", config, BasePruner)


# ---- the search space -------------------------------------------------------------------------------------

def search_space(params: dict, arguments: list[str]) -> tuple[dict, list[str], list[str]]:
    """(distributions, fixed overrides, notes) from the preset's `hydra.sweeper.params` and the command line.
    A key the command line fixes leaves the preset's space (a note says so)."""
    preset = parse([f"{key}={value}" for key, value in params.items()], "hydra.sweeper.params")
    given = parse(list(arguments), "the command line")
    dists, fixed = space(given)
    notes = []
    for override in preset:
        key = override.get_key_element()
        if key in dists:
            continue  # the command line searches it its own way
        if any(f.split("=", 1)[0].lstrip("+~") == key for f in fixed):
            notes.append(f"{key}: the command line's fixed value replaces the search range {text(override)} of "
                         "hydra.sweeper.params (not searched)")
            continue
        preset_dists, preset_fixed = space([override])
        dists |= preset_dists
        fixed += preset_fixed
    if not dists:
        raise UserError("the optuna sweeper has no search space; give hydra.sweeper.params (e.g. in an "
                        "+experiment= preset) or a swept override such as 'optim.lr=tag(log, interval(1e-4, 1e-2))'")
    return dists, fixed, notes


def parse(overrides: list[str], where: str) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except (HydraException, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"{where}: {first} (check the override's syntax)") from None


def space(overrides: list) -> tuple[dict, list[str]]:
    """Hydra overrides → (Optuna distributions of the swept keys, the fixed overrides as strings)."""
    dists, fixed = {}, []
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if key in dists or any(f.split("=", 1)[0].lstrip("+~") == key for f in fixed):
                raise UserError(f"{key} is given twice on the command line; give it one fixed value or one range")
            dists[key] = distribution(override)
        else:
            if key in dists:
                raise UserError(f"{key} is given twice on the command line; give it one fixed value or one range")
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    return dists, fixed


def distribution(override):
    key, value = override.get_key_element(), override.value()
    if override.is_interval_sweep():
        return interval(key, value.start, value.end, set(value.tags or ()))
    if override.is_range_sweep():
        return int_range(key, override)
    if override.is_choice_sweep():
        return categorical(key, list(override.sweep_iterator()))
    raise UserError(f"{key}: the optuna sweeper takes choice(…), a,b,c, range(…) or interval(…), not "
                    f"{text(override)}")


def text(override) -> str:
    """The value as the user wrote it."""
    return override.input_line.split("=", 1)[-1] if override.input_line else str(override.value())


def interval(key: str, low: float, high: float, tags: set):
    """interval(low, high) with the tags `log` (log-uniform) and `int` (whole numbers), checked."""
    from optuna.distributions import FloatDistribution, IntDistribution

    shown = f"{key}=" + (f"tag({', '.join(sorted(tags))}, " if tags else "") + f"interval({low}, {high})" + \
        (")" if tags else "")
    if tags - TAGS:
        raise UserError(f"{shown}: unknown tag {', '.join(sorted(tags - TAGS))}; the tags are log and int")
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise UserError(f"{shown}: give finite bounds with low < high")
    if "log" in tags and low <= 0:
        raise UserError(f"{shown}: a log scale needs low > 0")
    if "int" in tags:
        if low != int(low) or high != int(high):
            raise UserError(f"{shown}: an int interval needs whole-number bounds")
        return IntDistribution(int(low), int(high), log="log" in tags)
    return FloatDistribution(float(low), float(high), log="log" in tags)


def int_range(key: str, override):
    """range(start, stop[, step]): whole numbers as an IntDistribution; floats as choices; never empty."""
    try:
        values = list(override.sweep_iterator())
    except ValueError as err:  # range(1, 5, 0)
        raise UserError(f"{key}={text(override)}: {err}") from None
    if not values:
        raise UserError(f"{key}={text(override)} is empty; give start < stop for a positive step")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and len(values) > 1:
        from optuna.distributions import IntDistribution

        return IntDistribution(values[0], values[-1], step=values[1] - values[0]) if values[1] > values[0] \
            else categorical(key, values)
    return categorical(key, values)


def categorical(key: str, values: list):
    from optuna.distributions import CategoricalDistribution

    if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
        raise UserError(f"{key}: the optuna sweeper's choices must be plain values (numbers, strings), not "
                        f"{values}")
    if len(set(map(repr, values))) < len(values):
        raise UserError(f"{key}: the choices {values} repeat a value; give each once")
    return CategoricalDistribution(values)


def check_same_space(study, dists: dict, storage: str) -> None:
    """A study resumed with another space would mix trials of two searches (and Optuna stops mid-way)."""
    stored = {}
    for trial in study.get_trials(deepcopy=False):
        stored |= trial.distributions
    if not stored:
        return
    differ = sorted(k for k in set(stored) | set(dists) if stored.get(k) != dists.get(k))
    if differ:
        before = ", ".join(f"{k}: {show(stored.get(k))}" for k in differ)
        now = ", ".join(f"{k}: {show(dists.get(k))}" for k in differ)
        raise UserError(f"the Optuna study {study.study_name!r} in {storage} searched {before}; this sweep searches "
                        f"{now}; give the study's space, or a new hydra.sweeper.study_name for a new study")


def show(dist) -> str:
    if dist is None:
        return "nothing"
    if hasattr(dist, "choices"):
        return f"choice{tuple(dist.choices)}"
    kind = ("int " if type(dist).__name__ == "IntDistribution" else "") + ("log " if dist.log else "")
    return f"{kind}interval({dist.low}, {dist.high})" + (f" step {dist.step}" if getattr(dist, "step", None) else "")


# ---- back to Hydra overrides ------------------------------------------------------------------------------

def assignment(key: str, value: Any) -> str:
    """`key=value` as a Hydra override; strings with special characters quoted."""
    if isinstance(value, str) and not set(value) <= SIMPLE:
        return f"{key}={quote(value)}"
    if value is None:
        return f"{key}=null"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def quote(text: str) -> str:
    """Hydra's quoted string: backslashes are escaped only where they precede a quote or end the string."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"
