"""MLflow tracking: where runs go, what they are tagged with, and one Lightning logger per training.

Default store: `sqlite:///<repository root>/mlflow.db`, an absolute URI so that DVC's queued experiments
(which run in a temporary copy under .dvc/tmp/exps, with DVC_ROOT pointing at the real repository) land
in the same database. The environment variable MLFLOW_TRACKING_URI (a tracking server, e.g.
http://127.0.0.1:5000) overrides the default, and `tracking.uri` in the config overrides both (MLflow
itself exports MLFLOW_TRACKING_URI once a run starts, so in-process runs must not depend on it).
A server that does not answer is an error *before* training starts, not after an hour. Every call to a
server is bounded (HTTP_LIMITS: MLflow's own defaults retry for minutes), and a training's writes to a
server go through rnnlab.outbox, so that a server that goes away mid-run never stops the training.

Browse: `mlflow ui --backend-store-uri sqlite:///mlflow.db` (serves http://127.0.0.1:5000).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from rnnlab.errors import UserError
from rnnlab.files import make_folder
from rnnlab.params import Params, digest
from rnnlab.schema import TrackingSpec

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in stage logs


def repo_root() -> Path:
    """The real repository root, also inside DVC's temporary experiment copies."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(spec: TrackingSpec) -> str:
    uri = spec.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):])  # a relative database path: anchor it at the repository root
        uri = f"sqlite:///{path if path.is_absolute() else repo_root() / path}"
    return uri


SQLITE_HEADER = b"SQLite format 3\x00"


# Per call to a server: a 10 s socket timeout, one retry (MLflow: 7 retries with back-off, 120 s timeouts).
# MLflow reads these at each call; a value the user exported wins.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_store(uri: str) -> None:
    """Fail fast, in one line, where MLflow would retry for minutes or fail with a traceback: a server that
    does not answer its health check, a SQLite store that is a folder, not a database, or cannot be created.
    A server's calls from here on are bounded by HTTP_LIMITS."""
    if uri.startswith("sqlite:///"):
        check_sqlite(Path(uri[len("sqlite:///"):]))
    if not remote(uri):
        return
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"the MLflow tracking server {uri} does not answer ({reason}); start it "
            "(mlflow server --host 127.0.0.1 --port 5000), or unset MLFLOW_TRACKING_URI / tracking.uri to use the local mlflow.db"
        ) from None


def check_sqlite(db: Path) -> None:
    folder = next((p for p in (db.parent, *db.parent.parents) if p.exists()), None)
    if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"the MLflow store {db} cannot be created: {folder} is not a folder that can be written; "
                        "choose another tracking.uri (sqlite:///<path>) or fix the folder's permissions")
    if db.is_dir():
        raise UserError(f"the MLflow store {db} is a folder; move it away, or give tracking.uri a file: "
                        "sqlite:///<path>/mlflow.db")
    try:
        with open(db, "rb") if db.exists() else contextlib.nullcontext() as fh:
            header = fh.read(len(SQLITE_HEADER)) if fh else b""
    except OSError as err:
        raise UserError(f"the MLflow store {db} cannot be read ({err.strerror or err}); {STORE_FIX}") from None
    if header and header != SQLITE_HEADER[:len(header)]:
        raise UserError(f"the MLflow store {db} is not an SQLite database; move it away (a new store is created) "
                        "or point tracking.uri at the right file")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def default_run_name(params: Params) -> str:
    """What ran, e.g. `gru-char-h256-clip1.0-3fa2`: cell, level, hidden size, clipping, then the DVC
    experiment's name or a short random suffix, so that no two runs share a name unless asked to
    (tracking.run_name)."""
    suffix = os.environ.get("DVC_EXP_NAME") or secrets.token_hex(2)  # not torch's RNG: seeded runs differ too
    clip = params.trainer.gradient_clip_val or 0
    return f"{params.model.cell}-{params.vocab.level}-h{params.model.hidden_size}-clip{clip}-{suffix}"


def run_tags(params: Params, phash: str) -> dict[str, str]:
    tags = {"params_hash": phash, "rnnlab.stage": os.environ.get("DVC_STAGE", ""),
            "rnnlab.cell": params.model.cell, "rnnlab.level": params.vocab.level,
            "rnnlab.corpus": params.corpus.source, "rnnlab.clip": str(params.trainer.gradient_clip_val)}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    parent = os.environ.get("RNNLAB_PARENT_RUN_ID")  # set by a sweep: child runs nest under its parent
    if parent:
        tags["mlflow.parentRunId"] = parent
    return {k: v for k, v in tags.items() if v}


STORE_FIX = ("check that it exists and is writable (or that the server runs), or point tracking.uri / "
             "MLFLOW_TRACKING_URI at a store that works")


@contextlib.contextmanager
def store_errors(uri: str, also: tuple[type[BaseException], ...] = ()):
    """Turn a failing MLflow store (database deleted, read-only or not a database, server gone) into one
    UserError line. `also`: more exception types that can only come from the store where it is used."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, SQLAlchemyError, *also) as err:
        first = (str(err).strip().splitlines() or ["no message"])[0][:200]
        raise UserError(f"the MLflow store {uri} failed ({first}); {STORE_FIX}") from None


def run_exists(spec: TrackingSpec, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(spec)
    try:
        return MlflowClient(uri).get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def end_run(logger, status: str) -> None:
    """End the run FINISHED, FAILED or KILLED; a store that is gone cannot be told, which is not a second
    error. A logger with an outbox (rnnlab.outbox) sends what it kept first; Lightning's own MLFlowLogger
    already ended a FINISHED run at the end of the fit."""
    from mlflow.exceptions import MlflowException

    closing = getattr(logger, "close_run", None)
    if closing is not None:
        closing(status)
        return
    if status == "FINISHED":
        return
    with contextlib.suppress(MlflowException, OSError):
        logger.experiment.set_terminated(logger.run_id, status)


def ensure_experiment(uri: str, experiment: str) -> str:
    """The id of `experiment`, created if need be. The first use of a new SQLite store migrates its schema,
    and two processes doing that (or creating the experiment) at once fail: two sweeps started together,
    parallel queued experiments. A file lock beside the database lets one go first.

    The experiment is tagged as a model-training one (`KIND_TAG`): MLflow 3's UI decides per experiment
    whether it opens on the GenAI view or on the training view (runs, charts, artifacts) from that tag; an
    experiment without it (one an older rnnlab made) gets it too, a kind someone set is left alone."""
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    lock = contextlib.nullcontext()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        make_folder(db.parent)
        lock = FileLock(f"{db}.lock")
    with lock:
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return client.create_experiment(experiment, tags={KIND_TAG: TRAINING_KIND})
        if KIND_TAG not in found.tags:
            client.set_experiment_tag(found.experiment_id, KIND_TAG, TRAINING_KIND)
        return found.experiment_id


KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"  # the UI's own names (its JS bundle)


def open_logger(params: Params, logged: dict, run_id: str | None = None, server_logger=None):
    """A Lightning MLFlowLogger for a training: the interrupted run `run_id` continued (if it still exists),
    or a new run, named and tagged after `params`, with `logged` as its params. `server_logger`: the
    MLFlowLogger class to use for an http(s) store instead (rnnlab.outbox.server_logger)."""
    import sys

    from lightning.pytorch.loggers import MLFlowLogger

    spec = params.tracking
    uri = tracking_uri(spec)
    check_store(uri)  # a server that does not answer: one line now, not after MLflow's retries
    with store_errors(uri, also=(OSError,)):  # here only MLflow touches files
        ensure_experiment(uri, spec.experiment)
        if run_id and not run_exists(spec, run_id):
            print(f"note: the MLflow run {run_id} of the interrupted training is gone from {uri}; "
                  "logging to a new run", file=sys.stderr)
            run_id = None
        name = spec.run_name or (None if run_id else default_run_name(params))
        make = server_logger if server_logger is not None and remote(uri) else MLFlowLogger
        logger = make(experiment_name=spec.experiment, run_name=name, tracking_uri=uri,
                      tags=run_tags(params, digest(logged)), run_id=run_id)
        if not run_id:
            logger.log_hyperparams(logged)
    return logger


def log_to_run(spec: TrackingSpec, run_id: str | None, metrics: dict | None = None,
               artifacts: list[Path] = (), artifact_path: str | None = None) -> None:
    """Add metrics and artifacts of a later stage (sample, evaluate) to the training's MLflow run."""
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(spec)
    check_store(uri)
    with store_errors(uri):
        client = MlflowClient(tracking_uri=uri)
        for key, value in (metrics or {}).items():
            if isinstance(value, (int, float)) and value == value:  # numbers, not NaN
                client.log_metric(run_id, key, float(value))
        for path in artifacts:
            client.log_artifact(run_id, str(path), artifact_path)
