"""The served sampler model (rnnlab.sampler_model) against generated request payloads: valid → rows;
invalid → HTTP 400 with rnnlab's one line as the message, no stack trace, and no sampling done.

Each payload goes through MLflow's own scoring path in-process (`mlflow.pyfunc.scoring_server.invocations`:
JSON parsing, the pyfunc's predict) and the answer is built as `mlflow models serve` builds it
(`respond`), so that the status and body are the server's; the model is logged and registered once
per module (an untrained tiny model: what is checked is the request, not the text).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time

import pytest

from conftest import TINY_TEXT, conf_spec
from rnnlab import sampler_model

SEED = int(os.environ.get("RNNLAB_FAULT_SEED", "20261206"))
EXAMPLES = 240
DEFAULTS = {"num_samples": 3, "max_length": 12}  # the model's sample: settings (a row's missing columns)


@pytest.fixture(scope="module")
def served(tmp_path_factory, migrated_mlflow_db):
    """(the loaded pyfunc, a counter of sampling calls): an untrained tiny char model, logged to a run and
    registered as version 1 of 'faults', loaded through the registry."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from rnnlab import sampling, splits, trained_model, vocab
    from rnnlab.model import RNNLM

    tmp = tmp_path_factory.mktemp("served")
    texts = splits.split(TINY_TEXT * 3, conf_spec("corpus", source="file", path="x"))
    vocab.build_and_encode(texts, conf_spec("vocab", level="char"), False, tmp / "vocab")
    words = vocab.VocabDir(tmp / "vocab").vocab()
    shutil.copy(migrated_mlflow_db, tmp / "mlflow.db")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("faults")).info.run_id
    model = RNNLM(len(words), conf_spec("model", embedding_size=8, hidden_size=16))
    trained_model.save(tmp / "model", model, words, {"mlflow_run_id": run_id})
    spec = conf_spec("sample", prime="", unk="reject", top_k=None, top_p=None, greedy=False, **DEFAULTS)
    version = sampler_model.log(uri, run_id, tmp / "model", tmp / "vocab" / "vocab.json", spec, "faults")
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model(f"models:/faults/{version}")
    calls = []
    real = sampling.sample
    sampling.sample = lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs)  # predict imports it late
    yield loaded, calls
    sampling.sample = real


def respond(model, payload) -> tuple[int, dict]:
    """What `mlflow models serve` answers to POST /invocations with `payload` as JSON: (status, body)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    data = json.dumps(payload).encode()  # NaN and Infinity as JSON's common extension, as clients send them
    try:
        answer = scoring_server.invocations(data, "application/json", model, model.metadata.get_input_schema())
    except MlflowException as err:  # scoring_server._async_catch_mlflow_exception
        return err.get_http_status_code(), json.loads(err.serialize_as_json())
    return answer.status, json.loads(answer.response)


def refused(status: int, body: dict) -> str:
    """The contract of a refusal: 400, one line of rnnlab's, nothing else in the body."""
    assert status == 400, body
    assert set(body) == {"error_code", "message"}, body  # no stack_trace
    message = body["message"]
    assert "\n" not in message and "Traceback" not in message and ".py" not in message, message
    assert not message.startswith("Failed to predict"), message
    return message


# --- the cases, one by one -------------------------------------------------------------------------


@pytest.mark.parametrize("row, says", [
    ({"num_samples": 300000, "max_length": 5}, "over the limit of 1,000 per request (RNNLAB_SERVE_MAX_SAMPLES)"),
    ({"max_length": 400000}, "tokens (num_samples × (prime tokens + max_length), summed over rows), over the limit"),
    ({"num_samples": 2**53}, "9,007,199,254,740,992 samples, over the limit"),
    ({"temperature": 0}, "temperature=0 must be above 0; for argmax decoding set greedy=true"),
    ({"top_p": 2}, "top_p=2 must be in (0, 1]; use 0 to keep every token"),
    ({"prime": "the €"}, "prime has characters not in the vocabulary: '€'; remove them or set unk=allow"),
    ({"temprature": 0.5}, "unknown column 'temprature' (did you mean 'temperature'?)"),
    ({"num_samples": 2.5}, "num_samples=2.5: expected an integer"),
    ({"seed": "3"}, "seed='3': expected an integer"),
    ({"num_samples": -1}, "num_samples=-1 must be at least 1"),
    ({"temperature": float("inf")}, "temperature=inf: expected a finite number"),
])
def test_each_refusal_is_one_line_of_the_400_kind_before_any_work(served, row, says):
    model, calls = served
    before, start = len(calls), time.perf_counter()
    message = refused(*respond(model, {"dataframe_records": [row]}))
    assert says in message
    assert len(calls) == before and time.perf_counter() - start < 2


def test_an_empty_record_draws_the_models_defaults_and_whole_floats_are_integers(served):
    model, _ = served
    status, body = respond(model, {"dataframe_records": [{}, {"num_samples": 2.0, "max_length": 3.0}]})
    assert status == 200, body
    rows = body["predictions"]
    assert [r["row"] for r in rows] == [0] * DEFAULTS["num_samples"] + [1, 1]
    assert max(r["length"] for r in rows if r["row"] == 0) <= DEFAULTS["max_length"]
    assert max(r["length"] for r in rows if r["row"] == 1) <= 3


def test_a_huge_table_is_refused_by_its_size_at_once(served):
    model, calls = served
    before, start = len(calls), time.perf_counter()
    message = refused(*respond(model, {"dataframe_records": [{}] * 300_000}))
    assert message.startswith("300,000 rows is over the limit of 100 rows per request (RNNLAB_SERVE_MAX_ROWS)")
    assert len(calls) == before and time.perf_counter() - start < 10  # the JSON parse is MLflow's: 300k rows


def test_the_limits_come_from_the_environment_and_a_bad_value_is_one_line():
    from rnnlab.errors import UserError

    assert sampler_model.Limits.from_env({}) == sampler_model.Limits(**sampler_model.LIMITS)
    assert sampler_model.Limits.from_env({"RNNLAB_SERVE_MAX_TOKENS": "50"}).tokens == 50
    with pytest.raises(UserError, match=r"RNNLAB_SERVE_MAX_ROWS='-3': give a whole number >= 1"):
        sampler_model.Limits.from_env({"RNNLAB_SERVE_MAX_ROWS": "-3"})


def test_the_memory_and_compute_estimates_refuse_what_the_token_limit_lets_through(served):
    model, calls = served
    impl, before = model.unwrap_python_model(), len(calls)
    saved = impl.limits
    try:
        impl.limits = sampler_model.Limits(rows=100, samples=10**6, tokens=10**9, memory_mb=1, gflop=10**6)
        assert "MB with this model's" in refused(*respond(model, {"dataframe_records": [{"num_samples": 20000}]}))
        impl.limits = sampler_model.Limits(rows=100, samples=10**6, tokens=10**9, memory_mb=10**6, gflop=1)
        assert "GFLOP with this model" in refused(*respond(model, {"dataframe_records": [{"num_samples": 20000}]}))
    finally:
        impl.limits = saved
    assert len(calls) == before


# --- generated payloads -------------------------------------------------------------------------------------

GOOD = {  # values a row may give (None: left out; NaN: missing, as pandas fills a column absent from a row)
    "prime": ["", "the", "the cat, ", None],
    "temperature": [0.5, 1, 2.0, 1e-3, float("nan"), None],
    "top_k": [0, 1, 5, 2.0, None],
    "top_p": [0, 0.5, 1, 1.0, None],
    "greedy": [True, False, None],
    "num_samples": [1, 2, 2.0, 3, None],
    "max_length": [1, 5, 12.0, None],
    "seed": [0, 7, 2**53, None],
    "unk": ["allow", "reject", None],
}
BAD = {  # one of these makes the request invalid, whatever else it holds
    "prime": [5, ["the"], "x" * 100_001],
    "temperature": [0, -1, float("inf"), "hot", 1e39, True],
    "top_k": [-1, 2.5, "k"],
    "top_p": [2, -0.5, 1.0001, "a", float("-inf")],
    "greedy": [1, "yes"],
    "num_samples": [0, -1, 2.5, "3", True, 2**53, 300_000, 10**30, [1]],
    "max_length": [0, -5, 1.5, "x", 400_000, 2**53],
    "seed": [-1, 2**64, 2.5, "3"],
    "unk": ["maybe", 3],
}
UNKNOWN = ["temprature", "num_sample", "", "Prime", "top-k"]


def make_request(rng: random.Random) -> tuple[list[dict], str | None]:
    """(rows, None) for a valid request, or (rows, what is wrong)."""
    rows = [{k: rng.choice(v) for k, v in GOOD.items() if rng.random() < 0.5} for _ in range(rng.randint(0, 3))]
    rows = [{k: v for k, v in row.items() if v is not None} for row in rows]
    fault = rng.choice([None, None, "value", "column", "rows", "size", "prime"])
    if fault and not rows:
        rows = [{}]
    target = rng.choice(rows) if rows else None
    if fault == "value":
        key = rng.choice(list(BAD))
        target[key] = rng.choice(BAD[key])
        return rows, f"{key}={target[key]!r}"
    if fault == "column":
        target[rng.choice(UNKNOWN)] = rng.choice([1, "a", None])
        return rows, "an unknown column"
    if fault == "rows":
        return [dict(rows[0]) for _ in range(101)], "101 rows"
    if fault == "size":
        target.update(num_samples=rng.choice([600, 1001]), max_length=200, greedy=False)
        return rows, "too many samples or tokens"
    if fault == "prime":
        target.update(prime=rng.choice(["€", "the ü", "\x00"]), unk="reject")
        return rows, "a prime outside the vocabulary"
    return rows, None


def expected_samples(rows: list[dict]) -> list[int]:
    """The `row` column of a valid request's answer: each row's samples (greedy: one), in order."""
    def value(row, key, default):
        v = row.get(key)
        return default if v is None or isinstance(v, float) and math.isnan(v) else v

    return [i for i, row in enumerate(rows)
            for _ in range(1 if value(row, "greedy", False) else int(value(row, "num_samples", DEFAULTS["num_samples"])))]


def test_generated_requests_keep_the_contract(served):
    model, calls = served
    rng = random.Random(SEED)
    print(f"seed {SEED} (RNNLAB_FAULT_SEED), {EXAMPLES} examples")
    counts = {"valid": 0, "refused": 0}
    for n in range(EXAMPLES):
        rows, fault = make_request(rng)
        before, start = len(calls), time.perf_counter()
        status, body = respond(model, {"dataframe_records": rows})
        where = f"example {n} (seed {SEED}): {fault or 'valid'}: {json.dumps(rows)[:300]}"
        if fault is None:
            assert status == 200, f"{where} → {body}"
            answer = body["predictions"]
            assert [r["row"] for r in answer] == expected_samples(rows), where
            assert all(r["stopped"] in ("eos", "max_length") for r in answer), where
            counts["valid"] += 1
        else:
            refused(status, body)
            assert len(calls) == before, f"{where}: sampled before refusing"
            assert time.perf_counter() - start < 5, where
            counts["refused"] += 1
    print(f"{counts['valid']} valid, {counts['refused']} refused")
    assert min(counts.values()) > EXAMPLES // 4
