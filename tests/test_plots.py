"""rnnlab.plots: every picture is a PNG from plain lists, and a failed write keeps the old file (atomic)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rnnlab import plots

PNG = b"\x89PNG"
RUN_CURVES = [("gru", [0, 1, 2, 4], [1.0, 0.5, 0.2, 0.0]), ("rnn", [0, 1, 2, 4], [1.0, 0.1, 1e-3, 1e-6])]

DRAW = {
    "loss": lambda path: plots.loss([[1, 3.0], [2, 2.5], [3, 2.2]], [[2, 2.6, 13.5, 3.7], [3, 2.3, 10.0, 3.3]],
                                    path, "Loss — tiny"),
    "gradient_norm": lambda path: plots.gradient_norm([[1, 5.0, 1.0, 1.0], [2, 0.5, 0.5, 0.5], [3, 0.0, 0.0, 0.0]],
                                                      path, "Gradient norm — tiny"),
    "gradient_through_time": lambda path: plots.gradient_through_time(
        [("step 10", [1.0, 0.3, 0.0]), ("step 20", [1.0, 0.5, 0.25])], path, "Gradient through time — tiny"),
    "agreement": lambda path: plots.agreement(
        {"rnn": [{"distance": 0, "accuracy": 1.0, "n": 4}, {"distance": 30, "accuracy": 0.5, "n": 4}]}, path),
    "runs_gradient_through_time": lambda path: plots.runs_gradient_through_time(RUN_CURVES, path),
    "runs_val_loss": lambda path: plots.runs_val_loss([("gru", [10, 20], [2.0, 1.5]), ("rnn", [10], [2.4])], path),
}


@pytest.mark.parametrize("name", sorted(DRAW))
def test_each_picture_is_a_png(name, tmp_path):
    path = tmp_path / "plots" / f"{name}.png"  # the folder does not exist yet
    DRAW[name](path)
    assert path.read_bytes()[:4] == PNG
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_pictures_of_nothing_are_still_pngs(tmp_path):
    plots.runs_val_loss([], tmp_path / "empty.png")  # a report of runs without any val/loss yet
    plots.runs_gradient_through_time([], tmp_path / "none.png")
    assert all(p.read_bytes()[:4] == PNG for p in tmp_path.iterdir())


@pytest.mark.parametrize("name", sorted(DRAW))
def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary_file(name, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / f"{name}.png"
    path.write_bytes(b"the previous picture")

    def broken_savefig(self, fh, *args, **kwargs):
        fh.write(PNG + b"half a picture")
        raise OSError("disk unplugged midway")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="midway"):
        DRAW[name](path)
    assert path.read_bytes() == b"the previous picture"
    assert not list(tmp_path.glob(".*.tmp"))
    import matplotlib.pyplot as plt

    assert not plt.get_fignums()  # the figure is closed all the same


def test_importing_the_module_loads_neither_matplotlib_nor_torch():
    code = "import sys, rnnlab.plots; print(sorted({'matplotlib', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
