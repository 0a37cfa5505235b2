"""End to end: a training logs through a local `mlflow server`, and a user browses the run in the MLflow UI.

Starts `mlflow server` on 127.0.0.1 (SQLite store and proxied artifacts under tmp_path), trains a tiny model
into it, checks the run through the REST API, then renders the run list and the run page in headless Chromium
and takes a screenshot of the run page (into the test's temporary folder; `pytest --refresh-docs` writes
docs/mlflow-ui.png instead). Everything stays on loopback.
Needs Debian's `chromium` (/usr/bin/chromium): skipped without it, except under CI (CI set), where it fails.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, TINY_TEXT, conf_spec
from rnnlab.tracking import KIND_TAG, TRAINING_KIND
from rnnlab import splits, vocab
from test_training import run_training, tiny_job

CHROMIUM = Path("/usr/bin/chromium")
MLFLOW = Path(sys.executable).parent / "mlflow"
DOCS_SCREENSHOT = REPO / "docs" / "mlflow-ui.png"
SERVER_START_S = 120
# A direct opener: a proxy from the environment must not see loopback requests.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium); this test needs a headless browser")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(mlflow_server_control):
    """`mlflow server` on a free loopback port; yields its base URL."""
    yield mlflow_server_control[0]


@pytest.fixture
def mlflow_server_control(tmp_path: Path):
    """`mlflow server` on a free loopback port; yields its base URL and a function that stops it (the test may
    stop it early); the whole process group is stopped after."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    cmd = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # No job runner: it starts 8 huey processes (GenAI judges, trace jobs) that browsing runs does not need,
    # slows the start on 2 cores, and leaves a folder in /dev/shm behind at every start.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def stop() -> None:
        """SIGTERM to the group (server and its uvicorn workers), then SIGKILL to whatever is left of it."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.2 if sig == signal.SIGTERM else 0)
        proc.poll()

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
            try:
                with HTTP.open(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health within {SERVER_START_S} s:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield url, stop
    finally:
        stop()


@pytest.fixture
def restore_mlflow_uri():
    """Lightning's MLFlowLogger calls mlflow.set_tracking_uri, which also exports MLFLOW_TRACKING_URI: undo both,
    or later tests (and their subprocesses) would log to this test's stopped server."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    env, global_uri = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
    yield
    mlflow.set_tracking_uri(global_uri)
    if env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = env


def api(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with HTTP.open(request, timeout=30) as response:
        raw = response.read()
    return raw if path.startswith("/get-artifact") else json.loads(raw)


def browse(chromium: Path, tmp_path: Path, url: str, *action: str, window: str = "1400,1500") -> str:
    """One headless Chromium run on a page of the UI; returns stdout (the DOM for --dump-dom).

    --virtual-time-budget lets the React app fetch and render before the DOM is dumped or the picture taken
    (virtual time does not advance while requests are in flight). The host resolver maps every name away, so
    the browser can reach nothing but the loopback IP.
    """
    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    profile.mkdir()
    cmd = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--window-size={window}", "--hide-scrollbars",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
           "--virtual-time-budget=20000", *action, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout


def page_text(dom: str) -> str:
    """The visible text of a dumped DOM: no scripts or styles, tags dropped, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]*>", "", dom)))


def rendered(chromium: Path, tmp_path: Path, url: str, *needles: str) -> str:
    """The page's visible text once all `needles` are in it (a slow machine gets up to three renders)."""
    for _ in range(3):
        text = page_text(browse(chromium, tmp_path, url, "--dump-dom"))
        if all(needle in text for needle in needles):
            return text
    missing = [needle for needle in needles if needle not in text]
    raise AssertionError(f"{url} never rendered {missing}; its text:\n{text[:3000]}")


@pytest.mark.slow
def test_users_browse_the_training_run_in_the_mlflow_ui(chromium, mlflow_server, restore_mlflow_uri, tmp_path,
                                                     request):
    url = mlflow_server
    # 1. Train a tiny model, logging through the server (metrics by REST, artifacts uploaded through the proxy).
    #    `pytest --refresh-docs` trains the real default run instead (about 3 minutes), for the README's picture.
    if request.config.getoption("--refresh-docs"):
        default_run(tmp_path, url)
    else:
        texts = splits.split(TINY_TEXT * 3, conf_spec("corpus", source="file", path="x"))
        vocab.build_and_encode(texts, conf_spec("vocab", level="char"), False, tmp_path / "vocab")
        job = tiny_job(tmp_path / "vocab", tmp_path)
        job.tracking = conf_spec("tracking", uri=url)
        run_training(job)

    # 2. The REST API finds the run, its metrics and its artifacts.
    experiment = api(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=rnnlab")["experiment"]
    exp_id = experiment["experiment_id"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")  # stored by the server, not the client
    runs = api(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    assert len(runs) == 1
    info, data = runs[0]["info"], runs[0]["data"]
    run_id, run_name = info["run_id"], info["run_name"]
    assert info["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in data["metrics"]}
    assert {"val/loss", "grad/norm_pre_clip", "gtt/d000"} <= metrics.keys()

    def listing(path: str) -> list[str]:
        query = urllib.parse.urlencode({"run_id": run_id, "path": path})
        return [f["path"] for f in api(url, f"/api/2.0/mlflow/artifacts/list?{query}").get("files", [])]

    def artifact(path: str) -> bytes:
        return api(url, "/get-artifact?" + urllib.parse.urlencode({"path": path, "run_uuid": run_id}))

    samples = [p for p in listing("samples") if p.endswith(".txt")]
    assert samples, listing("samples")
    assert artifact(samples[-1]).decode("utf-8").strip()
    assert "plots/gradient_through_time.png" in listing("plots")
    png = artifact("plots/gradient_through_time.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert not (tmp_path / "mlruns").exists()  # nothing written client-side

    # 3. The experiment is a model-training one (its kind tag), and the link the README gives opens it on the
    # training view: its runs, not the GenAI overview. (MLflow 3.17.2's UI takes the view from its GenAI / Model
    # training switch, i.e. the link's `workflowType`, before the tag; it keeps the parameter while you navigate.)
    assert {"key": KIND_TAG, "value": TRAINING_KIND} in experiment["tags"]
    landing = rendered(chromium, tmp_path, f"{url}/#/experiments/{exp_id}{VIEW}", run_name, "1 matching run")
    assert "Model metrics" not in landing and "Token Usage" not in landing  # the run list, not the GenAI overview
    run_page = f"{url}/#/experiments/{exp_id}/runs/{run_id}{VIEW}"
    val_loss = repr(metrics["val/loss"])  # the UI prints the full value, as JavaScript does (same as Python's repr)
    run_text = rendered(chromium, tmp_path, run_page, run_name, "val/loss", "grad/norm_pre_clip", "gtt/d000")
    assert val_loss in run_text, f"val/loss = {val_loss} is not on the run page"
    assert run_id in run_text and f"Metrics ({len(metrics)})" in run_text
    charts_page = f"{url}/#/experiments/{exp_id}/runs/{run_id}/model-metrics{VIEW}"
    rendered(chromium, tmp_path, charts_page, "Model metrics", "grad(", "val(")  # its chart sections (live charts)

    # 4. A picture for the README, three pages of the run side by side: the gradient norm before and after
    # clipping, the training and validation loss (the run's own plots, as the UI shows them; its live charts load
    # too slowly for a dependable picture) and its last validation samples.
    screenshot = DOCS_SCREENSHOT if request.config.getoption("--refresh-docs") else tmp_path / "mlflow-ui.png"
    screenshot.unlink(missing_ok=True)
    artifacts = f"{url}/#/experiments/{exp_id}/runs/{run_id}/artifacts"
    pages = [f"{artifacts}/plots/{name}.png{VIEW}" for name in ("gradient_norm", "loss")] + \
        [f"{artifacts}/{samples[-1]}{VIEW}"]
    shots = [tmp_path / f"page{i}.png" for i in range(len(pages))]
    for page, shot in zip(pages, shots):
        browse(chromium, tmp_path, page, f"--screenshot={shot}", window="1200,1100")
    side_by_side(shots, screenshot)
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 50_000


def default_run(tmp_path: Path, url: str) -> None:
    """`dvc repro`'s stages with the default config (paths under tmp_path), tracked by the server at `url`."""
    from rnnlab.config import compose
    from rnnlab.stages import prepare, sample, train
    from rnnlab.stages import vocab as vocab_stage

    paths = [f"paths.{k}={tmp_path / 'data' / k}" for k in ("raw", "prepared", "vocab", "train", "samples", "eval", "state")]
    params = compose([*paths, f"tracking.uri={url}"], REPO / "conf")
    for stage in (prepare, vocab_stage, train, sample):
        stage.run(params)


VIEW = "?workflowType=machine_learning"  # the UI's Model training switch, as a link parameter


def side_by_side(shots: tuple[Path, ...], out: Path) -> None:
    """The screenshots next to each other, each without the UI's right-hand assistant panel (the last ~26 % of
    the window; it opens by default and has nothing of the run)."""
    from PIL import Image

    images = [Image.open(shot) for shot in shots]
    parts = [image.crop((0, 0, int(image.width * 0.74), image.height)) for image in images]
    joined = Image.new("RGB", (sum(p.width for p in parts), max(p.height for p in parts)), "white")
    x = 0
    for part in parts:
        joined.paste(part, (x, 0))
        x += part.width
    joined.save(out, optimize=True)
