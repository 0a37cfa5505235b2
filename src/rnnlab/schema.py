"""The schema of params.yaml: one dataclass per config section, with types and allowed ranges.

This is the one declaration of every key a stage reads: `validate(params)` checks a whole composed
config (when `python -m rnnlab.config` writes params.yaml, and at the start of every stage script,
before anything is deleted or any MLflow run is created), and the library builds these same
dataclasses from their sections (`rnnlab.config.section`). A wrong type or an out-of-range value is one
line naming the key, the value given and what is expected:

    error: model.hidden_size='abc': expected an integer
    error: trainer.max_steps=0 trains nothing; give at least 1 (or -1 with trainer.max_time)

A new key is checked by adding it, with its type, to its dataclass here. Plain Python: the cheap stages
(params, prepare, vocab) validate without importing torch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from rnnlab.errors import UserError

SOURCES = ("shakespeare", "file", "url", "agreement")
FORMATS = ("text", "lines")
ENCODINGS = ("utf-8", "bytes")
SPLIT_NAMES = ("train", "val", "test")
NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD", "none")
LEVELS = ("char", "word")
TOKENIZER_NAMES = ("words", "whitespace")
CELL_NAMES = ("rnn", "gru", "lstm")
HEADS = ("full", "adaptive")
INITS = ("rnnlab", "uniform", "torch")
OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "plateau", "step")
UNK_POLICIES = ("allow", "reject")


# --- type checking -------------------------------------------------------------------------------------


def describe(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             type(None): "null", dict: "a mapping", list: "a list"}
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {describe(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    return names.get(origin or hint, str(hint))


def matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(matches(v, typing.get_args(hint)[0]) for v in value)
    return isinstance(value, origin or hint)


def check_types(spec: Any, key: str) -> None:
    """Raise a one-line UserError when a field of the dataclass instance `spec` has the wrong type."""
    hints = typing.get_type_hints(type(spec))
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if not matches(value, hints[f.name]):
            raise UserError(f"{key}.{f.name}={value!r}: expected {describe(hints[f.name])}")


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        quoted = ", ".join(allowed) if len(allowed) > 2 else " or ".join(repr(a) for a in allowed)
        raise UserError(f"{key}={value!r} is not known; use {'one of ' if len(allowed) > 2 else ''}{quoted}")


def at_least(key: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise UserError(f"{key}={value} must be at least {low}")


# --- the sections ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSpec:
    source: str = "shakespeare"
    format: str = "text"
    path: str | list[str] | None = None
    splits: dict | None = None  # pre-split: train / val / test -> path(s) (file) or {url, sha256} (url)
    url: str | None = None
    sha256: str | None = None
    members: str | dict | None = None  # archive at url: one member, or train / val / test -> member
    encoding: str = "utf-8"  # utf-8 | bytes: one character per byte (latin-1), so bpc is bits per byte
    normalize: str = "NFC"
    lowercase: bool = False
    max_chars: int | None = None
    val_frac: float = 0.05
    test_frac: float = 0.05
    val_chars: int | None = None  # exact cuts: the last test_chars characters are test, the val_chars before val
    test_chars: int | None = None
    split_seed: int = 0
    generator: dict | None = None  # corpus=agreement: AgreementSpec keys

    def __post_init__(self) -> None:
        check_types(self, "corpus")
        one_of("corpus.source", self.source, SOURCES)
        one_of("corpus.format", self.format, FORMATS)
        one_of("corpus.normalize", self.normalize, NORMALIZATIONS)
        one_of("corpus.encoding", self.encoding, ENCODINGS)
        fracs_ok = 0 <= self.val_frac < 1 and 0 <= self.test_frac < 1 and self.val_frac + self.test_frac < 1
        if not fracs_ok:
            raise UserError(
                f"corpus.val_frac={self.val_frac} and corpus.test_frac={self.test_frac} leave no training data; "
                "use fractions in [0, 1) that sum to less than 1"
            )
        if self.max_chars is not None and self.max_chars < 1:
            raise UserError(f"corpus.max_chars={self.max_chars} must be a positive number of characters or null")
        if self.encoding == "bytes" and self.normalize != "none":
            raise UserError(f"corpus.encoding=bytes keeps every byte as one character; set corpus.normalize=none "
                            f"(not {self.normalize})")
        if self.generator is not None:
            try:
                AgreementSpec(**self.generator)
            except TypeError:
                raise UserError(f"corpus.generator has an unknown key ({', '.join(self.generator)}); valid keys: "
                                f"{', '.join(f.name for f in dataclasses.fields(AgreementSpec))}") from None
        check_corpus_inputs(self)
        check_char_cuts(self)

    @property
    def split_inputs(self) -> dict:
        """A pre-split corpus's inputs, split -> value (from corpus.splits, or corpus.members as a mapping);
        {} for a single text that `corpus.split` divides."""
        for given in (self.splits, self.members):
            if isinstance(given, dict) and any(v is not None for v in given.values()):
                return {name: value for name, value in given.items() if value is not None}
        return {}


def check_corpus_inputs(spec: CorpusSpec) -> None:
    """One input (corpus.path, or corpus.url with an optional archive member) or one per split, never both."""
    for key in ("splits", "members"):
        value = getattr(spec, key)
        unknown = sorted(set(value) - set(SPLIT_NAMES)) if isinstance(value, dict) else []
        if unknown:
            raise UserError(f"corpus.{key}.{unknown[0]} is not a split; use train, val and test")
    if isinstance(spec.members, dict) and not all(v is None or isinstance(v, str) for v in spec.members.values()):
        raise UserError(f"corpus.members={spec.members!r}: expected a member name, "
                        "or train / val / test -> member name")
    splits = {k: v for k, v in (spec.splits or {}).items() if v is not None}
    if splits and spec.source not in ("file", "url"):
        raise UserError(f"corpus.splits is for corpus=file or corpus=url, not source {spec.source}; remove it")
    if splits and (spec.path is not None or spec.url is not None):
        key = "path" if spec.path is not None else "url"
        raise UserError(f"corpus.{key} and corpus.splits are both set; give one: corpus.{key} (one text, split by "
                        "val_frac / test_frac) or corpus.splits (one input per split)")
    if spec.members is not None and (spec.source != "url" or spec.url is None):
        raise UserError("corpus.members names files inside the archive at corpus.url (corpus=url); "
                        "set corpus.url or remove corpus.members")
    given = spec.split_inputs
    if given and not {"train", "val"} <= set(given):
        key = "splits" if splits else "members"
        missing = "train" if "train" not in given else "val"
        raise UserError(f"corpus.{key}.{missing} is not set; a pre-split corpus needs train and val (test may be null)")
    if spec.source == "file" and not given and not spec.path:
        raise UserError("corpus=file needs a path: set corpus.path=<file, list of files or glob>, or "
                        "corpus.splits.train=<file> corpus.splits.val=<file> [corpus.splits.test=<file>]")
    for name, value in splits.items():
        check_split_input(spec.source, name, value)
    check_sha256("corpus.sha256", spec.sha256)


def check_split_input(source: str, name: str, value: Any) -> None:
    key = f"corpus.splits.{name}"
    if source == "file" and not matches(value, str | list[str]):
        raise UserError(f"{key}={value!r}: expected a path, a list of paths or a glob")
    if source == "url":
        if not isinstance(value, dict) or set(value) != {"url", "sha256"} or not isinstance(value["url"], str):
            raise UserError(f"{key}={value!r}: expected {{url: <address>, sha256: <64 hex digits>}}")
        check_sha256(f"{key}.sha256", value["sha256"])


def check_sha256(key: str, value: Any) -> None:
    if value is not None and not (isinstance(value, str) and len(value) == 64
                                  and all(c in "0123456789abcdef" for c in value)):
        raise UserError(f"{key}={value!r}: expected 64 lowercase hex digits (what sha256sum prints), or null")


def check_char_cuts(spec: CorpusSpec) -> None:
    """corpus.val_chars / test_chars: exact cuts of one running text (enwik8, text8), instead of the fractions."""
    if spec.val_chars is None and spec.test_chars is None:
        return
    at_least("corpus.val_chars", spec.val_chars, 0)
    at_least("corpus.test_chars", spec.test_chars, 0)
    if spec.format != "text":
        raise UserError("corpus.val_chars / corpus.test_chars cut running text (corpus.format=text); "
                        "for format lines use corpus.val_frac / corpus.test_frac")
    if spec.split_inputs:
        raise UserError("corpus.val_chars / corpus.test_chars cut a single text, but this corpus comes pre-split "
                        "(corpus.splits / corpus.members); set them to null")


@dataclass(frozen=True)
class AgreementSpec:
    n_sentences: int = 20000
    min_distance: int = 0
    max_distance: int = 40
    seed: int = 0
    filler: str = "random"  # random: N random FILLER words | passage: the first N words of FILLER, in order

    def __post_init__(self) -> None:
        check_types(self, "corpus.generator")
        at_least("corpus.generator.n_sentences", self.n_sentences, 1)
        at_least("corpus.generator.min_distance", self.min_distance, 0)
        if self.max_distance < self.min_distance:
            raise UserError(f"corpus.generator.max_distance={self.max_distance} must be at least "
                            f"corpus.generator.min_distance={self.min_distance}")
        one_of("corpus.generator.filler", self.filler, ("random", "passage"))


@dataclass(frozen=True)
class VocabSpec:
    level: str = "char"
    lowercase: bool = False
    min_freq: int = 1
    max_size: int | None = None
    tokenizer: str = "words"
    unk_token: str = "<unk>"  # word level: this literal token in the text is the vocabulary's <unk> (PTB)

    def __post_init__(self) -> None:
        check_types(self, "vocab")
        one_of("vocab.level", self.level, LEVELS)
        one_of("vocab.tokenizer", self.tokenizer, TOKENIZER_NAMES)
        at_least("vocab.min_freq", self.min_freq, 1)
        if not self.unk_token or any(c.isspace() for c in self.unk_token) or self.unk_token == "<eos>":
            raise UserError(f"vocab.unk_token={self.unk_token!r} must be one token without spaces, "
                            "other than <eos> (e.g. <unk>)")


@dataclass(frozen=True)
class ModelSpec:
    cell: str = "gru"
    embedding_size: int = 128
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0
    tie_weights: bool = False
    reset_at_eos: bool = False  # line corpora: each line starts from the zero state, as when sampling
    head: str = "full"  # full softmax | adaptive softmax (large vocabularies)
    cutoffs: list[int] | None = None  # adaptive: cluster boundaries in the frequency-sorted vocabulary
    div_value: float = 4.0  # adaptive: each cluster's projection is div_value times smaller than the last
    init: str = "rnnlab"  # rnnlab | uniform (every parameter) | torch (PyTorch's default for the core)
    init_range: float = 0.1  # U(-r, r) for the embedding and head (every parameter with init=uniform)
    input_dropout: float = 0.0  # on the embeddings entering the core
    embedding_dropout: float = 0.0  # drops whole words from the embedding matrix (AWD-LSTM)
    variational: bool = False  # input and output dropout with one mask per sequence (Gal & Ghahramani 2016)

    def __post_init__(self) -> None:
        check_types(self, "model")
        one_of("model.cell", self.cell, CELL_NAMES)
        one_of("model.head", self.head, HEADS)
        one_of("model.init", self.init, INITS)
        for key in ("embedding_size", "hidden_size", "num_layers"):
            at_least(f"model.{key}", getattr(self, key), 1)
        for key in ("dropout", "input_dropout", "embedding_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise UserError(f"model.{key}={getattr(self, key)} must be in [0, 1)")
        if self.init_range <= 0:
            raise UserError(f"model.init_range={self.init_range} must be positive")
        if self.head == "adaptive" and self.div_value <= 1:
            raise UserError(f"model.div_value={self.div_value} must be above 1 (e.g. 4)")
        if self.head == "adaptive" and self.tie_weights:
            raise UserError("model.tie_weights=true needs model.head=full (the adaptive head has no single "
                            "output embedding to share); set one of them differently")
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise UserError(
                f"model.tie_weights=true needs model.embedding_size == model.hidden_size "
                f"(got {self.embedding_size} and {self.hidden_size}); set model.embedding_size={self.hidden_size} "
                "or model.tie_weights=false"
            )


@dataclass(frozen=True)
class OptimSpec:
    algorithm: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: str = "none"
    plateau_factor: float = 0.25
    plateau_patience: int = 0
    step_start_epoch: int = 4  # schedule=step: lr × step_factor after every epoch from this one on
    step_factor: float = 0.5

    def __post_init__(self) -> None:
        check_types(self, "optim")
        one_of("optim.algorithm", self.algorithm, OPTIMIZER_NAMES)
        one_of("optim.schedule", self.schedule, SCHEDULES)
        if self.lr <= 0:
            raise UserError(f"optim.lr={self.lr} must be positive")
        if self.schedule == "step" and not (0 < self.step_factor <= 1 and self.step_start_epoch >= 0):
            raise UserError(f"optim.step_factor={self.step_factor} / optim.step_start_epoch={self.step_start_epoch}: "
                            "use a factor in (0, 1] and a start epoch >= 0 (Zaremba et al.: 0.5 after epoch 4)")


@dataclass(frozen=True)
class DataSpec:
    batch_size: int = 64
    bptt: int = 128
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        check_types(self, "data")
        for key in ("batch_size", "bptt", "eval_batch_size"):
            at_least(f"data.{key}", getattr(self, key), 1)


@dataclass(frozen=True)
class TrainerSpec:
    """The Trainer arguments conf/trainer/default.yaml sets (Lightning's own names). Other
    lightning.pytorch.Trainer arguments may be added; training checks those against Lightning's signature."""

    max_steps: int = 1500
    max_epochs: int | None = -1
    max_time: str | dict | None = None
    gradient_clip_val: float | None = 1.0
    gradient_clip_algorithm: str | None = "norm"
    val_check_interval: int | float | None = 250
    check_val_every_n_epoch: int | None = None
    limit_val_batches: int | float = 1.0
    log_every_n_steps: int = 20
    precision: str | int = "32-true"
    accelerator: str = "auto"
    devices: int | str | list = 1
    strategy: str = "auto"
    num_nodes: int = 1
    deterministic: bool | str | None = False

    def __post_init__(self) -> None:
        check_types(self, "trainer")
        if self.max_steps == 0 or self.max_steps < -1:
            raise UserError(f"trainer.max_steps={self.max_steps} trains nothing; give at least 1 "
                            "(or -1 with trainer.max_time)")
        if self.max_steps == -1 and self.max_time is None and self.max_epochs in (None, -1):
            raise UserError("trainer.max_steps=-1 with no trainer.max_time and no trainer.max_epochs never stops; "
                            "set trainer.max_steps (e.g. 1500) or trainer.max_time")
        if self.gradient_clip_val is not None and self.gradient_clip_val < 0:
            raise UserError(f"trainer.gradient_clip_val={self.gradient_clip_val} must be a number >= 0 "
                            "(0 or null: no clipping)")
        if self.gradient_clip_algorithm not in (None, "norm", "value"):
            raise UserError(f"trainer.gradient_clip_algorithm={self.gradient_clip_algorithm!r}: use norm or value")
        at_least("trainer.num_nodes", self.num_nodes, 1)
        if "spawn" in self.strategy or self.strategy.startswith(("fsdp", "deepspeed")):
            raise UserError(f"trainer.strategy={self.strategy} is not supported: use ddp (Lightning starts one "
                            "process per device; each owns its share of the streams and its hidden state)")


@dataclass(frozen=True)
class GradStatsSpec:
    every_n_steps: int = 20  # gradient norms every k steps (0: off)
    gtt_length: int = 100  # T of the gradient-through-time probe (0: off)
    gtt_batch: int = 16  # validation streams averaged by the probe
    samples: int = 3  # samples logged to MLflow at each validation (0: off)
    sample_length: int = 200

    def __post_init__(self) -> None:
        check_types(self, "gradstats")
        for key in ("every_n_steps", "gtt_length", "samples"):
            at_least(f"gradstats.{key}", getattr(self, key), 0)
        for key in ("gtt_batch", "sample_length"):
            at_least(f"gradstats.{key}", getattr(self, key), 1)


@dataclass(frozen=True)
class TrackingSpec:
    uri: str | None = None
    experiment: str = "rnnlab"
    run_name: str | None = None

    def __post_init__(self) -> None:
        check_types(self, "tracking")


@dataclass(frozen=True)
class SampleSpec:
    num_samples: int = 5
    max_length: int = 300
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    prime: str = ""
    seed: int = 0
    unk: str = "allow"
    checkpoint: str | None = None  # a model folder or a Lightning .ckpt (null: the train stage's model)

    def __post_init__(self) -> None:
        check_types(self, "sample")
        checks = [
            (self.num_samples < 1, f"sample.num_samples={self.num_samples} must be at least 1"),
            (self.max_length < 1, f"sample.max_length={self.max_length} must be at least 1"),
            (self.temperature <= 0, f"sample.temperature={self.temperature} must be above 0; "
                                    "for argmax decoding set sample.greedy=true"),
            (self.top_k is not None and self.top_k < 1, f"sample.top_k={self.top_k} must be at least 1; "
                                                        "use null to keep every token"),
            (self.top_p is not None and not 0 < self.top_p <= 1, f"sample.top_p={self.top_p} must be in (0, 1]; "
                                                                 "use null to keep every token"),
        ]
        for bad, message in checks:
            if bad:
                raise UserError(message)
        one_of("sample.unk", self.unk, UNK_POLICIES)


@dataclass(frozen=True)
class EvaluateSpec:
    batch_size: int = 32
    bptt: int = 256
    agreement_distances: list[int] = dataclasses.field(default_factory=lambda: [0, 10, 20, 40])
    agreement_per_distance: int = 200

    def __post_init__(self) -> None:
        check_types(self, "evaluate")
        for key in ("batch_size", "bptt", "agreement_per_distance"):
            at_least(f"evaluate.{key}", getattr(self, key), 1)


@dataclass(frozen=True)
class TopLevel:
    """The keys outside any group."""

    seed: int = 1337
    threads: int | None = None
    callbacks: list = dataclasses.field(default_factory=list)  # Hydra `_target_` entries: extra Lightning callbacks
    paths: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_types(self, "params")
        at_least("threads", self.threads, 1)
        bad = [k for k, v in self.paths.items() if not isinstance(v, str)]
        if bad:
            raise UserError(f"paths.{bad[0]}={self.paths[bad[0]]!r}: expected a string (a folder)")


SECTIONS = {"corpus": CorpusSpec, "vocab": VocabSpec, "model": ModelSpec, "optim": OptimSpec, "data": DataSpec,
            "trainer": TrainerSpec, "gradstats": GradStatsSpec, "tracking": TrackingSpec, "sample": SampleSpec,
            "evaluate": EvaluateSpec}


T = typing.TypeVar("T")


def build(cls: type[T], key: str, values: dict) -> T:
    """The dataclass `cls` from the section `key` (a plain dict; `name`, the group option, is left out)."""
    values = {k: v for k, v in values.items() if k != "name"}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown key {key}.{unknown[0]}; valid keys of {key}: {', '.join(sorted(known))}")
    missing = [k for k, v in values.items() if v == "???"]
    if missing:
        raise UserError(f"{key}.{missing[0]} must be set: add {key}.{missing[0]}=<value> to your overrides")
    return cls(**values)


def trainer_spec(values: dict) -> TrainerSpec:
    """The keys TrainerSpec declares, checked; the section may hold more Lightning arguments, which
    training checks against lightning.pytorch.Trainer's signature."""
    known = {f.name for f in dataclasses.fields(TrainerSpec)}
    return build(TrainerSpec, "trainer", {k: v for k, v in values.items() if k in known})


def validate(params: dict) -> None:
    """Check every section of a composed config (a plain dict); the first problem is one UserError."""
    for key, cls in SECTIONS.items():
        if key not in params:
            raise UserError(f"params.yaml has no `{key}` section; recompose it: python -m rnnlab.config")
        trainer_spec(params[key]) if cls is TrainerSpec else build(cls, key, params[key])
    top = {f.name for f in dataclasses.fields(TopLevel)}
    TopLevel(**{k: v for k, v in params.items() if k in top})
