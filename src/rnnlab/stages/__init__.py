"""The pipeline's stages as functions of the composed params (params.yaml), one module per DVC stage:

    DVC stage (dvc.yaml)   script                  function
    params                 pipeline/params.py      rnnlab.stages.params.run
    prepare                pipeline/prepare.py     rnnlab.stages.prepare.run
    vocab                  pipeline/vocab.py       rnnlab.stages.vocab.run
    train                  pipeline/train.py       rnnlab.stages.train.run
    sample                 pipeline/sample.py      rnnlab.stages.sample.run
    evaluate               pipeline/evaluate.py    rnnlab.stages.evaluate.run

Each `run(params)` takes the checked `rnnlab.params.Params`, reads its sections, calls the library, writes
the stage's outputs and returns its metrics; a Hydra sweep (rnnlab.sweep) calls the same functions.
Which params keys rerun which stage is one table, rnnlab.stages.reruns (a key belongs to a stage when
changing it can change the stage's outputs); dvc.yaml's `params:` lists equal its columns
(tests/test_dvc_deps.py), so DVC reruns a stage exactly when one of them changes.
A stage module imports only what its stage runs, so each stage's `deps:` in dvc.yaml can list exactly
its modules (tests/test_dvc_deps.py checks them against the import closure).

DVC removes a stage's outputs before running it. The `params` stage runs first and checks what it can
(rnnlab.preflight); a stage that still fails under DVC (DVC_STAGE set) adds to its one-line error the
commands that bring the previous outputs back: `dvc checkout --force <stage>` (without --force DVC refuses to replace a file the failed run left), and `git checkout -- <files>` for
those DVC does not cache, which each stage module declares in `UNCACHED` (as dvc.yaml's `cache: false`).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Callable

from rnnlab import runtime
from rnnlab.config import usage
from rnnlab.errors import UserError, entry_point
from rnnlab.params import load


def main(run: Callable[..., object], overrides: bool = False) -> None:
    """A stage script's entry point: `--help`, or read params.yaml and run the stage (with the command
    line's `key=value` overrides where the stage takes them); user errors are one line, exit 2.
    `--quiet` keeps the stage's own report off stdout (errors still go to stderr)."""
    argv = [a for a in sys.argv[1:] if a != "--quiet"]
    if "-h" in argv or "--help" in argv:
        print(f"{sys.modules[run.__module__].__doc__.strip()}\n\nOptions: --quiet (print nothing but errors), "
              f"--help\n\n{usage()}")
        return
    quiet = contextlib.redirect_stdout(io.StringIO()) if "--quiet" in sys.argv[1:] else contextlib.nullcontext()
    runtime.catch_signals()  # SIGTERM / Ctrl-C: one line, exit 128 + signal, the MLflow run KILLED
    with quiet:
        entry_point(lambda: call(run, argv, overrides))()


def call(run: Callable[..., object], argv: list[str], overrides: bool) -> object:
    if argv and not overrides:
        raise UserError(f"{argv[0]!r}: this stage takes no arguments, it reads params.yaml; change that with "
                        "`python -m rnnlab.config key=value` (or `dvc exp run -S key=value`), see --help")
    params = load()
    try:
        return run(params, argv) if overrides else run(params)
    except UserError as err:
        raise UserError(f"{err}{restore_hint(sys.modules[run.__module__], params)}") from None


def restore_hint(stage, params) -> str:
    """Under `dvc repro`, how to bring back the outputs DVC removed before this stage failed ("" elsewhere)."""
    name = stage.__name__.rsplit(".", 1)[-1]
    if os.environ.get("DVC_STAGE") != name or not hasattr(stage, "UNCACHED"):
        return ""
    files = " ".join(entry.format(paths=params.paths) for entry in stage.UNCACHED)
    return (f" (DVC removed the stage's previous outputs before it ran: `dvc checkout --force {name}` brings them back"
            + (f", `git checkout -- {files}` the metrics it does not cache, if committed)" if files else ")"))
