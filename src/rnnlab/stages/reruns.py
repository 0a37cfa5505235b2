"""Which stages a change of each params key reruns: the one table, which dvc.yaml's `params:` lists equal.

A key belongs to a stage only when changing it can change that stage's outputs (DVC reruns a stage when
a key listed under its `params:` changes; tests/test_dvc_deps.py checks dvc.yaml against this table, and
tests/test_dvc_reruns.py changes every key of every config option and checks that `dvc status` names
exactly these stages). Each entry is a key or a whole section: a leaf key takes the stages of every entry
that is it or holds it. What no entry holds is in LABELS, with the reason it reruns nothing. The rules:

  * names and labels (a group option's `name`, the MLflow experiment, run name and registry name) are
    logged, never dependencies: MLflow gets the whole configuration of a training (rnnlab.training);
  * `tracking.*` says where and under which names runs are logged. The model's meta.json records the
    MLflow run id, which tells where the run went; that is not a reason to train again. The one key that
    does work is `tracking.register_model`: the `register` stage registers the trained model (seconds);
  * `threads` is a dependency of `train`: torch's CPU kernels sum in another order with another thread
    count (measured: one Adam step of the default GRU, LSTM and RNN differs in the last bits, up to 6e-4
    for the RNN, between 1 and 2 threads), so the model can differ;
  * `trainer` is listed whole, so that a Lightning argument beyond conf/trainer/default.yaml
    (`+trainer.accumulate_grad_batches=4`) reruns the training too; its `name` comes along;
  * the training's validation samples have their own keys (`gradstats.sample_*`), so the sample stage's
    `sample.*` never rerun the training; they go to the training's MLflow run, which only a training
    writes, so they rerun it (as the rest of `gradstats`, whose CSVs are outputs);
  * the `params` stage depends on params.yaml as a whole (dvc.yaml `deps:`) and runs on every `dvc repro`
    (`always_changed`): it checks that params.yaml is fresh, and runs the preflight when params.yaml changed;
    the preflight.json that `prepare` waits for has the same content every time, so it reruns nothing else;
  * a `paths.*` key also moves the files of the stages that write or read there (dvc.yaml's `${paths.*}`):
    `paths.state` is the params stage's folder, and `prepare` waits for its preflight.json there.

`reads(stage)` is a stage's column (dvc.yaml's `params:` for it); the train stage hashes those values to
decide whether an interrupted training may resume (rnnlab.training).
"""

from __future__ import annotations

import dataclasses

from rnnlab.schema import CorpusSpec, EvaluateSpec, ModelSpec, OptimSpec, SampleSpec, VocabSpec

STAGES = ("params", "prepare", "vocab", "train", "sample", "evaluate", "register")


def every(section: str, spec: type, stages: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Each key of a section (its schema's fields: the group option's `name` is not one) -> `stages`."""
    return {f"{section}.{field.name}": stages for field in dataclasses.fields(spec)}


RERUNS: dict[str, tuple[str, ...]] = {
    **every("corpus", CorpusSpec, ("prepare",)),  # what text, cleaned how, split where
    "corpus.format": ("prepare", "vocab", "sample"),  # lines end with <eos>; novelty is per line or per 8-gram
    "corpus.source": ("prepare", "evaluate"),  # evaluate: the agreement probe for corpus=agreement
    "corpus.generator": ("prepare", "evaluate"),  # evaluate: the probe's filler words
    **every("vocab", VocabSpec, ("vocab",)),
    **every("model", ModelSpec, ("train",)),
    **every("optim", OptimSpec, ("train",)),
    "data": ("train",),
    "trainer": ("train",),
    "gradstats": ("train",),  # also the validation samples' settings (gradstats.sample_*)
    "callbacks": ("train",),
    "seed": ("train",),
    "threads": ("train",),
    **every("sample", SampleSpec, ("sample",)),
    **every("evaluate", EvaluateSpec, ("evaluate",)),
    "paths.raw": ("prepare",),
    "paths.prepared": ("prepare", "vocab", "sample"),
    "paths.vocab": ("vocab", "train", "sample", "evaluate"),
    "paths.train": ("train", "sample", "evaluate"),
    "paths.samples": ("sample", "evaluate"),
    "paths.eval": ("evaluate",),
    "tracking.register_model": ("register",),  # registers the trained model (rnnlab.stages.register), no training
}

LABELS: dict[str, str] = {  # keys that rerun no stage (but `params`, which checks params.yaml as a whole)
    "corpus.name": "the corpus option's name: a label",
    "vocab.name": "the vocab option's name: a label",
    "model.name": "the model option's name: a label",
    "optim.name": "the optim option's name: a label",
    "sample.name": "the sample option's name: a label",
    "evaluate.name": "the evaluate option's name: a label",
    "tracking.name": "the tracking option's name: a label",
    "tracking.uri": "where MLflow logs (a file or a server): the run id in meta.json records it, no reason to retrain",
    "tracking.experiment": "the MLflow experiment's name: a label",
    "tracking.run_name": "the MLflow run's name: a label",
    "paths.state": "the params stage's folder: it moves that stage's outputs, it changes no stage's content",
}


def holds(entry: str, key: str) -> bool:
    """Is `key` the entry or inside it (`model` holds `model.cell`; `model.cell` does not hold `model.cells`)?"""
    return key == entry or key.startswith(entry + ".")


def stages_of(key: str) -> set[str]:
    """The stages a change of `key` (a leaf, or a key inside a leaf such as corpus.generator.filler) reruns."""
    return {stage for entry, stages in RERUNS.items() if holds(entry, key) for stage in stages}


def reads(stage: str) -> tuple[str, ...]:
    """The keys listed under `stage`'s `params:` in dvc.yaml, in the table's order."""
    return tuple(entry for entry, stages in RERUNS.items() if stage in stages)
