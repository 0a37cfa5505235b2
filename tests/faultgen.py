"""Helpers of the generated fault tests (tests/test_generated_faults.py): a tiny project built once, a stage
run in-process through its script's entry point, the outcome rule, bad config values and file damage.

Only stable entry points are used (`rnnlab.stages.main` with a stage module's `run`, rnnlab.stages.reruns,
`rnnlab.config.write_params`, files on disk, `pipeline/<stage>.py`), so the same tests run against older
checkouts of rnnlab (put their `src/` first on PYTHONPATH).

    base = build_project(tmp / "base")                  # params.yaml (TINY, relative paths) + every stage's outputs
    work = copy_project(base, tmp / "ex1")              # one example's project
    outcome = run_stage("train", work)                  # in-process: exit code, stderr, traceback, seconds
    check_outcome(outcome); check_no_running_run(work)  # the rule: exit 0, or exit 2 and one `error:` line
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import importlib
import io
import json
import math
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from conftest import REPO, TINY, TINY_TEXT

STAGES = ("params", "prepare", "vocab", "train", "sample", "evaluate")  # pipeline order (dvc.yaml)
BUILD = STAGES  # the stages run to build the base project
# TINY, shorter still: 4 steps with a validation (and a checkpoint) every 2
FAULT_TINY = [*TINY, "corpus.path=tiny.txt", "trainer.max_steps=4", "trainer.val_check_interval=2",
              "gradstats.every_n_steps=2", "threads=1"]
STAGE_TIMEOUT_S = 30  # a stage of the tiny project runs in seconds: longer is a hang
# A stage stuck outside Python (where the alarm cannot reach) ends the whole test process this long after its
# time limit, with every thread's stack on stderr (faulthandler): bounded time, whatever happens.
GUARD_S = 60
# Trainer keys that make Lightning start processes (DDP) or wait for other nodes: run in a subprocess, whose
# whole process group a timeout can kill.
SUBPROCESS_KEYS = ("trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.accelerator")


class Hang(BaseException):
    """Raised by the alarm when an in-process stage runs past its time limit."""


@dataclasses.dataclass
class Outcome:
    stage: str
    code: int | str  # the exit status; "traceback" (an exception escaped the entry point) or "hang"
    err: str  # what the stage wrote to stderr
    tb: str = ""  # the escaped exception's traceback
    seconds: float = 0.0

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]

    def describe(self) -> str:
        return (f"{self.stage}: exit {self.code} in {self.seconds:.1f}s; stderr tail:\n{self.err[-1500:]}\n"
                f"{self.tb[-3000:]}")


# --- the project ------------------------------------------------------------------------------------------


def reset_mlflow() -> None:
    """MLflow exports MLFLOW_TRACKING_URI once a run starts: keep one example's store out of the next."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def build_project(dest: Path) -> Path:
    """A project folder: tiny.txt, conf/ (a link), params.yaml composed from conf/ with FAULT_TINY (every path
    relative, the MLflow store ./mlflow.db), and the outputs of every stage, run in-process."""
    from rnnlab.config import write_params

    dest.mkdir(parents=True)
    (dest / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    (dest / "conf").symlink_to(REPO / "conf")
    with contextlib.chdir(dest):
        write_params(FAULT_TINY, Path("params.yaml"), REPO / "conf")
    for stage in BUILD:
        outcome = run_stage(stage, dest, timeout=600)  # the first training imports torch, Lightning, MLflow
        check_no_running_run(dest)
        assert outcome.code == 0, f"building the base project failed at {outcome.describe()}"
    return dest


def copy_project(base: Path, dest: Path) -> Path:
    """A copy of the project for one example. Not mlruns/: the store records its artifact folder as an
    absolute path (the base's), so every copy logs its artifacts there."""
    shutil.copytree(base, dest, symlinks=True, ignore=shutil.ignore_patterns("mlruns"))
    return dest


def load_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))


def save_params(project: Path, values: Any) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")


# --- running a stage in-process ------------------------------------------------------------------------------


def _alarm(signum, frame) -> None:
    raise Hang()


def run_stage(stage: str, project: Path, argv: tuple[str, ...] = (), timeout: float = STAGE_TIMEOUT_S) -> Outcome:
    """Run `pipeline/<stage>.py` in this process: its entry point `rnnlab.stages.main(<module>.run)` reads
    params.yaml in `project` (the current directory meanwhile). SystemExit gives the exit status; any other
    exception escaping the entry point is what a user would see as a traceback."""
    from rnnlab.stages import main

    module = importlib.import_module(f"rnnlab.stages.{stage}")
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    saved_argv, err, tb, code = sys.argv, io.StringIO(), "", 0
    reset_mlflow()
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    faulthandler.dump_traceback_later(timeout + GUARD_S, exit=True)
    try:
        with contextlib.chdir(project), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            sys.argv = [f"pipeline/{stage}.py", "--quiet", *argv]
            main(module.run, overrides=stage == "sample")
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Hang:
        code, tb = "hang", traceback.format_exc()
    except BaseException:  # noqa: BLE001 -- anything else escaping the entry point is a traceback for the user
        code, tb = "traceback", traceback.format_exc()
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in saved.items():
            signal.signal(s, handler)
        sys.argv = saved_argv
        reset_mlflow()
        if "torch" in sys.modules:  # a training flushes denormals process-wide (rnnlab.runtime.configure)
            sys.modules["torch"].set_flush_denormal(False)
    return Outcome(stage, code, err.getvalue(), tb, time.monotonic() - start)


def run_stage_subprocess(stage: str, project: Path, timeout: float = 120) -> Outcome:
    """`python pipeline/<stage>.py` in `project`, in its own process group (killed whole on a timeout)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    start, code = time.monotonic(), 0
    proc = subprocess.Popen([sys.executable, str(REPO / "pipeline" / f"{stage}.py"), "--quiet"], cwd=project,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        code = "hang"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # DDP processes it started and left behind
    return Outcome(stage, code, err, "", time.monotonic() - start)


def readers(key: str) -> list[str]:
    """The stages whose params (rnnlab.stages.reruns) cover the key `key` (`model.hidden_size`: train); the
    `params` stage for a key no stage declares (paths.state, a section's `name`, tracking)."""
    try:
        from rnnlab.stages.reruns import reads as stage_reads
    except ImportError:  # an older checkout: each stage module declared its READS

        def stage_reads(stage: str) -> tuple[str, ...]:
            return importlib.import_module(f"rnnlab.stages.{stage}").READS

    found = []
    for stage in STAGES:
        reads = stage_reads(stage)
        if any(key == r or key.startswith(r + ".") or r.startswith(key + ".") for r in reads):
            found.append(stage)
    return found or ["params"]


# --- the rule --------------------------------------------------------------------------------------------------


def check_outcome(outcome: Outcome, allowed: tuple[int, ...] = (0, 2)) -> None:
    """Exit 0, or exit 2 and exactly one `error:` line; never a traceback, never a hang."""
    assert outcome.code != "hang", f"a hang (stopped at its time limit): {outcome.describe()}"
    assert outcome.code != "traceback", f"a traceback: {outcome.describe()}"
    assert outcome.code in allowed, f"exit status not in {allowed}: {outcome.describe()}"
    assert "Traceback (most recent call last)" not in outcome.err, f"a traceback on stderr: {outcome.describe()}"
    wanted = 0 if outcome.code == 0 else 1
    assert len(outcome.error_lines) == wanted, f"{len(outcome.error_lines)} `error:` lines: {outcome.describe()}"


def run_statuses(project: Path, exclude: set[str] = frozenset()) -> list[str]:
    """The statuses of the runs in the project's MLflow store (./mlflow.db), less the runs `exclude`."""
    return [status for run_id, status in _runs(project) if run_id not in exclude]


def run_ids(project: Path) -> set[str]:
    return {run_id for run_id, _ in _runs(project)}


def _runs(project: Path) -> list[tuple[str, str]]:
    db = project / "mlflow.db"
    if not db.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(db)) as con:
            return list(con.execute("select run_uuid, status from runs order by start_time"))
    except sqlite3.DatabaseError:  # a damaged store (the damage under test) holds no runs to check
        return []


def check_no_running_run(project: Path) -> None:
    statuses = run_statuses(project)
    assert "RUNNING" not in statuses, f"an MLflow run left RUNNING: {statuses}"


# --- bad config values ---------------------------------------------------------------------------------------

NESTED = {"a": {"b": [1, None, {"c": "d"}]}}
BAD_VALUES = ("abc", "", float("nan"), float("inf"), float("-inf"), -1, 0, 2**70, -(2**70), 1e308, -1e308, 5e-324,
              0.5, True, None, [], [1, "a"], {}, {"a": 1}, NESTED, "1e999", "-1", "???", "${oc.env:HOME}")
# Keys whose value is an amount of work: a huge value asks for a long run, which is not a fault.
WORK_KEYS = ("trainer.max_steps", "trainer.max_epochs", "trainer.max_time", "sample.num_samples", "sample.max_length",
             "gradstats.sample_length", "evaluate.agreement_per_distance", "trainer.val_check_interval",
             "trainer.limit_val_batches", "trainer.check_val_every_n_epoch")


def leaf_keys(values: dict, prefix: str = "") -> list[str]:
    """Every key of the composed config: the sections and each leaf below them (a list is a leaf)."""
    keys = []
    for key, value in values.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, dict) and value:
            keys.extend(leaf_keys(value, f"{full}."))
    return keys


def set_key(values: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        values = values[part]
    values[last] = value


def huge(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and abs(value) > 2**60


def allowed_values(key: str) -> list:
    """The bad values drawn for `key` (no huge amounts of work: see WORK_KEYS)."""
    return [v for v in BAD_VALUES if not (key in WORK_KEYS and huge(v))]


# --- damaged files -------------------------------------------------------------------------------------------

# What each stage reads, relative to the project root (the default paths of params.yaml).
READ_BY = {
    "params.yaml": STAGES,
    "tiny.txt": ("prepare",),
    "data/state/params.json": ("params",),
    "data/prepared/train.txt": ("vocab", "sample"),
    "data/prepared/val.txt": ("vocab",),
    "data/prepared/test.txt": ("vocab",),
    "data/vocab/vocab.json": ("train", "sample", "evaluate"),
    "data/vocab/train.npy": ("train",),
    "data/vocab/val.npy": ("train", "evaluate"),
    "data/vocab/test.npy": ("evaluate",),
    "data/vocab/stats.json": ("train", "evaluate"),
    "data/train/checkpoints/last.ckpt": ("train",),
    "data/train/checkpoints/best.ckpt": ("train",),
    "data/train/checkpoints/run.json": ("train",),
    "data/train/model/model.pt": ("sample", "evaluate"),
    "data/train/model/meta.json": ("sample", "evaluate"),
    "data/samples/samples.json": ("evaluate",),
    "mlflow.db": ("train", "sample", "evaluate"),
}
KINDS = ("deleted", "empty", "truncated", "random bytes", "text", "another shape", "a key dropped", "a value changed",
         "a directory")


def interrupted(project: Path) -> None:
    """Make the finished training look interrupted after its last checkpoint (run.json `complete: false`), so
    that the train stage reads last.ckpt, best.ckpt and run.json to resume."""
    run_json = project / "data/train/checkpoints/run.json"
    run_json.write_text(json.dumps(json.loads(run_json.read_text()) | {"complete": False}))


def _torch_load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _torch_save(obj: Any, path: Path) -> None:
    import torch

    torch.save(obj, path)


def read_structured(path: Path) -> Any:
    """The file's content as Python objects (JSON, YAML, a torch file, an array), or None for plain bytes."""
    suffix = path.suffix
    if suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if suffix == ".yaml":
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    if suffix in (".pt", ".ckpt"):
        return _torch_load(path)
    return None


def write_structured(path: Path, obj: Any) -> None:
    suffix = path.suffix
    if suffix == ".json":
        path.write_text(json.dumps(obj), encoding="utf-8")
    elif suffix == ".yaml":
        path.write_text(yaml.safe_dump(obj), encoding="utf-8")
    elif suffix in (".pt", ".ckpt"):
        _torch_save(obj, path)
    else:
        raise AssertionError(path)


def another_shape(path: Path, choice: int) -> str:
    """Overwrite `path` with a well-formed file of its format holding something else (`choice` picks which):
    JSON/YAML of another shape, a torch.save or a plain pickle of another object, another array, other
    text, another SQLite database. Returns what was written."""
    import numpy as np

    suffix = path.suffix
    if suffix in (".json", ".yaml"):
        obj = [[1, 2], 3, "x", {}, None, {"a": 1}, [{"a": [1]}], True][choice % 8]
        write_structured(path, obj)
        return f"{suffix[1:]} {obj!r}"
    if suffix in (".pt", ".ckpt"):
        import torch

        objects = [{"a": 1}, [1, 2], torch.zeros(3), {"state_dict": {}}, {"rnnlab": 1}, "text", None]
        if choice % 8 == 7:
            path.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
            return "a plain pickle of {'a': [1, 2, 3]}"
        _torch_save(objects[choice % 8], path)
        return f"torch.save({objects[choice % 8]!r})"
    if suffix == ".npy":
        arrays = [np.zeros((3, 4), np.uint16), np.arange(10, dtype=np.float32), np.array([], np.uint16),
                  np.full(50, 60000, np.uint16), np.arange(200, dtype=np.int64), np.array(["a", "b"]),
                  np.array([1], np.uint16)]
        array = arrays[choice % len(arrays)]
        np.save(path, array)
        out_of_range = " (ids out of range)" if choice % len(arrays) == 3 else ""
        return f"np.save of a {array.dtype} array of shape {array.shape}{out_of_range}"
    if suffix == ".db":
        path.unlink()
        with contextlib.closing(sqlite3.connect(path)) as con:
            con.execute("create table runs (x int)")
            con.commit()
        return "another SQLite database (a table `runs (x int)`)"
    text = ["", "\n", "x", "\x00\x01\x02", "é" * 10, "a\n" * 3, "\ufeff" + "word " * 5][choice % 7]
    path.write_text(text, encoding="utf-8")
    return f"the text {text!r}"


def damage(path: Path, kind: str, detail: Any) -> str:
    """Damage `path` in the way `kind` names (`detail`: the fraction kept, the bytes, the text, a number that
    picks the other shape or the key dropped, or (key, value) numbers: the key changed and its new value from
    BAD_VALUES); returns what was done, for the report. A kind that does not apply to the file's format (a key
    dropped from plain text) truncates it to half instead."""
    if kind == "deleted":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * detail)])
        return f"truncated to {int(len(data) * detail)} of {len(data)} bytes"
    elif kind == "random bytes":
        path.write_bytes(detail)
        return f"overwritten with {len(detail)} random bytes"
    elif kind == "text":
        path.write_text(detail, encoding="utf-8")
        return f"overwritten with the text {detail[:30]!r}"
    elif kind == "another shape":
        return another_shape(path, detail)
    elif kind in ("a key dropped", "a value changed"):
        obj = read_structured(path)
        if not isinstance(obj, dict) or not obj:
            return damage(path, "truncated", 0.5)
        which, value = detail if kind == "a value changed" else (detail, None)
        key = sorted(obj, key=str)[which % len(obj)]
        if kind == "a key dropped":
            del obj[key]
        else:
            obj[key] = BAD_VALUES[value % len(BAD_VALUES)]
            if path.suffix == ".json" and isinstance(obj[key], float) and not math.isfinite(obj[key]):
                obj[key] = "NaN"  # strict JSON has no NaN: what a foreign writer could put there
        write_structured(path, obj)
        return f"{kind}: {key!r}" + (f" = {obj[key]!r}" if kind == "a value changed" else "")
    elif kind == "a directory":
        path.unlink()
        path.mkdir()
        (path / "x").write_text("x")
        return "replaced by a folder"
    else:
        raise AssertionError(kind)
    return kind
