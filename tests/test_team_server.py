"""End to end: a team's shared stores, on loopback. (docs/scaling-out.md.)

1. A team tracking server: `mlflow server` on PostgreSQL (runs, metrics) and S3 (artifacts, moto's S3 API),
   with proxied artifact access. An Optuna study run two trials at a time (its study in the same PostgreSQL)
   and a queued DVC experiment log into it with nothing but MLFLOW_TRACKING_URI (no S3 credentials, no S3
   endpoint); everything is read back through the MLflow API and found where it should live: runs in
   PostgreSQL's `runs` table, artifacts as S3 objects.
2. A DVC remote on S3: `dvc push` from one clone, `dvc pull` in another finds nothing to rerun, and
   `dvc exp push` / `dvc exp pull` carry an experiment through a git remote.

Services come from tests/services.py; a machine without PostgreSQL or moto skips, CI fails instead.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from pathlib import Path

import pytest

import services
from conftest import GIT, TINY, run, set_args

pytestmark = pytest.mark.slow  # end to end: real dvc, sweeps, servers

SMALL = [*TINY, "trainer.max_steps=10", "trainer.val_check_interval=5", "gradstats.every_n_steps=5"]
METRICS = {"val/loss", "test/ppl", "test/bpc", "grad/norm_pre_clip", "gtt/d000"}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with services.s3(tmp_path_factory.mktemp("s3")) as store:
        yield store


@pytest.fixture
def no_client_credentials(monkeypatch):
    """Clients run without S3 credentials or endpoint: the tracking server proxies every artifact."""
    for key in [k for k in os.environ if k.startswith("AWS_")] + ["MLFLOW_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def wait_for_queue(project: Path, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"the DVC queue did not finish within {timeout} s:\n{status}")


def check_run_artifacts(client, run_id: str, dst: Path) -> bytes:
    """The sample text and the gradient-through-time plot, downloaded through the server; returns the PNG."""
    text = Path(client.download_artifacts(run_id, "samples/samples.txt", str(dst))).read_text(encoding="utf-8")
    assert text.strip(), "empty samples"
    png = Path(client.download_artifacts(run_id, "plots/gradient_through_time.png", str(dst))).read_bytes()
    assert png.startswith(PNG) and len(png) > 1000
    return png


def study_and_queue(project: Path, url: str, study_db: str, timings: dict) -> str:
    """An Optuna study of 2 trials run 2 at a time (Hydra's joblib launcher), its study in PostgreSQL, then one
    queued DVC experiment (lstm), all logging to `url`; returns the DVC experiment's name."""
    env = {"MLFLOW_TRACKING_URI": url}
    start = time.perf_counter()
    run(["python", "pipeline/sweep.py", "-m", *SMALL, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweeper.storage={study_db}",
         "hydra.sweeper.study_name=team", "optim.lr=interval(0.001, 0.01)"], project, env=env)
    timings["study of 2 trials, 2 at a time"] = time.perf_counter() - start
    run(["python", "-m", "rnnlab.config", *SMALL], project)
    run([*GIT, "commit", "-qam", "tiny"], project)
    run(["dvc", "exp", "run", "--queue", *set_args(SMALL), "-S", "model=lstm"], project, env=env)
    start = time.perf_counter()
    run(["dvc", "queue", "start", "-j", "1"], project, env=env)
    status = wait_for_queue(project)
    timings["queued experiment"] = time.perf_counter() - start
    assert "Failed" not in status, status + run(["dvc", "queue", "logs", "-f"], project, check=False).stdout
    rows = csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--no-pager", "--csv"], project).stdout))
    return next(r["Experiment"] for r in rows if r["typ"].startswith("branch"))


@pytest.mark.usefixtures("no_client_credentials")
def test_a_team_tracks_a_parallel_study_and_a_queued_experiment_on_postgresql_and_s3(project, s3, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    bucket = s3.create_bucket("team-mlflow")
    start = time.perf_counter()
    with (services.postgres(tmp_path, more=("optuna",)) as pg,
          services.mlflow_server(tmp_path, pg.url, f"s3://{bucket}/mlflow", env=s3.env) as url):
        timings = {"PostgreSQL + mlflow server start": time.perf_counter() - start}
        study_db = pg.url.rsplit("/", 1)[0] + "/optuna"
        exp_name = study_and_queue(project, url, study_db, timings)

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("rnnlab")
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server stores artifacts
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if r.info.run_name.startswith("sweep ")]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert parents[0].data.tags.get("optuna.study") == "team"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert len(children) == 2
        queued = [r for r in runs if r.data.tags.get("dvc_exp_name") == exp_name]
        assert len(queued) == 1 and queued[0].data.tags["rnnlab.cell"] == "lstm"
        pngs = {}
        for r in children + queued:
            assert r.info.status == "FINISHED" and METRICS <= r.data.metrics.keys(), (r.info, r.data.metrics)
            pngs[r.info.run_id] = check_run_artifacts(client, r.info.run_id, tmp_path / r.info.run_id)

        keys = s3.keys(bucket, "mlflow/")
        for run_id, png in pngs.items():
            key = next(k for k in keys if k.endswith(f"/{run_id}/artifacts/plots/gradient_through_time.png"))
            assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == png
            assert any(k.endswith(f"/{run_id}/artifacts/samples/samples.txt") for k in keys)
        with pg.connect() as db, db.cursor() as cur:
            cur.execute("select run_uuid, status from runs")
            assert dict(cur.fetchall()) == {r.info.run_id: "FINISHED" for r in runs} and len(runs) == 4
        assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()  # nothing local

        study = optuna.load_study(study_name="team", storage=study_db)
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
        assert parents[0].data.metrics["best/val_loss"] == pytest.approx(study.best_value)
        assert not (project / "optuna.db").exists()
    print("\ntimings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def exp_rows(repo: Path) -> list[dict]:
    rows = csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--no-pager", "--csv"], repo).stdout))
    return [r for r in rows if r["typ"].startswith("branch")]


@pytest.mark.usefixtures("no_client_credentials")
def test_a_dvc_remote_on_s3_carries_outputs_and_experiments_to_a_clone(trained_project, s3, tmp_path):
    project = trained_project  # TINY, `dvc repro`, committed
    bucket = s3.create_bucket("team-dvc")
    env = {k: v for k, v in s3.env.items() if k.startswith("AWS_")}  # dvc-s3 reads AWS's usual variables
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/dvcstore"], project)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint], project)  # real S3: not needed
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-qm", "trained; DVC remote"], project)
    timings, start = {}, time.perf_counter()
    assert re.search(r"\d+ files pushed", run(["dvc", "push"], project, env=env).stdout)
    timings["dvc push"] = time.perf_counter() - start
    assert any(k.startswith("dvcstore/files/md5/") for k in s3.keys(bucket))

    # An experiment, pushed to the team's git remote (its outputs go to the DVC remote with it).
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], project)
    run(["git", "push", "-q", "origin", "--all"], project)
    # sample.temperature reruns sample and evaluate only (seconds): an experiment with outputs of its own
    run(["dvc", "exp", "run", *set_args(TINY), "-S", "sample.temperature=0.5"], project)
    (exp,) = [r["Experiment"] for r in exp_rows(project)]
    start = time.perf_counter()
    run(["dvc", "exp", "push", "origin", exp], project, env=env)
    timings["dvc exp push"] = time.perf_counter() - start

    # A teammate's clone: `dvc pull` brings every output, so nothing reruns.
    clone = tmp_path / "clone"
    start = time.perf_counter()
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    pulled = run(["dvc", "pull"], clone, env=env).stdout
    timings["git clone + dvc pull"] = time.perf_counter() - start
    assert (clone / "data" / "train" / "model" / "model.pt").stat().st_size > 0, pulled
    repro = run(["dvc", "repro"], clone).stdout
    for stage in ("prepare", "vocab", "train", "sample", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in repro, repro
    assert "Running stage" not in repro.replace("Running stage 'params'", ""), repro  # params: always checks conf/

    # ... and the experiment, listed on the git remote, pulled, and applied from the pulled cache.
    assert exp in run(["dvc", "exp", "list", "--name-only", "origin"], clone).stdout
    start = time.perf_counter()
    run(["dvc", "exp", "pull", "origin", exp], clone, env=env)
    timings["dvc exp pull"] = time.perf_counter() - start
    assert [(r["Experiment"], r["sample.temperature"]) for r in exp_rows(clone)] == [(exp, "0.5")]
    samples = json.loads((project / "data" / "samples" / "samples.json").read_text())  # the experiment's, here
    run(["dvc", "exp", "apply", exp], clone)
    assert json.loads((clone / "data" / "samples" / "samples.json").read_text()) == samples  # from the remote
    print("\ntimings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
