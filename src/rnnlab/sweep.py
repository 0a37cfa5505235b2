"""Hydra multirun sweeps over the whole chain (prepare → vocab → train → sample → evaluate).

`pipeline/sweep.py` is the entry point; this module holds what a sweep adds to the DVC stages:
  * `ParentRun`, a Hydra callback: one MLflow parent run per sweep (named after the sweep folder),
    created before the jobs start — which also creates the SQLite database and the experiment once,
    before parallel jobs could race on the first-use schema migration. Its id reaches the jobs through
    RNNLAB_PARENT_RUN_ID (joblib workers inherit the environment), and every training run tags itself
    as its child. At the end it writes the comparison report (`report.py`) into the parent run;
  * `job_params`: per-job paths under the sweep folder, the child run's name (its overrides), and the
    torch thread count (the cores split between parallel jobs);
  * `once`: jobs with the same corpus (and vocabulary) settings share the prepared data, keyed by a
    hash of those settings and built once under a file lock;
  * `run_job`: the chain of stage functions (rnnlab.stages), as `dvc repro` runs them (with an Optuna
    trial's pruning when the optuna sweeper runs the job: rnnlab.trial);
  * the way out: `stop_workers` (a signal to the sweep kills the processes it started: joblib's loky
    workers would otherwise train on) and `end_parent` (the parent run and its children still RUNNING
    marked FAILED or KILLED), called by pipeline/sweep.py when the sweep ends by an exception.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rnnlab.errors import Stopped, UserError, entry_point
from rnnlab.files import make_folder
from rnnlab.params import Params, build, digest, from_dict
from rnnlab.schema import TrackingSpec
from rnnlab.tracking import ensure_experiment, tracking_uri

PARENT_ENV = "RNNLAB_PARENT_RUN_ID"
SWEPT_ENV = "RNNLAB_SWEPT_KEYS"  # what varies across the sweep: the children are named by these


def swept_keys(config: DictConfig) -> list[str]:
    """Keys the sweep varies: command-line sweeps (a,b / range()) and a preset's sweeper params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    return keys + [str(k) for k in (config.hydra.sweeper.get("params") or {})]


def client_for(config: DictConfig):
    """An MlflowClient on the sweep's tracking store, and the tracking settings."""
    from mlflow.tracking import MlflowClient

    spec = build(TrackingSpec, "tracking", OmegaConf.to_container(config.tracking, resolve=True))
    ensure_experiment(tracking_uri(spec), spec.experiment)  # first: a new client migrates a new store
    return MlflowClient(tracking_uri(spec)), spec


class ParentRun(Callback):
    """One MLflow parent run per multirun; the jobs' runs are its children."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        entry_point(claim)(Path(config.hydra.sweep.dir))  # a clash is one line and exit 2, as everywhere
        client, spec = client_for(config)
        experiment_id = ensure_experiment(tracking_uri(spec), spec.experiment)
        sweep_dir = Path(config.hydra.sweep.dir)
        run = client.create_run(experiment_id, run_name=f"sweep {sweep_dir.name}",
                                tags={"rnnlab.sweep_dir": str(sweep_dir.resolve())})
        os.environ[PARENT_ENV] = run.info.run_id
        os.environ[SWEPT_ENV] = ",".join(swept_keys(config))
        keep_ctrl_c_from_workers(config)
        print(f"MLflow parent run {run.info.run_id} ({tracking_uri(spec)})", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rnnlab import report

        run_id = os.environ.get(PARENT_ENV)  # until it is FINISHED: a signal meanwhile marks it KILLED
        if not run_id:
            return
        client, _ = client_for(config)
        out = Path(config.hydra.sweep.dir) / "report"
        table = report.write(client, report.children(client, run_id), out,
                             title=f"Sweep {Path(config.hydra.sweep.dir).name}")
        client.log_artifacts(run_id, str(out), "report")
        client.set_terminated(run_id)
        os.environ.pop(PARENT_ENV, None)
        print(f"{table}\nreport: {out / 'report.md'} (plots beside it)", flush=True)


def end_parent(uri: str, status: str) -> None:
    """Mark the sweep's parent run FAILED or KILLED when the sweep ends by an exception (a job's error,
    a signal); `ParentRun.on_multirun_end`, which finishes it otherwise, is then never called. Its
    children still RUNNING (a job killed in a worker, or stopped before its training could say so) are
    marked KILLED."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id = os.environ.pop(PARENT_ENV, None)
    if run_id:
        client = MlflowClient(uri)
        with contextlib.suppress(MlflowException, OSError):
            for child in client.search_runs(
                    [client.get_run(run_id).info.experiment_id],
                    f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"):
                client.set_terminated(child.info.run_id, "KILLED")
        with contextlib.suppress(MlflowException, OSError):
            client.set_terminated(run_id, status)


def ignore_signals() -> None:
    """On the way out after a signal: a second Ctrl-C must not cut the clean-up short."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def stop_workers() -> None:
    """Kill every process this sweep started (joblib's loky workers, submitit_local's jobs) and wait for
    them: they would otherwise train on after the sweep stopped. Their MLflow runs are then `end_parent`'s.
    Not the resource trackers (multiprocessing's, joblib's): they compute nothing, clean the workers'
    leftovers up and exit with this process; killed, they would be started again at exit, and complain."""
    import psutil

    children = [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in cmdline(p)]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=10)


def cmdline(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def stopped(err: BaseException) -> Stopped:
    """The one line of a stopped sweep (a study's own line, rnnlab.search, already says how to resume)."""
    import signal

    if getattr(err, "study_line", False):
        return err
    signum = err.exit_status - 128 if isinstance(err, Stopped) else signal.SIGINT
    stop = Stopped(signum)
    stop.args = (f"stopped by {signal.Signals(signum).name}; the sweep's unfinished runs are marked KILLED, its "
                 "finished jobs stay in its folder (the same command starts a new sweep)",)
    return stop


def keep_ctrl_c_from_workers(config: DictConfig) -> None:
    """Processes the launcher starts (joblib's loky workers, submitit_local's jobs) begin with SIGINT
    blocked. Ctrl-C reaches the terminal's whole process group, and a worker still starting up would print
    a KeyboardInterrupt traceback; the sweep's process stops its workers itself (`stop_workers`). A child
    inherits the mask of the thread that started it, so the main thread blocks SIGINT; a listener thread,
    started first, keeps it deliverable to this process (Python runs the handler in the main thread
    whichever thread the kernel picked; joblib's and submitit's waits poll every few milliseconds). Not
    with the basic launcher: its jobs train in this process, where the signal is best taken at once."""
    import signal

    if str(config.hydra.launcher.get("_target_", "")).endswith(".BasicLauncher"):
        return
    if "joblib" in str(config.hydra.launcher.get("_target_", "")):
        from multiprocessing import resource_tracker

        from joblib.externals.loky.backend.resource_tracker import ensure_running

        resource_tracker.ensure_running()  # first: starting either one unblocks SIGINT in the calling thread
        ensure_running()
    threading.Thread(target=threading.Event().wait, name="sigint-listener", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def checked_job(params: Params, trial=None) -> dict:
    """`run_job` with a user's mistake (or a size the machine cannot hold) as one line and exit 2; a signal
    goes on up to the sweep, which stops every job and prints the one line."""
    caught = []

    def job() -> dict:
        try:
            return run_job(params, trial)
        except Stopped as stop:
            caught.append(stop)
            return {}

    result = entry_point(job)()
    if caught:
        raise caught[0]
    return result


def claim(sweep_dir: Path) -> None:
    """Make `sweep_dir` this sweep's own: two sweeps never write into each other's jobs. Its name has the
    start time to the microsecond; should two sweeps still get the same one, the second stops here."""
    make_folder(sweep_dir)
    try:
        os.close(os.open(sweep_dir / ".sweep", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise UserError(f"the sweep folder {sweep_dir} belongs to another sweep; start this one again "
                        "(or give hydra.sweep.dir=<a new folder>)") from None


def job_params(cfg: DictConfig, job_dir: Path, overrides: list[str], n_jobs: int) -> Params:
    """The job's params, checked: outputs under its folder, data shared by settings, named after its overrides."""
    params = from_dict(OmegaConf.to_container(cfg, resolve=True))
    shared = Path(job_dir).parent / "data"
    corpus_key = digest(params.select(("corpus",)))
    vocab_key = digest({"corpus": corpus_key, "vocab": params.section("vocab")})
    swept = os.environ.get(SWEPT_ENV, "").split(",")
    named = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept] or overrides
    threads = params.threads
    if threads is None and n_jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // n_jobs)
    return params.replace(
        paths={"prepared": str(shared / f"prepared-{corpus_key}"), "vocab": str(shared / f"vocab-{vocab_key}"),
               **{stage: str(Path(job_dir) / stage) for stage in ("train", "samples", "eval")}},
        tracking={"run_name": params.tracking.run_name or (" ".join(named) or "defaults")}, threads=threads)


def once(folder: str | Path, build: Callable[[], None]) -> None:
    """Run `build` (which writes `folder`) unless another job already did; parallel jobs wait."""
    folder = Path(folder)
    done = folder / ".done"
    make_folder(folder.parent)
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            build()
            done.touch()


@contextlib.contextmanager
def prefixed_output(prefix: str):
    """Every line the job writes to stdout and stderr (Python's, libraries', C's) starts with `prefix`, so
    that parallel jobs' interleaved logs can be told apart. The process's file descriptors 1 and 2 go
    through a pipe each, read by a thread that writes the lines, prefixed, to the original stream."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, pumps = {fd: os.dup(fd) for fd in (1, 2)}, []
    for fd in (1, 2):
        read, write = os.pipe()
        os.dup2(write, fd)
        os.close(write)
        pumps.append(threading.Thread(target=pump, args=(read, saved[fd], prefix.encode()), daemon=True))
        pumps[-1].start()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            os.dup2(saved[fd], fd)  # closes the pipe's last write end: the pump reads EOF
        for thread in pumps:
            thread.join(timeout=10)
        for fd in saved.values():
            os.close(fd)


def pump(read: int, out: int, prefix: bytes) -> None:
    with os.fdopen(read, "rb") as lines:
        for line in lines:
            os.write(out, prefix + line)


def run_job(params: Params, trial=None) -> dict:
    """prepare → vocab → train → sample → evaluate for one job. Returns {"value": the best validation loss
    (what an optimising sweeper minimises), "state", "run_id"}: state "complete"; "diverged" (value NaN) when
    training diverged, a result of the sweep (e.g. without clipping), recorded as a failed MLflow run, not a
    mistake; "pruned" when `trial` (an Optuna trial, rnnlab.search) was stopped early by its study's pruner:
    then sample and evaluate are skipped and the MLflow run is KILLED with the tag optuna.state=PRUNED."""
    from rnnlab.lit import NonFiniteError
    from rnnlab.stages import evaluate, prepare, sample, train, vocab

    once(params.paths.prepared, lambda: prepare.run(params))
    once(params.paths.vocab, lambda: vocab.run(params))
    pruning = []
    if trial is not None:
        from rnnlab import trial as optuna_trial  # Lightning: only where a job trains

        pruning = [optuna_trial.Pruning(trial)]
    try:
        metrics = train.run(params, pruning)
    except NonFiniteError as err:
        print(f"job diverged: {err}", file=sys.stderr)
        return {"value": math.nan, "state": "diverged", "run_id": None}
    run_id = trained_run_id(params)
    pruned_at = pruning[0].pruned_at if pruning else None
    if trial is not None and run_id:
        optuna_trial.tag_trial(params.tracking, run_id, trial, pruned_at)
    if pruned_at is not None:
        print(f"trial {trial.number} pruned at step {pruned_at}")
        return {"value": metrics.get("val_loss", math.nan), "state": "pruned", "run_id": run_id}
    sample.run(params)
    evaluate.run(params)
    return {"value": metrics.get("val_loss", math.nan), "state": "complete", "run_id": run_id}


def trained_run_id(params: Params) -> str | None:
    """The MLflow run of the job's training (its model's meta.json); None in a further DDP process."""
    import json

    from rnnlab.trained_model import META_FILE

    meta = Path(params.paths.train) / "model" / META_FILE
    return json.loads(meta.read_text(encoding="utf-8")).get("mlflow_run_id") if meta.exists() else None
