"""Stage `evaluate`: test-split perplexity and bits per character, plus sample statistics.

Scores the test split (the val split when the corpus has none, as in nanoGPT's 90/10 split) with
`rnnlab.scoring`, the same windows and carried state as training's validation, and writes
`paths.eval`/metrics.json (a DVC metric: `dvc metrics show`, `dvc metrics diff`); the same numbers
go to the training's MLflow run. For `corpus=agreement` it adds the agreement probe per distance.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from rnnlab.errors import UserError
from rnnlab.files import reading, remove_leftovers, write_json
from rnnlab.vocab import VocabDir

# Outputs DVC does not cache (dvc.yaml `cache: false`): only git brings them back after a failed run
UNCACHED = ("{paths.eval}/metrics.json",)


def run(params) -> dict:
    from rnnlab import trained_model, scoring, tracking  # torch after the cheap checks

    remove_leftovers(params.paths.eval)
    vocab_dir = VocabDir(params.paths.vocab)
    vocab, model, meta = trained_model.load_trained(vocab_dir.path, f"{params.paths.train}/model")
    stats = vocab_dir.stats()["splits"]
    split = "test" if stats["test"]["tokens"] > 1 else "val"
    scores = scoring.score_stream(model, vocab_dir.ids(split), params.evaluate.batch_size, params.evaluate.bptt,
                                  vocab_dir.chars_per_token(split)) | {"oov_rate": stats[split]["oov_rate"]}
    with reading(Path(params.paths.samples) / "samples.json", "sample again: dvc repro sample"):
        samples = dict(json.loads((Path(params.paths.samples) / "samples.json").read_text(encoding="utf-8"))["stats"])
    finite = {k: round(v, 6) if math.isfinite(v) else None for k, v in scores.items()}  # metrics.json is strict JSON
    result = {"split": split, split: finite, "samples": samples}
    logged = {f"{split}/{k}": v for k, v in scores.items()} | {f"samples/{k}": v for k, v in samples.items()}
    if params.evaluate.cache_size:
        cached = with_cache(params, model, vocab_dir, split, stats)
        result["cache"] = {k: round(v, 6) if math.isfinite(v) else None for k, v in cached.items()}
        logged |= {f"cache/{k}": v for k, v in cached.items()}
    spec = params.tracking
    with tempfile.TemporaryDirectory() as tmp:
        plots = []
        if params.corpus.source == "agreement":
            result["agreement"], plots = agreement(params, model, vocab, meta["model"]["cell"], Path(tmp))
            logged |= {f"agreement/{k}": v for k, v in result["agreement"].items()}
        write_json(Path(params.paths.eval) / "metrics.json", result)
        tracking.log_to_run(spec, meta.get("mlflow_run_id"), logged, artifacts=plots, artifact_path="plots")
    print(f"{split}: loss {scores['loss']:.4f} nats/token, perplexity {scores['ppl']:.2f}, "
          f"{scores['bpc']:.4f} bits/char, OOV {scores['oov_rate']:.2%}")
    return result


def with_cache(params, model, vocab_dir: VocabDir, split: str, stats: dict) -> dict:
    """The continuous cache (rnnlab.cache): θ and λ chosen on the val split, then the test split scored."""
    from rnnlab import cache, scoring

    spec = params.evaluate
    if split != "test" or stats["val"]["tokens"] < 2:
        raise UserError("evaluate.cache_size needs a val split to choose the cache's θ and λ and a test split to "
                        "score; give the corpus both (corpus.val_frac, corpus.test_frac) or set evaluate.cache_size=0")
    best = cache.tune(model, vocab_dir.ids("val"), spec.batch_size, spec.bptt, spec.cache_size,
                      list(spec.cache_theta), list(spec.cache_lambda))
    test = cache.score(model, vocab_dir.ids("test"), spec.batch_size, spec.bptt, spec.cache_size, best["theta"],
                       best["lambda"], vocab_dir.chars_per_token("test"))
    print(f"with the continuous cache (size {spec.cache_size}, theta {best['theta']}, lambda {best['lambda']}, "
          f"chosen on val: perplexity {scoring.perplexity(best['loss']):.2f}): test perplexity {test['ppl']:.2f}, "
          f"{test['bpc']:.4f} bits/char")
    return {"size": spec.cache_size, "theta": best["theta"], "lambda": best["lambda"], "val_loss": best["loss"],
            "val_ppl": scoring.perplexity(best["loss"]), "test_loss": test["loss"], "test_ppl": test["ppl"],
            "test_bpc": test["bpc"]}


def agreement(params, model, vocab, cell: str, tmp: Path) -> tuple[dict, list[Path]]:
    """Accuracy of was/were per distance (corpus=agreement), and its plot (in `tmp`, for MLflow)."""
    from rnnlab import agreement_probe, plots

    rows = agreement_probe.probe(model, vocab, list(params.evaluate.agreement_distances),
                                 params.evaluate.agreement_per_distance,
                                 filler=params.corpus.agreement.filler)
    print(agreement_probe.markdown_table({cell: rows}))
    plots.agreement({cell: rows}, tmp / "agreement.png")
    return {f"d{r['distance']:03d}": r["accuracy"] for r in rows}, [tmp / "agreement.png"]
