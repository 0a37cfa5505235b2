"""Stage `train`: train the language model; writes `paths.train` (model, checkpoints, metrics, plots).

DVC reruns it when a key its outputs depend on changes (`READS`, its column of rnnlab.stages.reruns, which
dvc.yaml lists under the stage's `params:`); their values also decide whether an interrupted run may resume.
MLflow gets the whole configuration, also what the training does not depend on (tracking names, sample.*).
"""

from __future__ import annotations

from rnnlab import preflight
from rnnlab.errors import UserError
from rnnlab.stages.reruns import reads

READS = reads("train")
# Outputs DVC does not cache (dvc.yaml `cache: false`): only git brings them back after a failed run
UNCACHED = ("{paths.train}/metrics.json", "{paths.train}/loss.csv", "{paths.train}/val.csv",
            "{paths.train}/grad_norm.csv", "{paths.train}/gtt.csv")


def run(params, extra_callbacks: list = ()) -> dict:
    """Train; `extra_callbacks` (Lightning callbacks) join the config's, e.g. a sweep trial's pruning."""
    preflight.devices(params)  # also checked by the params stage; here too for `python pipeline/train.py`
    preflight.topology(params)
    from rnnlab import training  # heavy imports (torch, lightning, mlflow) after the cheap checks

    metrics = training.train(params, READS, [*user_callbacks(params.callbacks), *extra_callbacks])
    if not metrics:  # a further process of a data-parallel (DDP) run: process 0 reports
        return metrics
    if metrics.get("val_loss") is None:  # trainer.limit_val_batches=0
        validation = "no validation (trainer.limit_val_batches=0), so the model is the last step's"
    else:
        validation = (f"best validation {metrics['val_loss']} nats/token (ppl {metrics.get('val_ppl')}, "
                      f"{metrics.get('val_bpc')} bits/char) at step {metrics.get('best_step')}, "
                      f"last {metrics.get('last_val_loss')}")
    print(f"trained {metrics['step']} steps: {validation}; clip fraction {metrics.get('clip_fraction')}; "
          f"model, metrics and plots in {params.paths.train}")
    return metrics


def user_callbacks(entries: list) -> list:
    """Lightning callbacks from the config's `callbacks:` list (Hydra `_target_` entries)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return [instantiate(entry) for entry in entries]
    except InstantiationException as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"callbacks: {first}; give each entry a `_target_:` naming a Lightning Callback "
                        "class") from None
