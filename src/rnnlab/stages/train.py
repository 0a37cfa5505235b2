"""Stage `train`: train the language model; writes `paths.train` (model, checkpoints, metrics, plots).

What it logs to MLflow as params (and hashes to decide whether an interrupted run may resume) are the
keys dvc.yaml lists under the stage's `params:`, so the two cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from rnnlab.config import section, stage_params
from rnnlab.errors import UserError


def run(params) -> dict:
    from rnnlab import training  # heavy imports (torch, lightning, mlflow) after the cheap checks
    from rnnlab.schema import GradStatsSpec
    from rnnlab.lit import OptimSpec
    from rnnlab.model import ModelSpec
    from rnnlab.tracking import TrackingSpec

    job = training.TrainJob(
        vocab_dir=Path(params.paths.vocab),
        out_dir=Path(params.paths.train),
        model=section(params, ModelSpec, "model"),
        optim=section(params, OptimSpec, "optim"),
        data=section(params, training.DataSpec, "data"),
        trainer=OmegaConf.to_container(params.trainer),
        gradstats=section(params, GradStatsSpec, "gradstats"),
        tracking=section(params, TrackingSpec, "tracking"),
        seed=params.seed,
        threads=params.threads,
        params=stage_params(params, "train"),
        callbacks=user_callbacks(params.get("callbacks") or []),
    )
    metrics = training.train(job)
    if not metrics:  # a further process of a data-parallel (DDP) run: process 0 reports
        return metrics
    print(f"trained {metrics['step']} steps: best validation {metrics.get('val_loss')} nats/token "
          f"(ppl {metrics.get('val_ppl')}, {metrics.get('val_bpc')} bits/char) at step {metrics.get('best_step')}, "
          f"last {metrics.get('last_val_loss')}; clip fraction {metrics.get('clip_fraction')}; "
          f"model, metrics and plots in {params.paths.train}")
    return metrics


def user_callbacks(entries) -> list:
    """Lightning callbacks from the config's `callbacks:` list (Hydra `_target_` entries)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return [instantiate(entry) for entry in entries]
    except InstantiationException as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"callbacks: {first}; give each entry a `_target_:` naming a Lightning Callback "
                        "class") from None
