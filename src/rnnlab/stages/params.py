"""Stage `params`: stop when conf/ was edited but params.yaml was not recomposed from it."""

from __future__ import annotations

from pathlib import Path

from rnnlab.config import check_fresh

READS = ()  # params.yaml as a whole is a dependency of this stage (dvc.yaml `deps:`)


def run(params) -> dict:
    check_fresh(Path(params.paths.state) / "params.json")
    return {}
