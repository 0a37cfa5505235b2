"""The MLflow Model Registry: register an already-trained model, and move the alias `champion` only forward.

    python -m rnnlab.registry register NAME [--champion] [--force] [-C WORKSPACE]
    python -m rnnlab.registry champion NAME VERSION [--force] [-C WORKSPACE]

`register` adds the workspace's trained model (`paths.train`/model with the vocabulary `paths.vocab`, as
params.yaml names them; its MLflow run is the one in model/meta.json) as a new version of NAME, in
seconds and without training: the run's logged sampler model (rnnlab.sampler_model, `sampler/`) when it
has one, else the sampler is logged to the run first. The store is params.yaml's `tracking` (as for
`dvc repro`). `--champion` then moves the alias to it under the rule below.

The rule (`promote`, also what an Optuna study calls): `champion` moves to a version only when that
version is at least as good as the current champion on the recorded validation loss (its run's
`best/val_loss`, the saved model's validation in nats per token) and was trained on the same corpus
and vocabulary (the runs' `corpus/*` and `vocab/*` params and the vocabulary's hash), since losses on
different validation data do not compare. Otherwise the alias stays and one line says why; `--force`
moves it anyway (e.g. to roll back on purpose).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import replace
from pathlib import Path

from rnnlab.errors import UserError, entry_point

ALIAS = "champion"
LOSS = "best/val_loss"  # rnnlab.outputs.log: the saved (best) model's validation loss
SAME_DATA = ("corpus/", "vocab/", "vocab_hash")  # param keys (prefixes) that must be equal to compare losses
IGNORED = ("corpus/mirror",)  # where a file was found, not what it holds


# --- the champion rule -------------------------------------------------------------------------------------


def promote(client, name: str, version: str, force: bool = False) -> bool:
    """Move NAME's alias `champion` to `version` if the rule allows (or `force`); print one line either way."""
    current = champion_version(client, name)
    if current is not None and str(current.version) != str(version) and not force:
        why = not_better(client, client.get_model_version(name, str(version)), current)
        if why:
            print(f"registered model {name!r}: alias {ALIAS} stays on version {current.version}: {why} "
                  f"(--force moves it anyway)", flush=True)
            return False
    client.set_registered_model_alias(name, ALIAS, str(version))
    print(f"registered model {name!r}: alias {ALIAS} → version {version}", flush=True)
    return True


def promote_run(client, name: str, run_id: str | None) -> bool:
    """`promote` the version of NAME that the run `run_id` logged (an Optuna study's best trial)."""
    versions = client.search_model_versions(f"run_id = '{run_id}'") if run_id else []
    mine = [v for v in versions if v.name == name]
    if not mine:
        print(f"no version of the registered model {name!r} from the best trial's run; alias not set", flush=True)
        return False
    return promote(client, name, str(max(mine, key=lambda v: int(v.version)).version))


def champion_version(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def not_better(client, candidate, current) -> str | None:
    """Why `candidate` may not replace `current` as champion, or None."""
    new, old = run_of(client, candidate), run_of(client, current)
    if old is None:
        return f"the champion's run {current.run_id} is gone from the store, so nothing compares with it"
    if new is None:
        return f"version {candidate.version}'s run {candidate.run_id} is gone from the store"
    differ = sorted(k for k in set(data_params(new)) | set(data_params(old))
                    if data_params(new).get(k) != data_params(old).get(k))
    if differ:
        key = differ[0]
        return (f"version {candidate.version} was trained on other data ({key}: {data_params(new).get(key)} vs "
                f"{data_params(old).get(key)}), so its validation loss does not compare")
    new_loss, old_loss = new.data.metrics.get(LOSS), old.data.metrics.get(LOSS)
    if new_loss is None or not math.isfinite(new_loss):
        return f"version {candidate.version} has no validation loss ({LOSS}) to compare"
    if old_loss is not None and math.isfinite(old_loss) and new_loss > old_loss:
        return f"version {candidate.version}'s validation loss {new_loss:.4f} is worse than {old_loss:.4f}"
    return None


def run_of(client, version):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(version.run_id) if version.run_id else None
    except MlflowException:
        return None
    return run if run is not None and run.info.lifecycle_stage == "active" else None


def data_params(run) -> dict:
    return {k: v for k, v in run.data.params.items() if k.startswith(SAME_DATA) and k not in IGNORED}


# --- registering a trained model ---------------------------------------------------------------------------


def register(params, name: str, champion: bool = False, force: bool = False) -> str:
    """Register the trained model of `params`' paths as a new version of `name`; returns the version."""
    from mlflow.tracking import MlflowClient

    from rnnlab import tracking

    try:
        replace(params.tracking, register_model=name)  # the name, checked as tracking.register_model is
    except UserError:
        raise UserError(f"{name!r} is not a registered model name MLflow accepts; give a name without '/' or ':' "
                        "that is not '.' and does not start with '..' (e.g. shakespeare-gru)") from None
    model_dir, vocab_file, run_id = trained(params)
    uri = tracking.tracking_uri(params.tracking)
    tracking.check_store(uri)
    with tracking.store_errors(uri):
        client = MlflowClient(uri)
        if not tracking.run_exists(params.tracking, run_id):
            raise UserError(f"the MLflow run {run_id} of the model in {model_dir} is gone from {uri}; point "
                            "tracking.uri (or MLFLOW_TRACKING_URI) at the store it was logged to, or retrain: "
                            "dvc repro train")
        version = new_version(client, uri, params, name, run_id, model_dir, vocab_file)
        print(f"registered model {name!r}: version {version} is the model in {model_dir} (run {run_id}): "
              f"models:/{name}/{version}", flush=True)
        if champion:
            promote(client, name, version, force)
    return version


def trained(params) -> tuple[Path, Path, str]:
    """The trained model's folder, its vocabulary file and its MLflow run id; checked to belong together."""
    from rnnlab import trained_model
    from rnnlab.vocab import VocabDir

    model_dir = Path(params.paths.train) / "model"
    meta_file = model_dir / trained_model.META_FILE
    if not meta_file.exists():
        raise UserError(f"no trained model in {model_dir}; train one first: dvc repro train")
    vocab_dir = VocabDir(params.paths.vocab)
    trained_model.load(model_dir, vocab_dir.vocab())  # one line if it is broken or not this vocabulary's
    run_id = json.loads(meta_file.read_text(encoding="utf-8")).get("mlflow_run_id")
    if not run_id:
        raise UserError(f"the model in {model_dir} has no MLflow run (meta.json: mlflow_run_id); retrain it with "
                        "tracking on: dvc repro train")
    return model_dir, vocab_dir.vocab_file, run_id


def new_version(client, uri: str, params, name: str, run_id: str, model_dir: Path, vocab_file: Path) -> str:
    """NAME's version of the run's logged sampler: the existing one, a new one from the logged sampler, or
    a new one logged now if the run has none (or only one from before the sampler checked its requests)."""
    import mlflow

    from rnnlab import sampler_model

    mlflow.set_tracking_uri(uri)
    mine = [v for v in client.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
    if mine:
        version = str(max(mine, key=lambda v: int(v.version)).version)
        print(f"registered model {name!r}: run {run_id} is already version {version}", flush=True)
        return version
    logged = current_sampler(client, run_id)
    if logged is not None:
        return str(mlflow.register_model(f"models:/{logged.model_id}", name).version)
    try:
        return sampler_model.log(uri, run_id, model_dir, vocab_file, params.sample, name)
    except BaseException:  # mlflow.start_run marked the finished training's run FAILED: it is not
        client.set_terminated(run_id, "FINISHED")
        raise


def current_sampler(client, run_id: str):
    """The run's newest logged sampler model, unless it has an MLflow input schema: one logged before the
    sampler checked its requests itself (MLflow's schema drops unknown columns silently)."""
    import mlflow

    from rnnlab import sampler_model

    experiment = client.get_run(run_id).info.experiment_id
    logged = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}' AND "
                                                       f"name = '{sampler_model.ARTIFACT_PATH}'")
    if not logged:
        return None
    newest = max(logged, key=lambda m: m.creation_timestamp)
    signature = mlflow.models.get_model_info(f"models:/{newest.model_id}").signature
    return newest if signature is None or signature.inputs is None else None


# --- the command -------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="python -m rnnlab.registry", description=__doc__.split("\n\n")[0])
    parse.add_argument("-C", "--workspace", default=".", help="the project folder with params.yaml (default: .)")
    sub = parse.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register the trained model as a new version of NAME")
    reg.add_argument("name")
    reg.add_argument("--champion", action="store_true", help="then move the alias champion to it (the rule)")
    reg.add_argument("--force", action="store_true", help="move champion even to a worse or incomparable version")
    cha = sub.add_parser("champion", help="move NAME's alias champion to VERSION (the rule)")
    cha.add_argument("name")
    cha.add_argument("version")
    cha.add_argument("--force", action="store_true", help="move it even to a worse or incomparable version")
    return parse


def main(argv: list[str] | None = None) -> None:
    """The command: one line and exit 2 for a mistake; a signal exits 128 + its number (a run whose sampler
    was being logged is left FINISHED, as its training left it)."""
    from rnnlab import runtime

    args = parser().parse_args(argv)
    runtime.catch_signals()
    entry_point(lambda: run(args))()


def run(args) -> None:
    from rnnlab.params import load

    if not Path(args.workspace).is_dir():
        raise UserError(f"--workspace {args.workspace}: no such folder; give the project folder (with params.yaml)")
    os.chdir(args.workspace)  # params.yaml's relative paths and the default store are the workspace's
    params = load()
    if args.command == "register":
        register(params, args.name, args.champion, args.force)
    else:
        choose(params, args.name, args.version, args.force)


def choose(params, name: str, version: str, force: bool) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from rnnlab import tracking

    uri = tracking.tracking_uri(params.tracking)
    tracking.check_store(uri)
    client = MlflowClient(uri)
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise UserError(f"no version {version!r} of a registered model {name!r} in {uri}; list them in the MLflow "
                        "UI (Models) or register one: python -m rnnlab.registry register NAME") from None
    with tracking.store_errors(uri):
        promote(client, name, version, force)


if __name__ == "__main__":
    main()
