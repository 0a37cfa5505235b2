"""The trained model as an MLflow Model: a `pyfunc` that wraps the vocabulary and the lecture's sampler.

At the end of training, `log` adds it to the run (`sampler/`, shown in the MLflow UI's model view) and,
with `tracking.register_model=<name>`, registers a version under that name. Anywhere rnnlab is installed:

    model = mlflow.pyfunc.load_model("models:/<name>@champion")      # or runs:/<run id>/sampler
    model.predict(pd.DataFrame([{"prime": "the", "seed": 1, "num_samples": 3}]))
    mlflow models serve -m models:/<name>@champion --env-manager local -h 127.0.0.1 -p 5001

Each input row asks for `num_samples` samples; a column not given takes the training's `sample:` value
(stored with the model), so a row with the sample stage's values draws exactly the sample stage's texts.
Output: one row per sample, with the input row it answers, its text (prime included) and why it stopped
(`eos` or `max_length`). A vocabulary whose hash differs from the model's is refused when loading, with
the stages' one-line error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

ARTIFACT_PATH = "sampler"
INPUTS = {"prime": str, "temperature": float, "top_k": int, "top_p": float, "num_samples": int, "max_length": int,
          "seed": int, "unk": str}  # a column is given in every row or in none (MLflow: no missing integers)
OUTPUTS = {"row": "long", "sample": "long", "text": "string", "stopped": "string", "length": "long",
           "unk_rejections": "long"}


class SamplerModel(mlflow.pyfunc.PythonModel):
    """mlflow.pyfunc.PythonModel: load_context reads the model and vocabulary, predict samples."""

    def load_context(self, context) -> None:
        from rnnlab import trained_model
        from rnnlab.schema import SampleSpec
        from rnnlab.vocab import Vocab

        self.vocab = Vocab.load(context.artifacts["vocab"])
        self.model, _ = trained_model.load(context.artifacts["model"], self.vocab)  # refuses another vocabulary
        self.defaults = SampleSpec(**context.model_config["sample"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from rnnlab import sampling

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        out = []
        for i, row in enumerate(rows):
            spec = replace(self.defaults, **given(row))
            for j, s in enumerate(sampling.sample(self.model, self.vocab, spec)):
                out.append({"row": i, "sample": j, "text": s.text, "stopped": s.stopped, "length": s.length,
                            "unk_rejections": s.unk_rejections})
        return pd.DataFrame(out, columns=list(OUTPUTS))


def given(row: dict) -> dict:
    """The row's sampling settings that are set (missing, None and NaN take the model's defaults), as Python
    values; top_k / top_p of 0 mean off (null)."""
    found = {}
    for key in INPUTS:
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        value = value.item() if hasattr(value, "item") else value  # numpy scalars from pandas
        if INPUTS[key] is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        found[key] = None if key in ("top_k", "top_p") and value == 0 else value
    return found


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    kinds = {str: "string", int: "long", float: "double"}
    return ModelSignature(inputs=Schema([ColSpec(kinds[t], name, required=False) for name, t in INPUTS.items()]),
                          outputs=Schema([ColSpec(t, name) for name, t in OUTPUTS.items()]))


def example(spec) -> dict:
    """An input row: the sample stage's settings, two short samples."""
    row = {"prime": spec.prime, "temperature": spec.temperature, "num_samples": 2,
           "max_length": min(spec.max_length, 20), "seed": spec.seed, "unk": spec.unk}
    return row | {k: getattr(spec, k) for k in ("top_k", "top_p") if getattr(spec, k) is not None}


def log(uri: str, run_id: str, model_dir: Path, vocab_file: Path, spec, register: str | None) -> None:
    """Log the pyfunc to the run (and register a version under `register`)."""
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
                input_example=pd.DataFrame([example(spec)]), registered_model_name=register,
                pip_requirements=[f"rnnlab=={rnnlab.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                                  f"mlflow=={mlflow.__version__}"])
    finally:
        quiet.setLevel(level)
    registered = f", registered as {register!r} version {info.registered_model_version}" if register else ""
    print(f"MLflow model: {info.model_uri} (runs:/{run_id}/{ARTIFACT_PATH}){registered}")
