"""The finished model on disk, the bundle `paths.train`/model: a `state_dict` (`model.pt`) plus JSON
metadata (`meta.json`). (Lightning's training checkpoints are rnnlab.checkpoints.)

The metadata holds the model spec and the hash of the vocabulary the model was trained with; loading
refuses a model built for another vocabulary. Weights load with `weights_only=True` (no pickled code).
A Lightning `.ckpt` from the training's checkpoint folder loads too (`load(path_to.ckpt, vocab)`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from rnnlab import averaging
from rnnlab.errors import UserError
from rnnlab.files import atomic_write, reading, shape_error, write_json
from rnnlab.model import RNNLM, ModelSpec
from rnnlab.vocab import Vocab, VocabDir

MODEL_FILE, META_FILE = "model.pt", "meta.json"
FIX = "retrain it (dvc repro train), or bring back the pipeline's last one (dvc checkout --force train)"


def save(out_dir: str | Path, model: RNNLM, vocab: Vocab, extra: dict) -> None:
    out = Path(out_dir)
    atomic_write(out / MODEL_FILE, lambda fh: torch.save(model.state_dict(), fh), mode="wb")
    meta = {"model": asdict(model.spec), "vocab_size": len(vocab), "vocab_hash": vocab.hash,
            "vocab_level": vocab.level} | extra
    write_json(out / META_FILE, meta)


def load(path: str | Path, vocab: Vocab) -> tuple[RNNLM, dict]:
    """Load a model folder (model.pt + meta.json) or a Lightning .ckpt, checked against `vocab`."""
    path = Path(path)
    if path.suffix == ".ckpt":
        state, meta = read_lightning_checkpoint(path)
    else:
        if not (path / MODEL_FILE).exists():
            raise UserError(f"no trained model in {path} (missing {MODEL_FILE}); train one first: dvc repro train")
        with reading(path / META_FILE, FIX):
            meta = checked_meta(json.loads((path / META_FILE).read_text(encoding="utf-8")))
        with reading(path / MODEL_FILE, FIX):
            state = dict(torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True))
    if meta.get("vocab_hash") != vocab.hash:
        raise UserError(
            f"the model in {path} was trained with vocabulary {meta['vocab_hash']}, but the vocabulary given is "
            f"{vocab.hash}; retrain (dvc repro train) or use the vocabulary it was trained with"
        )
    if meta.get("vocab_size") != len(vocab):  # a hash copied into another model's meta.json: sizes still differ
        raise UserError(
            f"the model in {path} has {meta.get('vocab_size')} output tokens, but the vocabulary given "
            f"({vocab.hash}) has {len(vocab)}; {FIX}")
    # model.impl (who runs BPTT in training) came after the first saved models; it does not change the weights.
    with reading(path if path.suffix == ".ckpt" else path / META_FILE, FIX):
        spec = ModelSpec(**{"impl": "auto"} | meta["model"])
    model = RNNLM(meta["vocab_size"], spec)
    with reading(path if path.suffix == ".ckpt" else path / MODEL_FILE, FIX):
        model.load_state_dict(state)  # weights of another shape: a RuntimeError naming the tensors
    return model.eval(), meta


def checked_meta(meta) -> dict:
    """meta.json as `save` writes it, else a TypeError naming the field (inside `reading`: one line)."""
    why = shape_error(meta, {"model": dict, "vocab_size": int, "vocab_hash": str, "mlflow_run_id": (str, type(None))})
    if why:
        raise TypeError(why)
    return meta


def read_lightning_checkpoint(path: Path) -> tuple[dict, dict]:
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; give the path of a .ckpt file or of a model folder")
    with reading(path, "give a .ckpt that rnnlab's training wrote (data/train/checkpoints/) or a model folder"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hp = ckpt["hyper_parameters"]
        state = {k.removeprefix("model."): v for k, v in averaging.weights(ckpt).items() if k.startswith("model.")}
        return state, checked_meta({"model": hp["model"], "vocab_size": hp["vocab_size"], "vocab_hash": hp["vocab_hash"]})


def load_trained(vocab_dir: str | Path, model_path: str | Path) -> tuple[Vocab, RNNLM, dict]:
    """The pipeline's vocabulary and a model trained on it (a model folder or a .ckpt)."""
    vocab = VocabDir(vocab_dir).vocab()
    model, meta = load(model_path, vocab)
    return vocab, model, meta
