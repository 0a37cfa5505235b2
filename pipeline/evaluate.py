"""Stage `evaluate`: test-split perplexity and bits per character, plus sample statistics.

Writes data/eval/metrics.json (a DVC metric: `dvc metrics show`, `dvc metrics diff`) and logs the same
numbers to the training's MLflow run.
"""

import json
from pathlib import Path

from rnnlab.config import load_params, section
from rnnlab.errors import entry_point
from rnnlab.files import write_json


def run(params) -> dict:
    from rnnlab import checkpoint, metrics, tracking  # torch after the cheap checks

    vocab, model, meta = checkpoint.load_trained(params.paths.vocab, f"{params.paths.train}/model")
    vocab_stats = json.loads((Path(params.paths.vocab) / "stats.json").read_text())
    split = "test" if vocab_stats["splits"]["test"]["tokens"] > 1 else "val"  # nanoGPT-style 90/10: no test
    scores = metrics.evaluate_split(model, params.paths.vocab, split, params.evaluate.batch_size, params.evaluate.bptt)
    samples = json.loads((Path(params.paths.samples) / "samples.json").read_text())["stats"]
    result = {"split": split, split: {k: round(v, 6) for k, v in scores.items()}, "samples": samples}
    logged = {f"{split}/{k}": v for k, v in scores.items()} | {f"samples/{k}": v for k, v in samples.items()}
    plots = []
    if params.corpus.source == "agreement":
        result["agreement"], plots = agreement_probe(params, model, vocab, meta["model"]["cell"])
        logged |= {f"agreement/{k}": v for k, v in result["agreement"].items()}
    write_json(Path(params.paths.eval) / "metrics.json", result)
    tracking.log_to_run(section(params, tracking.TrackingSpec, "tracking"), meta.get("mlflow_run_id"), logged,
                        artifacts=plots, artifact_path="plots")
    print(f"{split}: loss {scores['loss']:.4f} nats/token, perplexity {scores['ppl']:.2f}, "
          f"{scores['bpc']:.4f} bits/char, OOV {scores['oov_rate']:.2%}")
    return result


@entry_point
def main() -> None:
    run(load_params())


def agreement_probe(params, model, vocab, cell: str) -> tuple[dict, list[Path]]:
    """Accuracy of was/were per distance (corpus=agreement); the plot goes to the MLflow run."""
    import tempfile

    from rnnlab import agreement

    rows = agreement.probe(model, vocab, list(params.evaluate.agreement_distances),
                           params.evaluate.agreement_per_distance, filler=(params.corpus.generator or {}).get("filler", "random"))
    print(agreement.markdown_table({cell: rows}))
    plot = Path(tempfile.mkdtemp()) / "agreement.png"
    agreement.save_plot({cell: rows}, plot)
    return {f"d{r['distance']:03d}": r["accuracy"] for r in rows}, [plot]


if __name__ == "__main__":
    main()
