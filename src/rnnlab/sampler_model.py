"""The trained model as an MLflow Model: a `pyfunc` that wraps the vocabulary and the lecture's sampler.

At the end of training, `log` adds it to the run (`sampler/`, shown in the MLflow UI's model view) and,
with `tracking.register_model=<name>`, registers a version under that name (`python -m rnnlab.registry`
registers an already-trained model, and moves the `champion` alias). Anywhere rnnlab is installed:

    model = mlflow.pyfunc.load_model("models:/<name>@champion")      # or runs:/<run id>/sampler
    model.predict(pd.DataFrame([{"prime": "the", "seed": 1, "num_samples": 3}]))
    mlflow models serve -m models:/<name>@champion --env-manager local -h 127.0.0.1 -p 5001

Each input row asks for `num_samples` samples; a column left out (or null, NaN) takes the training's
`sample:` value (stored with the model), so a row with the sample stage's values draws exactly the sample
stage's texts, and an empty row `{}` draws the stage's samples. Output: one row per sample, with the input
row it answers, its text (prime included) and why it stopped (`eos` or `max_length`). A vocabulary whose
hash differs from the model's is refused when loading, with the stages' one-line error.

The model checks each request before any work, with the sample stage's own checks (rnnlab.schema's
SampleSpec: types, ranges; a prime under `unk: reject` must be in the vocabulary) and with limits on its
size (`LIMITS`, overridden per process by environment variables, e.g. `RNNLAB_SERVE_MAX_TOKENS=20000
mlflow models serve ...`): rows, samples, tokens, the memory of the largest row's tensors and the compute
(2 multiply-adds per weight per token), so that one request stays within seconds and well under 1 GB. A
refused request raises `RequestError`: one line, which `mlflow models serve` answers as HTTP 400 with that
line as the message and no stack trace. The input has no MLflow input schema on purpose: MLflow's schema
enforcement drops unknown columns silently and answers type errors with its own multi-line messages; the
columns are listed in the MLmodel's `metadata` instead (`INPUTS`).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from rnnlab.errors import UserError

ARTIFACT_PATH = "sampler"
INPUTS = {"prime": str, "temperature": float, "top_k": int, "top_p": float, "greedy": bool, "num_samples": int,
          "max_length": int, "seed": int, "unk": str}
OUTPUTS = {"row": "long", "sample": "long", "text": "string", "stopped": "string", "length": "long",
           "unk_rejections": "long"}
# Per request. tokens: num_samples × (prime tokens + max_length), summed over rows; memory_mb: the estimated
# tensors of the largest row (rows are sampled one after another); gflop: the estimated compute of all rows.
# Measured on one CPU core (bench/sample_throughput.py's kind of model: GRU 1×256): ≈ 50k tokens/s with 65
# characters, ≈ 6k with 10,000 words, i.e. ≈ 30 GFLOP/s; the defaults keep a request to a few seconds.
LIMITS = {"rows": 100, "samples": 1000, "tokens": 100_000, "memory_mb": 512, "gflop": 100}
ENV_PREFIX = "RNNLAB_SERVE_MAX_"


class RequestError(UserError, MlflowException):
    """A refused request, one line. MLflow's scoring server turns an MlflowException with
    INVALID_PARAMETER_VALUE into HTTP 400, but first prefixes its message with the whole input table
    ("Failed to predict data '<DataFrame>'"); the body it sends is `serialize_as_json`, which therefore
    sends the line as raised, and no stack trace."""

    def __init__(self, line: str) -> None:
        MlflowException.__init__(self, line, error_code=INVALID_PARAMETER_VALUE)
        self.line = line

    def serialize_as_json(self) -> str:
        return json.dumps({"error_code": self.error_code, "message": self.line})


@dataclass(frozen=True)
class Limits:
    rows: int
    samples: int
    tokens: int
    memory_mb: int
    gflop: int

    @classmethod
    def from_env(cls, env=os.environ) -> Limits:
        """LIMITS, each overridden by RNNLAB_SERVE_MAX_<NAME> (a whole number >= 1)."""
        values = {}
        for key, default in LIMITS.items():
            name, text = f"{ENV_PREFIX}{key.upper()}", env.get(f"{ENV_PREFIX}{key.upper()}")
            if text is not None and not (text.strip().isdigit() and int(text) >= 1):
                raise UserError(f"{name}={text!r}: give a whole number >= 1 (default {default}), or unset it")
            values[key] = int(text) if text is not None else default
        return cls(**values)


class SamplerModel(mlflow.pyfunc.PythonModel):
    """mlflow.pyfunc.PythonModel: load_context reads the model and vocabulary, predict samples."""

    def load_context(self, context) -> None:
        from rnnlab import trained_model
        from rnnlab.schema import SampleSpec
        from rnnlab.vocab import Vocab

        self.vocab = Vocab.load(context.artifacts["vocab"])
        self.model, _ = trained_model.load(context.artifacts["model"], self.vocab)  # refuses another vocabulary
        self.defaults = SampleSpec(**context.model_config["sample"])
        self.limits = Limits.from_env()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from rnnlab import sampling

        requests = checked(model_input, self.model, self.vocab, self.defaults, self.limits)
        out = []
        for i, spec in enumerate(requests):
            for j, s in enumerate(sampling.sample(self.model, self.vocab, spec)):
                out.append({"row": i, "sample": j, "text": s.text, "stopped": s.stopped, "length": s.length,
                            "unk_rejections": s.unk_rejections})
        return pd.DataFrame(out, columns=list(OUTPUTS))


# --- the request's checks: all of them before any sampling -------------------------------------------------


def checked(model_input, model, vocab, defaults, limits: Limits) -> list:
    """The request's rows as SampleSpecs, or a RequestError naming the first problem."""
    rows = records(model_input, limits)
    cost = Cost(model, limits)
    specs = []
    for i, row in enumerate(rows):
        where = f"row {i}: " if len(rows) > 1 else ""
        spec = row_spec(where, row, defaults)
        cost.add(where, spec, prime_tokens(where, vocab, spec, limits))
        specs.append(spec)
    return specs


def records(model_input, limits: Limits) -> list[dict]:
    """The input table as rows, after checking its size and columns (nothing is converted before)."""
    if isinstance(model_input, dict):
        model_input = [model_input]
    if not isinstance(model_input, (pd.DataFrame, list)) or \
            isinstance(model_input, list) and not all(isinstance(r, dict) for r in model_input):
        raise RequestError(f"expected a table of rows (a DataFrame, or dataframe_records in JSON), not "
                           f"{type(model_input).__name__}")
    if len(model_input) > limits.rows:
        raise RequestError(f"{len(model_input):,} rows is over the limit of {limits.rows} rows per request "
                           f"({ENV_PREFIX}ROWS); send fewer rows, or several requests")
    columns = model_input.columns if isinstance(model_input, pd.DataFrame) else \
        dict.fromkeys(k for r in model_input for k in r)
    unknown = [c for c in columns if c not in INPUTS]
    if unknown:
        near = difflib.get_close_matches(str(unknown[0]), list(INPUTS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise RequestError(f"unknown column {unknown[0]!r}{hint}; the columns are {', '.join(INPUTS)} (each "
                           "optional: a column left out takes the model's default)")
    return model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else model_input


def row_spec(where: str, row: dict, defaults):
    """The row's SampleSpec: the model's defaults with the row's values, checked by the schema's checks."""
    try:
        return replace(defaults, **given(row))
    except UserError as err:
        raise refused(where, err) from None


def refused(where: str, err: UserError) -> RequestError:
    """The schema's line in a request's words: it names params.yaml's keys (sample.top_p), here they are
    columns, and here null takes the model's default (0 switches top_k / top_p off)."""
    text = str(err).replace("sample.", "").replace("use null to keep every", "use 0 to keep every")
    return RequestError(where + text)


def given(row: dict) -> dict:
    """The row's sampling settings that are set (missing, None and NaN take the model's defaults), as Python
    values; an integer column's whole floats (2.0, as JSON or pandas may give them) as integers; top_k /
    top_p of 0 mean off (null)."""
    found = {}
    for key, kind in INPUTS.items():
        value = row.get(key)
        if isinstance(value, np.generic):  # numpy scalars from pandas
            value = value.item()
        if value is None or value is pd.NA or isinstance(value, float) and math.isnan(value):
            continue
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        off = key in ("top_k", "top_p") and type(value) in (int, float) and value == 0
        found[key] = None if off else value
    return found


def prime_tokens(where: str, vocab, spec, limits: Limits) -> int:
    """The prime's length in tokens; a prime the vocabulary refuses (unk: reject) is one line."""
    from rnnlab import sampling

    if len(spec.prime) > limits.tokens:  # bounds the work of tokenizing it
        raise RequestError(f"{where}the prime has {len(spec.prime):,} characters, over the limit of "
                           f"{limits.tokens:,} tokens per request ({ENV_PREFIX}TOKENS); give a shorter prime")
    try:
        return len(sampling.encode_prime(vocab, spec))
    except UserError as err:
        raise refused(where, err) from None


class Cost:
    """The request's size, row by row, against the limits: samples, tokens, memory, compute."""

    def __init__(self, model, limits: Limits) -> None:
        self.limits, self.vocab_size = limits, model.vocab_size
        core = sum(p.numel() for p in model.rnn.parameters())  # the embedding is a lookup: no multiply-adds
        # 2 FLOP per weight of the core and the head, and about 10 per vocabulary entry for the softmax,
        # its cumulative sum and the filters
        self.flop_per_token = 2 * (core + model.spec.hidden_size * model.vocab_size) + 10 * model.vocab_size
        self.samples = self.tokens = self.flop = 0

    def add(self, where: str, spec, prime: int) -> None:
        n = 1 if spec.greedy else spec.num_samples  # greedy decoding draws one sample (rnnlab.sampling)
        self.samples += spec.num_samples  # as asked: 2**53 with greedy=true is still a mistake
        self.tokens += n * (prime + spec.max_length)
        self.flop += n * (1 + prime + spec.max_length) * self.flop_per_token
        # (B, 1 + P, V) logits of the prime; per step a few (B, V) tensors (softmax, cumsum, sort); (B, L) ids
        memory = 4 * n * self.vocab_size * (1 + prime + 8) + 8 * n * spec.max_length
        limits = self.limits
        if self.samples > limits.samples:
            raise RequestError(f"{where}the request asks for {self.samples:,} samples, over the limit of "
                               f"{limits.samples:,} per request ({ENV_PREFIX}SAMPLES); ask for fewer")
        if self.tokens > limits.tokens:
            raise RequestError(f"{where}the request asks for {self.tokens:,} tokens (num_samples × (prime tokens + "
                               f"max_length), summed over rows), over the limit of {limits.tokens:,} "
                               f"({ENV_PREFIX}TOKENS); ask for fewer samples or a smaller max_length")
        if memory > limits.memory_mb * 2**20:
            raise RequestError(f"{where}sampling it needs about {memory / 2**20:,.0f} MB with this model's "
                               f"{self.vocab_size:,} tokens, over the limit of {limits.memory_mb:,} MB "
                               f"({ENV_PREFIX}MEMORY_MB); ask for fewer samples or a shorter prime")
        if self.flop > limits.gflop * 1e9:
            raise RequestError(f"{where}the request needs about {self.flop / 1e9:,.0f} GFLOP with this model "
                               f"({self.flop_per_token / 1e6:,.2f} MFLOP per token), over the limit of "
                               f"{limits.gflop:,} ({ENV_PREFIX}GFLOP); ask for fewer samples or a smaller "
                               "max_length")


# --- logging ----------------------------------------------------------------------------------------------


def signature():
    """Outputs only: see the module docstring for why the input has no MLflow schema."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=None, outputs=Schema([ColSpec(t, name) for name, t in OUTPUTS.items()]))


def input_columns() -> dict:
    """The input columns and their types, for the MLmodel's metadata (what a signature would have said)."""
    kinds = {str: "string", int: "long", float: "double", bool: "boolean"}
    return {name: kinds[t] for name, t in INPUTS.items()}


def example(spec) -> dict:
    """An input row: the sample stage's settings, two short samples."""
    row = {"prime": spec.prime, "temperature": spec.temperature, "num_samples": 2,
           "max_length": min(spec.max_length, 20), "seed": spec.seed, "unk": spec.unk}
    return row | {k: getattr(spec, k) for k in ("top_k", "top_p") if getattr(spec, k) is not None}


def log(uri: str, run_id: str, model_dir: Path, vocab_file: Path, spec, register: str | None) -> str | None:
    """Log the pyfunc to the run (and register a version under `register`); returns that version."""
    import logging
    import warnings

    import torch

    import rnnlab

    mlflow.set_tracking_uri(uri)
    quiet = logging.getLogger("mlflow")  # its notes on pickling the class and on validating the example
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT_PATH, python_model=SamplerModel(),
                artifacts={"model": str(model_dir), "vocab": str(vocab_file)},
                model_config={"sample": asdict(spec)}, signature=signature(),
                metadata={"inputs": input_columns(), "limits": LIMITS},
                input_example=pd.DataFrame([example(spec)]), registered_model_name=register,
                pip_requirements=[f"rnnlab=={rnnlab.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                                  f"mlflow=={mlflow.__version__}"])
    finally:
        quiet.setLevel(level)
    registered = f", registered as {register!r} version {info.registered_model_version}" if register else ""
    print(f"MLflow model: {info.model_uri} (runs:/{run_id}/{ARTIFACT_PATH}){registered}")
    return str(info.registered_model_version) if register else None
