"""Stage `params`, DVC's first: stop when conf/ was edited but params.yaml was not recomposed from it, and
run the preflight (rnnlab.preflight) before DVC removes any stage's outputs.

Every other stage is downstream of its `preflight.json` (dvc.yaml), and its outputs persist, so a problem
found here (an empty corpus, a GPU this machine lacks, a tracking server that does not answer) leaves the
previous outputs of every stage in place.
"""

from __future__ import annotations

from pathlib import Path

from rnnlab import corpus, preflight
from rnnlab.config import check_fresh
from rnnlab.files import write_json

READS = ()  # params.yaml as a whole is a dependency of this stage (dvc.yaml `deps:`)


def run(params) -> dict:
    check_fresh(Path(params.paths.state) / "params.json")
    passed = preflight.check(params, corpus.preview(params.corpus, Path(params.paths.raw)))
    # The same content every time: prepare depends on this file only to run after the preflight
    write_json(Path(params.paths.state) / "preflight.json", {"passed": passed})
    return {}
