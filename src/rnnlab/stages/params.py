"""Stage `params`, DVC's first: stop when conf/ was edited but params.yaml was not recomposed from it, and
run the preflight (rnnlab.preflight) before DVC removes any stage's outputs.

Every other stage is downstream of its `preflight.json` (dvc.yaml), and its outputs persist, so a problem
found here (an empty corpus, a GPU this machine lacks, a tracking server that does not answer) leaves the
previous outputs of every stage in place.

It runs on every `dvc repro` (dvc.yaml `always_changed`; it depends on no bytes of conf/, so that editing a
comment there changes nothing, not even dvc.lock): reading conf/ takes a fraction of a second. It records
params.yaml's hash and conf/'s content in `params.json` (rnnlab.config.check_fresh), and runs the preflight
when params.yaml changed since the last preflight that passed (or preflight.json is missing). Neither file
changes when nothing did, so dvc.lock stays as it is and no other stage reruns.
"""

from __future__ import annotations

from pathlib import Path

from rnnlab import corpus, preflight
from rnnlab.config import fresh_state, previous_state, record_state
from rnnlab.files import write_json


def run(params) -> dict:
    state, done = Path(params.paths.state) / "params.json", Path(params.paths.state) / "preflight.json"
    before, now = previous_state(state), fresh_state(state)
    if before is None or before["params"] != now["params"] or not done.exists():
        passed = preflight.check(params, corpus.preview(params.corpus, Path(params.paths.raw)))
        # The same content every time: prepare depends on this file only to run after the preflight
        write_json(done, {"passed": passed})
    record_state(state, now)  # after the preflight passed: a failed one runs again next time
    return {}
