"""The lecture: the sample stage's step-by-step picture agrees with its first sample, and
notebooks/lecture.ipynb runs top to bottom (quick mode) on a tiny workspace built by the pipeline's stages.

The notebook is kept in two forms, lecture.py (jupytext percent format, what reviews read) and lecture.ipynb
(what JupyterLab opens); a test checks that they hold the same cells. After editing lecture.py:
`jupytext --sync notebooks/lecture.py` (JupyterLab with jupytext keeps them paired by itself).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, TINY, TINY_TEXT

NOTEBOOK = REPO / "notebooks" / "lecture.ipynb"
NOTEBOOK_TIMEOUT_S = 600  # the whole notebook; about 2 minutes alone on 2 cores


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A repository-shaped folder after `dvc repro` of the TINY config: conf/, params.yaml, data/, mlflow.db
    (the stages run in it, as DVC runs them at the repository root)."""
    from rnnlab import config, lecture, params
    from rnnlab.stages import prepare, sample, train, vocab

    ws = tmp_path_factory.mktemp("lecture") / "ws"
    shutil.copytree(REPO / "conf", ws / "conf")
    (ws / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    config.write_params(TINY, ws / "params.yaml", ws / "conf")
    with lecture.inside(ws):
        loaded = params.load("params.yaml")
        for stage in (prepare, vocab, train, sample):
            stage.run(loaded)
    return ws


@pytest.mark.slow  # the workspace's training: ~50 s (the sampler's own tests in test_sampling.py are quick)
def test_the_pictured_steps_are_the_first_samples(workspace):
    """sampling_steps.json (the picture's data) holds the first sample's tokens, as the sampler drew them."""
    out = workspace / "data" / "samples"
    steps = json.loads((out / "sampling_steps.json").read_text(encoding="utf-8"))
    first = json.loads((out / "samples.json").read_text(encoding="utf-8"))["samples"][0]
    drawn = [s["drawn"] for s in steps["steps"]]
    assert steps["stopped"] == first["stopped"] and len(drawn) == min(24, first["length"] + (first["stopped"] == "eos"))
    text = "".join(t for t in drawn if t != "<eos>")
    assert text == first["text"][: len(text)] and len(text) > 0
    assert [s["input"] for s in steps["steps"]] == steps["prime"][-1:] + drawn[:-1]
    assert (out / "sampling_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_two_forms_of_the_notebook_hold_the_same_cells():
    import jupytext
    import nbformat

    paired = jupytext.read(REPO / "notebooks" / "lecture.py")
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in paired.cells], \
        "notebooks/lecture.ipynb differs from lecture.py; pair them: jupytext --sync notebooks/lecture.py"
    assert not any(c.get("outputs") for c in stored.cells if c.cell_type == "code"), "commit it without outputs"


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom(workspace):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {"RNNLAB_NOTEBOOK_QUICK": "1", "RNNLAB_WORKSPACE": str(workspace), "OMP_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the test's environment
    try:
        NotebookClient(nb, timeout=NOTEBOOK_TIMEOUT_S, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    outputs = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "quick mode: True" in outputs and "<unk> rejection rate" in outputs
    figures = workspace / "data" / "lecture" / "figures"
    assert {p.name for p in figures.glob("*.png")} >= {"entropy.png", "bpc.png", "gtt.png", "agreement.png",
                                                      "steps_word.png", "clipping.png"}


def test_the_lecture_pictures_draw_from_plain_data(tmp_path):
    """The step picture (with a rejected <unk>, a drawn token outside the top candidates, a newline), the
    entropy curves and the bars: drawn without error, as PNGs."""
    from rnnlab import plots

    step = {"input": "\n", "top": [["<unk>", 0.5], ["a", 0.3]], "first": "<unk>", "drawn": "a", "drawn_prob": 0.3,
            "rejected": True, "entropy_bits": 1.2}
    other = step | {"input": "a", "first": "b", "drawn": "b", "drawn_prob": 0.01, "rejected": False}
    trace = {"prime": ["\n", "R"], "stopped": "max_length", "steps": [step, other]}
    plots.sampling_steps(trace, tmp_path / "s.png", "t")
    plots.entropy_steps([("T = 1", [1.0, 0.5])], tmp_path / "e.png", "t")
    plots.bars({"char": 2.0, "word": 1.5}, tmp_path / "b.png", "bpc", "t")
    plots.clipping([("clip off", [[5, 10.0, 10.0, 0.0]], [[20, 3.0]]), ("clip 1", [[5, 2.0, 1.0, 1.0]], [[20, 2.0]])],
                   tmp_path / "c.png", "t")
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in ("s.png", "e.png", "b.png", "c.png"))
