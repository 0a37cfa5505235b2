"""The Model Registry (rnnlab.registry): registering an already-trained model without training, and the
alias `champion` that moves only to a version at least as good on the same data.

One tiny model is trained once per module (the real training, so the rule reads what a training really
logs: `best/val_loss`, `corpus/*`, `vocab/*`, `vocab_hash`); the rule's other versions are runs made
from that run's params with chosen losses, registered in the same real SQLite store.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY, tiny_params
from rnnlab import registry


def overrides(tmp: Path, train: Path | None = None) -> list[str]:
    """tiny_params' overrides for a workspace in `tmp` (the model folder under `train` if given)."""
    paths = [f"paths.{k}={tmp / 'data' / k}" for k in ("raw", "prepared", "vocab", "train", "samples", "eval", "state")]
    if train is not None:
        paths[3] = f"paths.train={train}"
    return [*TINY, f"corpus.path={tmp / 'tiny.txt'}", *paths, f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}"]


pytestmark = pytest.mark.slow  # trains a model (Lightning)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workspace (params.yaml, data/, mlflow.db) with a tiny trained model and its MLflow run."""
    from rnnlab.config import write_params
    from rnnlab.stages import prepare, train, vocab

    tmp = tmp_path_factory.mktemp("registry")
    params = tiny_params(tmp)
    prepare.run(params)
    vocab.run(params)
    train.run(params)
    write_params(overrides(tmp), tmp / "params.yaml", REPO / "conf")
    return tmp


def cli(workspace: Path, *args: str, capsys, monkeypatch) -> tuple[int, str, str]:
    """`python -m rnnlab.registry -C workspace ...` in-process: (exit status, stdout, stderr)."""
    monkeypatch.chdir(Path.cwd())  # the command changes into the workspace; the test's folder comes back
    capsys.readouterr()
    try:
        registry.main(["-C", str(workspace), *args])
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def client_of(workspace: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")


def run_id_of(workspace: Path, train: str = "data/train") -> str:
    return json.loads((workspace / train / "model" / "meta.json").read_text())["mlflow_run_id"]


def test_register_adds_a_version_of_the_trained_model_without_training(trained, capsys, monkeypatch):
    import mlflow

    client, run_id = client_of(trained), run_id_of(trained)
    experiment = client.get_run(run_id).info.experiment_id
    runs, models = len(client.search_runs([experiment])), len(mlflow.search_logged_models([experiment], output_format="list"))
    start = time.perf_counter()
    code, out, err = cli(trained, "register", "tiny-reg", "--champion", capsys=capsys, monkeypatch=monkeypatch)
    print(f"register: {time.perf_counter() - start:.1f} s")
    assert code == 0, err
    assert "version 1 is the model in" in out and "alias champion → version 1" in out
    version = client.get_model_version_by_alias("tiny-reg", "champion")
    assert (str(version.version), version.run_id) == ("1", run_id)
    assert len(client.search_runs([experiment])) == runs  # no training, no new run
    assert len(mlflow.search_logged_models([experiment], output_format="list")) == models  # the run's own sampler
    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    answer = mlflow.pyfunc.load_model("models:/tiny-reg@champion").predict([{}])
    assert len(answer) == 3  # TINY: sample.num_samples=3

    code, out, _ = cli(trained, "register", "tiny-reg", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "is already version 1" in out


def test_a_run_without_a_sampler_gets_one_and_the_errors_are_one_line(trained, tmp_path, capsys, monkeypatch):
    from mlflow.entities import Param

    from rnnlab.config import write_params

    client = client_of(trained)
    base = client.get_run(run_id_of(trained))
    bare = client.create_run(base.info.experiment_id).info.run_id  # a run without a sampler (nor a val loss)
    client.log_batch(bare, params=[Param(k, v) for k, v in base.data.params.items()])
    client.set_terminated(bare)
    shutil.copytree(trained / "data" / "train" / "model", tmp_path / "train" / "model")
    meta = json.loads((tmp_path / "train" / "model" / "meta.json").read_text())
    (tmp_path / "train" / "model" / "meta.json").write_text(json.dumps(meta | {"mlflow_run_id": bare}))
    write_params(overrides(trained, tmp_path / "train"), tmp_path / "params.yaml", REPO / "conf")
    if client.search_registered_models("name = 'tiny-two'"):
        client.delete_registered_model("tiny-two")
    client.create_registered_model("tiny-two")
    first = client.create_model_version("tiny-two", f"runs:/{base.info.run_id}/sampler", base.info.run_id).version
    client.set_registered_model_alias("tiny-two", "champion", first)

    code, out, err = cli(tmp_path, "register", "tiny-two", "--champion", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    assert [str(v.version) for v in client.search_model_versions(f"run_id = '{bare}'")] == ["2"]
    assert "alias champion stays on version 1: version 2 has no validation loss (best/val_loss)" in out
    assert str(client.get_model_version_by_alias("tiny-two", "champion").version) == "1"

    client.delete_run(bare)
    code, _, err = cli(tmp_path, "register", "tiny-two", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and err.count("\n") == 1 and f"error: the MLflow run {bare} of the model in" in err
    assert "is gone from sqlite:///" in err

    code, _, err = cli(trained, "register", "team/model", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and err == ("error: 'team/model' is not a registered model name MLflow accepts; give a name "
                                 "without '/' or ':' that is not '.' and does not start with '..' (e.g. "
                                 "shakespeare-gru)\n")

    shutil.rmtree(tmp_path / "train" / "model")
    code, _, err = cli(tmp_path, "register", "tiny-two", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and err == f"error: no trained model in {tmp_path / 'train' / 'model'}; train one first: dvc repro train\n"

    code, _, err = cli(trained, "champion", "tiny-two", "9", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and err.startswith("error: no version '9' of a registered model 'tiny-two' in sqlite:///")


def test_champion_moves_only_to_a_version_at_least_as_good_on_the_same_data(trained, capsys):
    from mlflow.entities import Metric, Param

    client = client_of(trained)
    base = client.get_run(run_id_of(trained))
    assert registry.LOSS in base.data.metrics and base.data.params.get("vocab_hash")  # what a training logs
    if client.search_registered_models("name = 'rule'"):
        client.delete_registered_model("rule")
    client.create_registered_model("rule")

    def version(loss: float | None, **changed: str) -> str:
        """A version whose run has the trained run's params (with `changed`) and validation loss `loss`."""
        run = client.create_run(base.info.experiment_id).info.run_id
        metrics = [Metric(registry.LOSS, loss, 0, 0)] if loss is not None else []
        client.log_batch(run, params=[Param(k, changed.get(k.replace("/", "_"), v)) for k, v in base.data.params.items()],
                         metrics=metrics)
        client.set_terminated(run)
        return str(client.create_model_version("rule", f"runs:/{run}/sampler", run).version)

    def champion() -> str:
        return str(client.get_model_version_by_alias("rule", "champion").version)

    def promote(v: str, **kwargs) -> tuple[bool, str]:
        capsys.readouterr()
        moved = registry.promote(client, "rule", v, **kwargs)
        return moved, capsys.readouterr().out

    good = version(3.08)
    assert promote(good)[0] and champion() == good  # no champion yet: the first version is it
    moved, out = promote(version(4.16))  # the case: a second study's worse model
    assert not moved and champion() == good
    assert out == (f"registered model 'rule': alias champion stays on version {good}: version {int(good) + 1}'s "
                   "validation loss 4.1600 is worse than 3.0800 (--force moves it anyway)\n")
    moved, out = promote(version(1.0, vocab_hash="0123456789abcdef"))
    assert not moved and "was trained on other data (vocab_hash: 0123456789abcdef vs " in out
    moved, out = promote(version(1.0, corpus_max_chars="1000"))
    assert not moved and "(corpus/max_chars: 1000 vs None)" in out
    moved, out = promote(version(None))
    assert not moved and "has no validation loss" in out and champion() == good

    same = version(3.08)
    assert promote(same)[0] and champion() == same  # at least as good: equal moves
    worse = version(5.0)
    assert promote(worse, force=True)[0] and champion() == worse  # --force: on purpose
    better = version(2.5)
    better_run = client.get_model_version("rule", better).run_id
    assert registry.promote_run(client, "rule", better_run) and champion() == better  # what a study calls

    client.delete_run(better_run)
    moved, out = promote(version(1.0))
    assert not moved and f"the champion's run {better_run} is gone from the store" in out
