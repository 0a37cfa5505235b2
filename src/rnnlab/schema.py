"""The schema of params.yaml: one dataclass per section, with types, ranges and choices, and no defaults.

Every default lives in conf/ only (tests/test_schema.py compares each field with the composed conf/, for
every option of every group). `rnnlab.params` builds these from params.yaml in one pass; a bad value is
one line naming the key, the value and what is expected (`error: model.hidden_size='abc': expected an
integer`). The allowed choices are declared once, in rnnlab.choices. Plain
Python: the cheap stages (params, prepare, vocab) validate without importing torch.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass

from rnnlab.checks import (at_least, between, check_char_cuts, check_corpus_inputs, check_devices, check_max_time,
                           check_types, check_validation, one_of)
from rnnlab.choices import (ACCELERATORS, CELLS, CLIP_ALGORITHMS, ENCODINGS, FILLERS, FORMATS, HEADS, IMPLS, INITS,
                            LEVELS, NORMALIZATIONS, OPTIMIZERS, PRECISIONS, SCHEDULES, SOURCES, STRATEGIES,
                            TOKENIZERS, UNK_POLICIES)
from rnnlab.errors import UserError

# --- the sections ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSpec:
    source: str
    format: str
    path: str | list[str] | None
    splits: dict | None  # pre-split: train / val / test -> path(s) (file) or {url, sha256} (url)
    url: str | None
    sha256: str | None
    members: str | dict | None  # archive at url: one member, or train / val / test -> member
    mirror: str | None  # a folder of already-downloaded files, tried before any download (same sha256)
    encoding: str  # utf-8 | bytes: one character per byte (latin-1), so bpc is bits per byte
    normalize: str
    lowercase: bool
    max_chars: int | None
    val_frac: float
    test_frac: float
    val_chars: int | None  # exact cuts: the last test_chars characters are test, the val_chars before val
    test_chars: int | None
    split_seed: int
    generator: dict | None  # corpus=agreement: AgreementSpec keys

    def __post_init__(self) -> None:
        check_types(self, "corpus")
        one_of("corpus.source", self.source, SOURCES)
        one_of("corpus.format", self.format, FORMATS)
        one_of("corpus.normalize", self.normalize, NORMALIZATIONS)
        one_of("corpus.encoding", self.encoding, ENCODINGS)
        fracs_ok = 0 <= self.val_frac < 1 and 0 <= self.test_frac < 1 and self.val_frac + self.test_frac < 1
        if not fracs_ok:
            raise UserError(f"corpus.val_frac={self.val_frac} and corpus.test_frac={self.test_frac} leave no training "
                            "data; use fractions in [0, 1) that sum to less than 1")
        at_least("corpus.max_chars", self.max_chars, 1)  # null: all of it
        if self.encoding == "bytes" and self.normalize != "none":
            raise UserError(f"corpus.encoding=bytes keeps every byte as one character; set corpus.normalize=none "
                            f"(not {self.normalize})")
        if self.generator is not None:
            keys = [f.name for f in dataclasses.fields(AgreementSpec)]
            odd = sorted(set(self.generator) ^ set(keys))
            if odd:
                raise UserError(f"corpus.generator.{odd[0]} is {'unknown' if odd[0] in self.generator else 'not set'}; "
                                f"corpus.generator takes {', '.join(keys)} (see conf/corpus/agreement.yaml)")
            AgreementSpec(**self.generator)
        check_corpus_inputs(self)
        check_char_cuts(self)

    @property
    def agreement(self) -> AgreementSpec | None:
        """`generator` as its checked dataclass (corpus=agreement), else None."""
        return None if self.generator is None else AgreementSpec(**self.generator)

    @property
    def split_inputs(self) -> dict:
        """A pre-split corpus's inputs, split -> value (from corpus.splits, or corpus.members as a mapping);
        {} for a single text that `splits.split` divides."""
        for given in (self.splits, self.members):
            if isinstance(given, dict) and any(v is not None for v in given.values()):
                return {name: value for name, value in given.items() if value is not None}
        return {}


@dataclass(frozen=True)
class AgreementSpec:
    n_sentences: int
    min_distance: int
    max_distance: int
    seed: int
    filler: str  # random: N random FILLER words | passage: the first N words of FILLER, in order

    def __post_init__(self) -> None:
        check_types(self, "corpus.generator")
        at_least("corpus.generator.n_sentences", self.n_sentences, 1)
        at_least("corpus.generator.min_distance", self.min_distance, 0)
        if self.max_distance < self.min_distance:
            raise UserError(f"corpus.generator.max_distance={self.max_distance} must be at least "
                            f"corpus.generator.min_distance={self.min_distance}")
        one_of("corpus.generator.filler", self.filler, FILLERS)


@dataclass(frozen=True)
class VocabSpec:
    level: str
    lowercase: bool
    min_freq: int
    max_size: int | None
    tokenizer: str
    unk_token: str  # word level: this literal token in the text is the vocabulary's <unk> (PTB)

    def __post_init__(self) -> None:
        check_types(self, "vocab")
        one_of("vocab.level", self.level, LEVELS)
        one_of("vocab.tokenizer", self.tokenizer, tuple(TOKENIZERS))
        at_least("vocab.min_freq", self.min_freq, 1)
        if not self.unk_token or any(c.isspace() for c in self.unk_token) or self.unk_token == "<eos>":
            raise UserError(f"vocab.unk_token={self.unk_token!r} must be one token without spaces, "
                            "other than <eos> (e.g. <unk>)")


@dataclass(frozen=True)
class ModelSpec:
    cell: str
    embedding_size: int
    hidden_size: int
    num_layers: int
    dropout: float
    tie_weights: bool
    reset_at_eos: bool  # line corpora: each line starts from the zero state, as when sampling
    head: str  # full softmax | adaptive softmax (large vocabularies)
    cutoffs: list[int] | None  # adaptive: cluster boundaries in the frequency-sorted vocabulary
    div_value: float  # adaptive: each cluster's projection is div_value times smaller than the last
    init: str  # rnnlab | uniform (every parameter) | torch (PyTorch's default for the core)
    init_range: float  # U(-r, r) for the embedding and head (every parameter with init=uniform)
    input_dropout: float  # on the embeddings entering the core
    embedding_dropout: float  # drops whole words from the embedding matrix (AWD-LSTM)
    variational: bool  # input and output dropout with one mask per sequence (Gal & Ghahramani 2016)
    impl: str  # auto | torch (nn.RNN/nn.GRU/nn.LSTM) | rnnlab (rnnlab.recurrence's BPTT; CPU, RNN/GRU)
    weight_drop: float  # DropConnect on the hidden-to-hidden weights in training (AWD-LSTM's weight drop)

    def __post_init__(self) -> None:
        check_types(self, "model")
        one_of("model.cell", self.cell, tuple(CELLS))
        one_of("model.impl", self.impl, IMPLS)
        if self.impl == "rnnlab" and self.cell == "lstm":
            raise UserError("model.impl=rnnlab runs RNN and GRU cells only; use model.impl=auto or torch for the LSTM")
        one_of("model.head", self.head, HEADS)
        one_of("model.init", self.init, INITS)
        for key in ("embedding_size", "hidden_size", "num_layers"):
            at_least(f"model.{key}", getattr(self, key), 1)
        for key in ("dropout", "input_dropout", "embedding_dropout", "weight_drop"):
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
    algorithm: str
    lr: float
    weight_decay: float
    momentum: float
    schedule: str
    plateau_factor: float
    plateau_patience: int
    step_start_epoch: int  # schedule=step: lr × step_factor after every epoch from this one on
    step_factor: float
    ar: float  # activation regularisation: ar × mean(dropped outputs²) added to the loss (AWD-LSTM's alpha)
    tar: float  # temporal AR: tar × mean((h_t - h_{t-1})²) of the outputs before dropout (AWD-LSTM's beta)
    nonmono: int  # NT-ASGD: average the weights once validation has not improved for this many; 0: never

    def __post_init__(self) -> None:
        check_types(self, "optim")
        one_of("optim.algorithm", self.algorithm, tuple(OPTIMIZERS))
        one_of("optim.schedule", self.schedule, SCHEDULES)
        for key in ("momentum", "weight_decay", "ar", "tar", "nonmono"):
            at_least(f"optim.{key}", getattr(self, key), 0)
        if self.lr <= 0:
            raise UserError(f"optim.lr={self.lr} must be positive")
        if self.schedule == "step" and not (0 < self.step_factor <= 1 and self.step_start_epoch >= 0):
            raise UserError(f"optim.step_factor={self.step_factor} / optim.step_start_epoch={self.step_start_epoch}: "
                            "use a factor in (0, 1] and a start epoch >= 0 (Zaremba et al.: 0.5 after epoch 4)")


@dataclass(frozen=True)
class DataSpec:
    batch_size: int
    bptt: int
    eval_batch_size: int
    variable_bptt: bool  # training windows of random length around bptt, the lr scaled to each (AWD-LSTM)

    def __post_init__(self) -> None:
        check_types(self, "data")
        for key in ("batch_size", "bptt", "eval_batch_size"):
            at_least(f"data.{key}", getattr(self, key), 1)


@dataclass(frozen=True)
class TrainerSpec:
    """The Trainer arguments conf/trainer/default.yaml sets (Lightning's own names). Other
    lightning.pytorch.Trainer arguments may be added to the section: they are kept in `extra`."""

    max_steps: int
    max_epochs: int | None
    max_time: str | dict | None
    gradient_clip_val: float | None
    gradient_clip_algorithm: str | None
    val_check_interval: int | float | None
    check_val_every_n_epoch: int | None
    limit_val_batches: int | float
    log_every_n_steps: int
    precision: str | int
    accelerator: str
    devices: int | str | list
    strategy: str
    num_nodes: int
    deterministic: bool | str | None
    extra: dict  # further lightning.pytorch.Trainer arguments (checked against its signature)

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
        if self.gradient_clip_algorithm is not None:
            one_of("trainer.gradient_clip_algorithm", self.gradient_clip_algorithm, CLIP_ALGORITHMS)
        at_least("trainer.num_nodes", self.num_nodes, 1)
        check_max_time(self.max_time)
        if "spawn" in self.strategy or self.strategy.startswith(("fsdp", "deepspeed")):
            raise UserError(f"trainer.strategy={self.strategy} is not supported: use ddp (Lightning starts one "
                            "process per device; each owns its share of the streams and its hidden state)")
        one_of("trainer.strategy", self.strategy, STRATEGIES)
        one_of("trainer.accelerator", self.accelerator, ACCELERATORS)
        one_of("trainer.precision", self.precision, PRECISIONS)
        check_validation(self.val_check_interval, self.check_val_every_n_epoch, self.limit_val_batches)
        at_least("trainer.log_every_n_steps", self.log_every_n_steps, 1)
        if self.max_epochs is not None and self.max_epochs != -1:
            at_least("trainer.max_epochs", self.max_epochs, 1)
        if self.deterministic not in (True, False, None, "warn"):
            raise UserError(f"trainer.deterministic={self.deterministic!r} is not known; use true, false, warn or null")
        check_devices(self.devices)

    def kwargs(self) -> dict:
        """The arguments of lightning.pytorch.Trainer (a clip value of 0 means off, as None does)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return values | {"gradient_clip_val": self.gradient_clip_val or None} | self.extra


@dataclass(frozen=True)
class GradStatsSpec:
    every_n_steps: int  # gradient norms every k steps (0: off)
    gtt_length: int  # T of the gradient-through-time probe (0: off)
    gtt_batch: int  # validation streams averaged by the probe
    samples: int  # samples logged to MLflow at each validation (0: off), drawn with these settings:
    sample_length: int  # (their own keys, not sample.*: the sample stage's settings never rerun the training)
    sample_temperature: float
    sample_top_k: int | None
    sample_top_p: float | None
    sample_greedy: bool
    sample_prime: str
    sample_unk: str

    def __post_init__(self) -> None:
        check_types(self, "gradstats")
        for key in ("every_n_steps", "gtt_length", "samples"):
            at_least(f"gradstats.{key}", getattr(self, key), 0)
        for key in ("gtt_batch", "sample_length"):
            at_least(f"gradstats.{key}", getattr(self, key), 1)
        check_sampling("gradstats.sample_", self.sample_temperature, self.sample_top_k, self.sample_top_p,
                       self.sample_unk)


@dataclass(frozen=True)
class TrackingSpec:
    uri: str | None
    experiment: str
    run_name: str | None
    register_model: str | None  # a Model Registry name: each training registers its sampler model (rnnlab.sampler_model)

    def __post_init__(self) -> None:
        check_types(self, "tracking")
        name = self.register_model  # MLflow's rules: not blank, no '/' or ':', not a path such as '.' or '..x'
        if name is not None and (not name.strip() or "/" in name or ":" in name or name in (".", "..")
                                 or name.startswith("..") or posixpath.normpath(name) != name):
            raise UserError(f"tracking.register_model={name!r} is not a model name; give a name without '/' or ':' "
                            "that is not '.' and does not start with '..' (e.g. shakespeare-gru), or null to log the "
                            "model without registering it")


@dataclass(frozen=True)
class SampleSpec:
    num_samples: int
    max_length: int
    temperature: float
    top_k: int | None
    top_p: float | None
    greedy: bool
    prime: str
    seed: int
    unk: str
    checkpoint: str | None  # a model folder or a Lightning .ckpt (null: the train stage's model)

    def __post_init__(self) -> None:
        check_types(self, "sample")
        between("sample.seed", self.seed, 0, 2**64 - 1)  # torch.Generator's range
        for key in ("num_samples", "max_length"):
            at_least(f"sample.{key}", getattr(self, key), 1)
        check_sampling("sample.", self.temperature, self.top_k, self.top_p, self.unk)


def check_sampling(key: str, temperature: float, top_k: int | None, top_p: float | None, unk: str) -> None:
    """The sampler's settings: the sample stage's (`key` "sample.") and the validation samples' ("gradstats.sample_")."""
    at_least(f"{key}top_k", top_k, 1)  # null keeps every token
    if temperature <= 0:
        raise UserError(f"{key}temperature={temperature} must be above 0; for argmax decoding set {key}greedy=true")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"{key}top_p={top_p} must be in (0, 1]; use null to keep every token")
    one_of(f"{key}unk", unk, UNK_POLICIES)


@dataclass(frozen=True)
class EvaluateSpec:
    batch_size: int
    bptt: int
    agreement_distances: list[int]
    agreement_per_distance: int
    cache_size: int  # the continuous cache (rnnlab.cache): steps remembered per stream; 0 = off
    cache_theta: list[float]  # the grids of θ and λ tried on the val split
    cache_lambda: list[float]

    def __post_init__(self) -> None:
        check_types(self, "evaluate")
        for key in ("batch_size", "bptt", "agreement_per_distance"):
            at_least(f"evaluate.{key}", getattr(self, key), 1)
        at_least("evaluate.cache_size", self.cache_size, 0)
        if not self.cache_theta or min(self.cache_theta) < 0:
            raise UserError(f"evaluate.cache_theta={self.cache_theta}: give one or more numbers >= 0 (e.g. [0.3, 0.6])")
        if not self.cache_lambda or not all(0 <= v <= 1 for v in self.cache_lambda):
            raise UserError(f"evaluate.cache_lambda={self.cache_lambda}: give one or more numbers from 0 to 1 "
                            "(e.g. [0.1, 0.2])")


@dataclass(frozen=True)
class PathsSpec:  # where each stage writes (dvc.yaml reads these too)
    raw: str
    prepared: str
    vocab: str
    train: str
    samples: str
    eval: str
    state: str

    def __post_init__(self) -> None:
        check_types(self, "paths")
