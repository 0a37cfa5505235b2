"""The pipeline's stages as functions of the composed params (params.yaml), one module per DVC stage:

    DVC stage (dvc.yaml)   script                  function
    params                 pipeline/params.py      rnnlab.stages.params.run
    prepare                pipeline/prepare.py     rnnlab.stages.prepare.run
    vocab                  pipeline/vocab.py       rnnlab.stages.vocab.run
    train                  pipeline/train.py       rnnlab.stages.train.run
    sample                 pipeline/sample.py      rnnlab.stages.sample.run
    evaluate               pipeline/evaluate.py    rnnlab.stages.evaluate.run

Each `run(params)` reads its sections of the params, calls the library, writes the stage's outputs
and returns its metrics; a Hydra sweep (rnnlab.sweep) calls the same functions. A stage module imports
only what its stage runs, so each stage's `deps:` in dvc.yaml can list exactly its modules
(tests/test_dvc_deps.py checks them against the import closure).
"""

from __future__ import annotations

from typing import Callable

from rnnlab.config import load_params
from rnnlab.errors import entry_point


def main(run: Callable[..., object], *args) -> None:
    """A stage script's entry point: read params.yaml, run the stage; user errors are one line, exit 2."""
    entry_point(lambda: run(load_params(), *args))()
