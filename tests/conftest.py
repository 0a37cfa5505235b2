"""Shared test helpers: the repository root, a tiny corpus, the real config shrunk, and a copy of the repo
as a git + DVC project.

Two tiers: end-to-end tests (real `dvc`, sweeps, servers, the browser) are marked `slow`;
`pytest -m "not slow"` is the quick loop, `pytest -q` runs everything (CI).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs the suite in two workers (pyproject.toml): on 2 cores each gets one torch/OpenMP thread,
    # and so do the processes it starts (dvc, stages, servers). Two torch processes that each spin 2 OpenMP
    # threads slow each other 10-20x; one thread each costs little at these tiny sizes.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED_CORPORA = REPO.parent / "shared" / "corpora"
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]  # commits in a test's repository, whoever runs it

TINY_TEXT = "".join(
    f"SPEAKER {i % 3}:\nthe cat, which ate {i} fish, was full.\nthe cats were full too!\n\n" for i in range(60)
)

# The real config, shrunk: a tiny corpus, a tiny model, a few steps (seconds, not minutes).
TINY = [
    "corpus=file", "corpus.path=tiny.txt", "model.embedding_size=8", "model.hidden_size=16",
    "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.accelerator=cpu", "data.batch_size=4",
    "data.bptt=8", "data.eval_batch_size=4", "evaluate.batch_size=2", "evaluate.bptt=8", "gradstats.gtt_length=8",
    "gradstats.gtt_batch=2", "gradstats.samples=2", "gradstats.sample_length=20", "sample.num_samples=3",
    "sample.max_length=40",
]


def conf_spec(key: str, **changes):
    """A section of conf/'s default composition with `changes` (rnnlab.config.spec): the one place defaults live."""
    from rnnlab.config import spec

    return spec(key, REPO / "conf", **changes)


DURATIONS = Path(__file__).with_name("durations.json")  # seconds per test file, from `pytest --store-durations`


def pytest_collection_modifyitems(config, items) -> None:
    """The costliest files first (longest-processing-time first): pytest-xdist hands each worker whole files
    (`--dist loadfile`) in this order (`--no-loadscope-reorder`; its default orders by number of tests, which
    left the DDP and team-server files for the end of one worker), so the long files start at once and the
    short ones even out the end. A file not yet in tests/durations.json goes first: it may be a long one."""
    cost = json.loads(DURATIONS.read_text(encoding="utf-8")) if DURATIONS.exists() else {}
    items.sort(key=lambda item: -cost.get(item.path.name, float("inf")))  # stable: a file's tests stay together, in order


SPENT: Counter = Counter()  # test file name -> seconds of set-up, call and tear-down in this run


def pytest_runtest_logreport(report) -> None:
    """Add up each file's time (in the controller: pytest-xdist sends it every report)."""
    SPENT[Path(report.nodeid.split("::")[0]).name] += report.duration


def pytest_sessionfinish(session, exitstatus) -> None:
    """`--store-durations`: after a whole, passing `pytest`, write each file's seconds to tests/durations.json."""
    config = session.config
    if not config.getoption("--store-durations") or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    whole = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not any(
        getattr(config.option, name, None) for name in ("markexpr", "keyword", "lf", "stepwise", "collectonly"))
    if exitstatus != 0 or not whole or not SPENT:
        print("\n--store-durations: not stored (it needs a whole, passing run: no paths, -m, -k, --lf or --sw)")
        return
    from rnnlab.files import write_json

    write_json(DURATIONS, {name: round(seconds, 1) for name, seconds in SPENT.most_common()})


def pytest_addoption(parser) -> None:
    parser.addoption("--store-durations", action="store_true",
                     help="after a whole, passing run, write each test file's seconds to tests/durations.json")
    parser.addoption("--refresh-docs", action="store_true",
                     help="let the MLflow UI test write docs/mlflow-ui.png (tests write nowhere else in the repo)")


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with its schema created once (the migrations take ~1 s per new file)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def fresh_mlflow_db(tmp_path: Path, migrated_mlflow_db: Path) -> Path:
    """tmp_path/mlflow.db: a new, empty store (a copy of the migrated template)."""
    shutil.copy(migrated_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path / "mlflow.db"


@pytest.fixture
def vocab_dir(tmp_path: Path, fresh_mlflow_db) -> Path:
    """The vocab stage's folder for TINY_TEXT (char level), and an empty MLflow store at tmp_path/mlflow.db."""
    from rnnlab import splits, vocab

    texts = splits.split(TINY_TEXT * 3, conf_spec("corpus", source="file", path="x"))
    vocab.build_and_encode(texts, conf_spec("vocab", level="char"), False, tmp_path / "vocab")
    return tmp_path / "vocab"


def tiny_params(tmp_path: Path, *overrides: str):
    """The real config (conf/) shrunk by TINY, every path and the MLflow store inside `tmp_path`."""
    from rnnlab.params import from_dict

    (tmp_path / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    text = tiny_composition(overrides).replace(json.dumps(ROOT)[1:-1], json.dumps(str(tmp_path))[1:-1])
    return from_dict(json.loads(text))  # a checked rnnlab.params.Params


ROOT = "/nonexistent/rnnlab-tiny-root"  # tiny_params' stand-in for a test's tmp_path while Hydra composes


@functools.lru_cache(maxsize=None)
def tiny_composition(overrides: tuple[str, ...]) -> str:
    """tiny_params' composition with ROOT for tmp_path, as the JSON of params.yaml's values: Hydra composes each
    set of overrides once per worker (~0.13 s a time), and every test gets its own copy with its own paths."""
    from rnnlab.config import compose
    from rnnlab.params import SECTIONS

    paths = [f"paths.{k}={ROOT}/data/{k}" for k in ("raw", "prepared", "vocab", "train", "samples", "eval", "state")]
    params = compose([*TINY, f"corpus.path={ROOT}/tiny.txt", *paths, f"tracking.uri=sqlite:///{ROOT}/mlflow.db",
                      *overrides], REPO / "conf")
    return json.dumps(params.select((*SECTIONS, "seed", "threads", "callbacks")))


def set_args(overrides: list[str]) -> list[str]:
    """`dvc exp run`'s arguments for Hydra overrides: `-S` before each."""
    return [arg for override in overrides for arg in ("-S", override)]


def train_outputs(root: Path) -> dict[str, bytes]:
    """The train stage's outputs in the project at `root` (model, metrics, plots; not its checkpoints), by path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in (root / "data" / "train").rglob("*")
            if p.is_file() and "checkpoints" not in p.parts}


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command the way a user would from the project root (the venv's bin first on PATH)."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    full_env.pop("DVC_EXP_NAME", None)
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(autouse=True)
def isolated_mlflow_uri():
    """MLflow exports MLFLOW_TRACKING_URI once a run starts; keep one test's store out of the next test."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)  # also unsets the environment variable
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repository (code, conf, pipeline) in a fresh git repository, with a tiny corpus."""
    return copy_project(tmp_path)


def copy_project(tmp_path: Path) -> Path:
    """`project`'s work, for fixtures of a wider scope: tmp_path/project."""
    dst = tmp_path / "project"
    ignore = shutil.ignore_patterns(".venv", "__pycache__", "*.egg-info", ".pytest_cache", "tmp", "cache")
    for name in ("conf", "pipeline", "src", ".dvc"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, dst / name)
    (dst / "data").mkdir()
    shutil.copy(REPO / "data" / ".gitignore", dst / "data" / ".gitignore")
    (dst / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    run(["git", "init", "-q"], dst)
    run([*GIT, "add", "-A"], dst)
    run([*GIT, "commit", "-qm", "init"], dst)
    return dst


@dataclass(frozen=True)
class Trained:
    """A project after `python -m rnnlab.config *TINY` and `dvc repro`, committed: `out` is what that `dvc repro`
    printed."""
    path: Path
    out: str


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory) -> Trained:
    """The one TINY `dvc repro` of a test run (~40 s), made by whichever pytest-xdist worker asks first while
    the other waits on the lock (pytest-xdist's recipe for once-per-run set-up); tests take a copy
    (`trained_project`), never the template itself."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # parent: this run's, shared by workers
    record = root / "trained-template.json"
    with FileLock(str(record) + ".lock"):
        if not record.exists():
            project = copy_project(root / "trained-template")
            run(["python", "-m", "rnnlab.config", *TINY], project)
            out = run(["dvc", "repro"], project).stdout
            run([*GIT, "add", "-A"], project)
            run([*GIT, "commit", "-qm", "trained"], project)
            record.write_text(json.dumps({"path": str(project), "out": out}))
    saved = json.loads(record.read_text())
    return Trained(Path(saved["path"]), saved["out"])


# MLflow's SQLite store keeps absolute artifact locations: a copy's runs must point at the copy's artifacts.
MLFLOW_PATHS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"),
                ("model_versions", "source"), ("model_versions", "storage_location"))


@pytest.fixture
def trained_project(trained_template: Trained, tmp_path: Path) -> Path:
    """tmp_path/project: a copy of the trained template (git, DVC cache and run cache, data/, mlflow.db), as if
    this test had run `python -m rnnlab.config *TINY`, `dvc repro` and committed."""
    src, dst = trained_template.path, tmp_path / "project"
    shutil.copytree(src, dst, symlinks=True,
                    ignore=lambda folder, names: ["tmp"] if Path(folder) == src / ".dvc" else [])
    with sqlite3.connect(dst / "mlflow.db") as db:
        for table, column in MLFLOW_PATHS:
            db.execute(f"update {table} set {column} = replace({column}, ?, ?)", (str(src), str(dst)))
    db.close()
    return dst


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


def untracked_files(project) -> list[str]:
    """Files git would list as new, less those the repository commits (data/*/metrics.json, ...): a user's
    clone tracks them, the test's fresh repository never committed them."""
    committed = set(run(["git", "ls-files"], REPO).stdout.splitlines())
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], project).stdout.splitlines()
    return [line for line in status if line.startswith("??") and line[3:] not in committed]


def kill_train_after_a_checkpoint(project: Path, delay: tuple[float, float]) -> Path:
    """Start `dvc repro train`, wait for its first checkpoint (a new one, if one was there), wait a random time
    in `delay` (seconds), then kill -9 the whole process group (dvc, the training and any DDP processes);
    returns last.ckpt."""
    import random
    import signal
    import time

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    last = project / "data" / "train" / "checkpoints" / "last.ckpt"
    before = last.stat().st_mtime_ns if last.exists() else None
    proc = subprocess.Popen(["dvc", "repro", "train"], cwd=project, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and (not last.exists() or last.stat().st_mtime_ns == before):
        time.sleep(0.02)
    time.sleep(random.uniform(*delay))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return last
