"""The trained model as an MLflow Model (rnnlab.sampler_model): logged and registered by `dvc repro`, loaded
with mlflow.pyfunc in a process outside the repository, served by `mlflow models serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY, run
from rnnlab import sampler_model
from services import free_port, http_ok, start, stop, wait_until

NAME = "tiny-sampler"

LOAD = textwrap.dedent("""
    import json, sys
    import mlflow, pandas as pd
    mlflow.set_tracking_uri(sys.argv[1])
    model = mlflow.pyfunc.load_model(sys.argv[2])
    out = model.predict(pd.DataFrame([json.loads(sys.argv[3])]))
    print(json.dumps(out.to_dict("records")))
""")


def test_a_row_takes_the_models_defaults_for_what_it_leaves_out():
    import numpy as np

    assert sampler_model.given({"prime": "the", "seed": np.int64(3), "top_k": float("nan"), "top_p": None}) == \
        {"prime": "the", "seed": 3}
    assert sampler_model.given({"num_samples": 2.0, "top_k": 0, "temperature": np.float64(0.5)}) == \
        {"num_samples": 2, "top_k": None, "temperature": 0.5}
    assert type(sampler_model.given({"seed": np.int64(3)})["seed"]) is int


@pytest.mark.parametrize("name", ["", " ", "team/model", "models:/x"])
def test_a_registered_model_name_mlflow_would_refuse_is_one_line(name):
    from conftest import conf_spec
    from rnnlab.errors import UserError

    with pytest.raises(UserError, match="is not a model name"):
        conf_spec("tracking", register_model=name)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab-_. /:\\\t"), max_size=6) | st.text(max_size=8))
def test_the_names_refused_are_exactly_those_mlflow_refuses(name):
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    from conftest import conf_spec
    from rnnlab.errors import UserError

    try:
        _validate_model_name(name)
        mlflow_ok = True
    except MlflowException:
        mlflow_ok = False
    try:
        conf_spec("tracking", register_model=name)
        ours_ok = True
    except UserError:
        ours_ok = False
    assert ours_ok == mlflow_ok, name


@pytest.mark.slow
def test_dvc_repro_logs_and_registers_a_sampler_that_loads_and_serves_outside_the_repository(trained_project,
                                                                                              tmp_path):
    project = trained_project  # TINY trained: with a registry name `dvc repro` runs the register stage alone
    run(["python", "-m", "rnnlab.config", *TINY, f"tracking.register_model={NAME}"], project)
    out = run(["dvc", "repro"], project).stdout
    assert "Running stage 'register'" in out and "Running stage 'train'" not in out, out
    uri = f"sqlite:///{project / 'mlflow.db'}"
    meta = json.loads((project / "data" / "train" / "model" / "meta.json").read_text())
    spec = yaml.safe_load((project / "params.yaml").read_text())["sample"]
    stage = json.loads((project / "data" / "samples" / "samples.json").read_text())["samples"]

    elsewhere = tmp_path / "elsewhere"  # not the repository: only the installed rnnlab and the store
    elsewhere.mkdir()

    def load_and_predict(model_uri: str, row: dict) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
        return subprocess.run([sys.executable, "-c", LOAD, uri, model_uri, json.dumps(row)], cwd=elsewhere,
                              env=env, capture_output=True, text=True)

    # The sample stage's settings give the sample stage's texts, through the registered version.
    row = {k: spec[k] for k in sampler_model.INPUTS if spec[k] is not None}
    proc = load_and_predict(f"models:/{NAME}/1", row)
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [t["text"] for t in texts] == [s["text"] for s in stage]
    assert [t["stopped"] for t in texts] == [s["stopped"] for s in stage]
    assert len(texts) == spec["num_samples"] and {t["row"] for t in texts} == {0}

    # The run's model view: the logged model with its signature and input example.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    version = client.get_model_version(NAME, "1")
    assert version.run_id == meta["mlflow_run_id"]
    model_dir = Path(mlflow_download(f"models:/{NAME}/1", tmp_path / "downloaded", uri))
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    assert mlmodel["signature"].get("inputs") is None  # the model checks its input itself (sampler_model)
    assert mlmodel["metadata"]["inputs"] == sampler_model.input_columns()
    assert [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])] == list(sampler_model.OUTPUTS)
    assert (model_dir / mlmodel["saved_input_example_info"]["artifact_path"]).exists()

    # A vocabulary that is not the model's: refused with the stages' one-line message.
    from rnnlab.vocab import Vocab

    vocab_file = next((model_dir / "artifacts").glob("vocab*.json"))
    vocab = Vocab.load(vocab_file)
    Vocab(vocab.level, vocab.tokens + ["zzz"], vocab.lowercase, vocab.tokenizer, vocab.newline_is_eos).save(vocab_file)
    bad = load_and_predict(str(model_dir), {"seed": 0})
    assert bad.returncode != 0
    assert "error" not in bad.stdout and "was trained with vocabulary" in bad.stderr.strip().splitlines()[-1]

    # Served: POST /invocations answers with samples, the same as the loaded model's for the same row.
    client.set_registered_model_alias(NAME, "champion", "1")
    port, log = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = start(["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
                    "-h", "127.0.0.1", "-p", str(port)], log, env=env, cwd=elsewhere)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), server, log, "mlflow models serve", 180)
        ask = {"prime": spec["prime"], "seed": 7, "num_samples": 2, "max_length": 30}
        status, body = invoke(port, [ask])
        assert status == 200, body
        served = body["predictions"]
        # Refused before any work: HTTP 400, rnnlab's one line as the message, no stack trace or file paths.
        for row, says in [({"num_samples": 300000, "max_length": 5}, "over the limit of 1,000 per request"),
                          ({"max_length": 400000}, "tokens (num_samples × (prime tokens + max_length)"),
                          ({"temperature": 0}, "temperature=0 must be above 0"),
                          ({"top_p": 2}, "top_p=2 must be in (0, 1]"),
                          ({"temprature": 0.5}, "unknown column 'temprature' (did you mean 'temperature'?)")]:
            began = time.perf_counter()
            status, body = invoke(port, [row])
            assert time.perf_counter() - began < 10, row
            assert status == 400 and set(body) == {"error_code", "message"}, (row, body)
            assert says in body["message"] and "\n" not in body["message"], (row, body)
            assert not any(s in json.dumps(body) for s in ("Traceback", ".py", "stack_trace")), body
    finally:
        stop(server)
    assert server.poll() is not None
    local = load_and_predict(f"models:/{NAME}@champion", ask)
    assert [s["text"] for s in served] == [t["text"] for t in json.loads(local.stdout.strip().splitlines()[-1])]
    assert len(served) == 2 and all(s["stopped"] in ("eos", "max_length") for s in served)


def invoke(port: int, rows: list[dict]) -> tuple[int, dict]:
    """POST /invocations with `rows` as dataframe_records: (HTTP status, JSON body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps({"dataframe_records": rows}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def mlflow_download(model_uri: str, dst: Path, uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    dst.mkdir(parents=True)
    return mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst))
