"""Stage `train`: train the language model; writes data/train/ (model, checkpoints, metrics, plots)."""

from pathlib import Path

from omegaconf import OmegaConf

from rnnlab.config import load_params, section
from rnnlab.errors import entry_point

READS = ("model", "optim", "data", "trainer", "gradstats", "tracking", "seed", "threads")  # = the stage's params in dvc.yaml


def run(params) -> dict:
    from rnnlab import training  # heavy imports (torch, lightning, mlflow) after the cheap checks
    from rnnlab.lit import GradStatsSpec, OptimSpec
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
        params={key: OmegaConf.to_container(params[key]) if OmegaConf.is_config(params[key]) else params[key]
                for key in READS + ("corpus", "vocab")},
    )
    metrics = training.train(job)
    print("trained:", ", ".join(f"{k} {v}" for k, v in metrics.items()))
    return metrics


@entry_point
def main() -> None:
    run(load_params())


if __name__ == "__main__":
    main()
