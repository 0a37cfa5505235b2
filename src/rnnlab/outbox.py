"""Training never waits on a tracking server: the MLflow writes of a training that logs to an http(s) server
go into an outbox, a queue that one background thread sends in order.

    logger = tracking.open_logger(params, logged, run_id, outbox.server_logger(out))   # rnnlab.training
    logger.experiment.log_text(logger.run_id, text, "samples/x.txt")   # queued; the training goes on
    tracking.end_run(logger, "FINISHED")   # sends what is left (bounded), tags, ends the run

Why: MLflow's HTTP client retries for minutes per call (7 retries, 120 s timeouts), on the caller's thread,
so a server restarted mid-run used to stall the training silently. Here a write that fails because the
server is gone (a connection error, a 5xx) stays first in the queue; the thread prints one warning line
when the outage starts, probes the server's /health every POLL_S seconds, and one line when a write gets
through again; the training meanwhile only appends to the queue. A write the server refuses (a 4xx) is
dropped and reported. At the end the queue gets at most RNNLAB_TRACKING_WAIT_S seconds (WAIT_S; a failed
or stopped training STOP_WAIT_S) to drain; what is still unsent is listed in one warning line and kept
in `mlflow-unsent.json` beside the outputs (metric values with their steps and times, and the other
writes where they can be replayed), the run gets the tag `rnnlab.tracking_incomplete=true` when the server can be told, and
the stage exits 0: the training's own outputs on disk are complete either way. Once the server is back,

    python -m rnnlab.outbox data/train/mlflow-unsent.json

sends what was kept (metrics, files, texts; not the pyfunc model), then ends the run.

SQLite stores are local files: their writes stay synchronous, through Lightning's own MLFlowLogger.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.exceptions import MlflowException

from rnnlab.errors import UserError, entry_point
from rnnlab.files import write_json

WAIT_S = 60.0  # the end of a finished training waits this long for the server (RNNLAB_TRACKING_WAIT_S)
STOP_WAIT_S = 10.0  # a failed or stopped training: SLURM's grace after SIGTERM is short
POLL_S = 2.0  # how often an outage probes /health
MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch
UNSENT = "mlflow-unsent.json"
INCOMPLETE_TAG = "rnnlab.tracking_incomplete"
# MlflowClient methods that write: queued. Any other attribute (reads) goes straight to the client.
WRITES = frozenset({"log_batch", "log_metric", "log_param", "set_tag", "log_text", "log_dict", "log_table",
                    "log_artifact", "log_artifacts", "log_image", "log_figure", "log_inputs"})


@dataclass
class Item:
    """One queued write: `what` names it in reports; a metrics-only log_batch keeps its `metrics` apart so
    that consecutive ones are sent as one call after an outage."""
    what: str
    call: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    tries: int = 0

    def replay(self) -> dict | None:
        """The write as JSON for `python -m rnnlab.outbox` (a client method's name and arguments less the
        run id), or None when it cannot be (the pyfunc model, params)."""
        name = getattr(self.call, "__name__", "")
        found = {"call": name, "args": list(self.args[1:]), "kwargs": {k: v for k, v in self.kwargs.items()
                                                                       if k != "run_id"}}
        try:
            json.dumps(found)
        except (TypeError, ValueError):
            return None
        return found if name in WRITES and not self.metrics else None

    def send(self) -> None:
        if self.metrics:
            self.call(run_id=self.kwargs["run_id"], metrics=self.metrics)
        else:
            self.call(*self.args, **self.kwargs)


def item_for(name: str, call: Callable, args: tuple, kwargs: dict) -> Item:
    """A queued MlflowClient write (all take the run id first), named for the report."""
    if name == "log_batch" and kwargs.get("metrics") and not kwargs.get("params") and not kwargs.get("tags"):
        return Item("metrics", call, kwargs={"run_id": kwargs["run_id"]}, metrics=list(kwargs["metrics"]))
    if name == "log_batch":
        return Item("params and tags", call, args, kwargs)
    if name in ("log_artifact", "log_artifacts"):
        local = args[1] if len(args) > 1 else kwargs.get("local_path") or kwargs.get("local_dir") or ""
        folder = (args[2] if len(args) > 2 else kwargs.get("artifact_path")) or ""
        return Item(f"{folder}/{Path(str(local)).name}".lstrip("/"), call, args, kwargs)
    named = kwargs.get("artifact_file") or kwargs.get("key") or (args[2] if len(args) > 2 else name)
    return Item(str(named)[:100], call, args, kwargs)


def transient(err: BaseException) -> bool:
    """A failure the server's return cures (gone, overloaded, 5xx), not a refusal of this write (4xx)."""
    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    status = getattr(getattr(err, "response", None), "status_code", None)  # requests' HTTPError
    return status is None or status >= 500


def reason(err: BaseException) -> str:
    """The cause in a few words: MLflow wraps a refused connection in three layers of text."""
    text = str(err).strip()
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text) or re.search(r"(Read timed out|timed out)", text)
    return found.group(1).strip() if found else (text.splitlines() or [type(err).__name__])[0][:200]


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=POLL_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_budget() -> float:
    """RNNLAB_TRACKING_WAIT_S, or WAIT_S when unset or not a number of seconds (said in a line: the
    training is over by now, its outputs written; a typo here must not cost them)."""
    given = os.environ.get("RNNLAB_TRACKING_WAIT_S")
    try:
        return WAIT_S if given is None else max(float(given), 0.0)
    except ValueError:
        warn(f"RNNLAB_TRACKING_WAIT_S={given!r} is not a number of seconds; waiting {WAIT_S:.0f} s for the server")
        return WAIT_S


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


class Outbox:
    """The queue of writes to one tracking server and the daemon thread that sends them, first in first out."""

    def __init__(self, uri: str) -> None:
        self.uri, self.items, self.cond = uri, collections.deque(), threading.Condition()
        self.closing, self.stop, self.thread = False, threading.Event(), None
        self.current: Item | None = None
        self.refused: list[tuple[Item, str]] = []
        self.down_since: float | None = None

    def put(self, item: Item) -> None:
        with self.cond:
            self.items.append(item)
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="rnnlab-outbox", daemon=True)
                self.thread.start()
            self.cond.notify()

    def take(self) -> Item | None:
        """The next write (consecutive metric batches of one run merged, up to MAX_BATCH); None once closed."""
        with self.cond:
            while not self.items and not self.closing:
                self.cond.wait()
            if not self.items or self.stop.is_set():
                return None
            item = self.items.popleft()
            while (item.metrics and self.items and self.items[0].metrics and self.items[0].kwargs == item.kwargs
                   and len(item.metrics) + len(self.items[0].metrics) <= MAX_BATCH):
                item.metrics = item.metrics + self.items.popleft().metrics
            self.current = item
            return item

    def run(self) -> None:
        while (item := self.take()) is not None:
            try:
                item.send()
            except Exception as err:  # noqa: BLE001 — a thread's boundary: anything else would print a traceback
                self.failed(item, err)
                continue
            with self.cond:
                self.current = None
            if self.down_since is not None:
                warn(f"the MLflow server {self.uri} takes writes again after {time.monotonic() - self.down_since:.0f} s; "
                     "sending what was kept")
                self.down_since = None

    def failed(self, item: Item, err: Exception) -> None:
        """A transient failure keeps `item` first and waits for the server's /health; a refusal (4xx), or a
        third failure while /health answers (a store broken behind it), drops it, for the report at the end."""
        item.tries += 1
        if not transient(err) or (item.tries >= 3 and healthy(self.uri)):
            self.refused.append((item, reason(err)))
            with self.cond:
                self.current = None
            return
        with self.cond:
            self.items.appendleft(item)
            self.current = None
        if self.down_since is None:
            self.down_since = time.monotonic()
            warn(f"the MLflow server {self.uri} does not take writes ({reason(err)}); training goes on, its metrics "
                 "are kept and sent when the server is back")
        while not self.stop.wait(POLL_S) and not healthy(self.uri):
            pass

    def drain(self, budget: float) -> list[Item]:
        """Close the queue, wait at most `budget` seconds for it to empty; returns what was not sent."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(max(budget, 0.0))
        with self.cond:
            self.stop.set()  # a thread still busy stops after its current write
            left = ([self.current] if self.current else []) + list(self.items)
            self.items.clear()
        return [item for item, _ in self.refused] + left


class Deferred:
    """`logger.experiment` of an OutboxLogger: the MlflowClient, with its writes queued in the outbox."""

    def __init__(self, client, outbox: Outbox) -> None:
        self._client, self._outbox = client, outbox

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if name not in WRITES:
            return attr

        def queued(*args, **kwargs) -> None:
            self._outbox.put(item_for(name, attr, args, kwargs))

        return queued


class OutboxLogger(MLFlowLogger):
    """Lightning's MLFlowLogger for a tracking server: creating the run is synchronous (the server was just
    checked), every later write goes through the outbox; the run ends in `close_run`, after the outputs
    are logged, not in Lightning's `finalize` at the end of the fit."""

    def __init__(self, *args, unsent_file: Path | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outbox, self.unsent_file, self.closed = Outbox(self._tracking_uri), unsent_file, False

    @property
    def experiment(self):
        client = MLFlowLogger.experiment.fget(self)
        return Deferred(client, self.outbox) if client is self._mlflow_client else client  # rank > 0: a dummy

    def finalize(self, status: str = "success") -> None:
        """Lightning's end of the fit: the outputs are still to be logged, so close_run ends the run."""

    def __getstate__(self) -> dict:  # a spawned DDP process gets a logger of its own, without the thread
        return {k: v for k, v in self.__dict__.items() if k != "outbox"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.outbox = Outbox(self._tracking_uri)

    def close_run(self, status: str) -> None:
        """Send what is kept (bounded), report and keep what is not, tag the run if anything is missing, end it."""
        if self.closed:
            budget = 0.0  # a signal while the first close waited: end the run now
        else:
            budget = wait_budget() if status == "FINISHED" else STOP_WAIT_S
        self.closed = True
        lost = self.outbox.drain(budget)
        client, run_id = self._mlflow_client, self._run_id
        tags = {INCOMPLETE_TAG: "true"} if lost else {}
        told = run_id is not None and healthy(self._tracking_uri) and self.tell(client, run_id, tags, status)
        if lost:
            self.report(lost, told, status)
        elif not told and run_id is not None:
            warn(f"the MLflow server {self._tracking_uri} does not answer: the run {run_id} could not be marked "
                 f"{status} and stays RUNNING there; everything else was sent")

    def tell(self, client, run_id: str, tags: dict, status: str) -> bool:
        try:
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            client.set_terminated(run_id, status)
        except (MlflowException, OSError):
            return False
        return True

    def report(self, lost: list[Item], told: bool, status: str) -> None:
        """One line: what was not sent, where it is kept, whether the run could be tagged."""
        metrics = [m for item in lost for m in item.metrics]
        others = [item.what for item in lost if not item.metrics]
        kept = ""
        if self.unsent_file is not None:
            write_json(self.unsent_file, {
                "tracking_uri": self._tracking_uri, "run_id": self._run_id, "status": status,
                "metrics": [[m.key, m.value, m.step, m.timestamp] for m in metrics], "not_sent": others,
                "writes": [found for item in lost if not item.metrics and (found := item.replay())],
                "refused": [[item.what, why] for item, why in self.outbox.refused]})
            kept = f"; kept in {self.unsent_file}"
        steps = f" (steps {min(m.step for m in metrics)}-{max(m.step for m in metrics)})" if metrics else ""
        names = f" and {len(others)} other records ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
        run = (f"the run {self._run_id} is tagged {INCOMPLETE_TAG}=true" if told else
               f"the server could not be told: the run {self._run_id} stays RUNNING there")
        replay = f" (send them later: python -m rnnlab.outbox {self.unsent_file})" if kept and not told else ""
        warn(f"{len(metrics)} metric values{steps}{names if others else ''} did not reach the MLflow server "
             f"{self._tracking_uri}{kept}{replay}; {run}; the training's outputs on disk are complete")


def server_logger(out: Path) -> Callable[..., OutboxLogger]:
    """The logger class tracking.open_logger uses for an http(s) store, keeping what is unsent in `out`."""
    return functools.partial(OutboxLogger, unsent_file=out / UNSENT)


def send(logger, what: str, call: Callable, *args, **kwargs) -> None:
    """`call(*args, **kwargs)` now (a local store) or in the outbox's turn (a tracking server): e.g. logging
    the pyfunc model, which talks to the server through MLflow's fluent API, not through `experiment`."""
    if isinstance(logger, OutboxLogger):
        logger.outbox.put(Item(what, call, args, kwargs))
    else:
        call(*args, **kwargs)


def replay(path: Path) -> str:
    """Send what a training kept in `path` (mlflow-unsent.json) and end its run; returns what it did. The run
    keeps the tag INCOMPLETE_TAG=true when a write could not be kept (the pyfunc model, a refused one)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        uri, run_id = kept["tracking_uri"], kept["run_id"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a file of writes a training kept ({err}); give the mlflow-unsent.json "
                        "that the training's warning named") from None
    client = MlflowClient(uri)
    metrics = [Metric(key, value, timestamp, step) for key, value, step, timestamp in kept["metrics"]]
    try:
        for start in range(0, len(metrics), MAX_BATCH):
            client.log_batch(run_id, metrics=metrics[start:start + MAX_BATCH])
        for write in kept["writes"]:
            getattr(client, write["call"])(run_id, *write["args"], **write["kwargs"])
        complete = len(kept["writes"]) == len(kept["not_sent"]) and not kept["refused"]
        client.set_tag(run_id, INCOMPLETE_TAG, str(not complete).lower())
        client.set_terminated(run_id, kept.get("status", "FINISHED"))
    except (MlflowException, OSError) as err:
        raise UserError(f"the MLflow server {uri} did not take the kept writes ({reason(err)}); start it, or "
                        "check that the run still exists, and run this again") from None
    path.unlink()
    return f"sent {len(metrics)} metric values and {len(kept['writes'])} other writes to the run {run_id}"


@entry_point
def main() -> None:
    """`python -m rnnlab.outbox FILE`: replay a training's unsent MLflow writes (see the module docstring)."""
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print("python -m rnnlab.outbox data/train/mlflow-unsent.json: send what a training kept while its MLflow "
              "server was down, and end the run")
        return
    print(replay(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
