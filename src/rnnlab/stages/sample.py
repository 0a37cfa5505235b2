"""Stage `sample`: sample novel sequences from the trained model into `paths.samples`.

With overrides (`python pipeline/sample.py sample.prime=ROMEO: sample.num_samples=3`) it only prints:
an interactive look that writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from rnnlab import corpus
from rnnlab.files import remove_leftovers
from rnnlab.params import with_overrides

# Outputs DVC does not cache (dvc.yaml `cache: false`): only git brings them back after a failed run
UNCACHED = ()

SHOWN, SHOWN_CHARS = 2, 120  # samples printed by the stage (all of them go to samples.txt and MLflow)
TRACED_STEPS = 24  # steps of the first sample drawn in sampling_steps.png


def run(params, overrides: list[str] = ()) -> dict:
    from rnnlab import trained_model, sampling, tracking  # torch after the cheap checks

    params = with_overrides(params, list(overrides)) if overrides else params
    if not overrides:
        remove_leftovers(params.paths.samples)
    spec = params.sample
    model_path = params.sample.checkpoint or f"{params.paths.train}/model"
    vocab, model, meta = trained_model.load_trained(params.paths.vocab, model_path)
    trace = sampling.Trace(max_steps=TRACED_STEPS)  # the first sample's first steps, for the picture
    samples = sampling.sample(model, vocab, spec, trace)
    if overrides:  # an interactive look: every sample, whole
        for s in samples:
            print(s.text, end="\n\n" if vocab.level == "char" else "\n")
        return {}
    for s in samples[:SHOWN]:
        text = s.text if len(s.text) <= SHOWN_CHARS else s.text[:SHOWN_CHARS] + " …"
        print(text.rstrip("\n"), end="\n----\n")
    train_text = corpus.read_split(params.paths.prepared, "train")
    out = Path(params.paths.samples)
    stats = sampling.save_samples(out, samples, vocab, train_text, params.corpus.format == "lines")
    pictured = write_steps(out, trace, vocab)
    tracking.log_to_run(params.tracking, meta.get("mlflow_run_id"),
                        artifacts=[out / "samples.txt", out / "samples.json", *pictured], artifact_path="samples")
    print(f"wrote {len(samples)} samples to {out / 'samples.txt'} (first {min(SHOWN, len(samples))} above); "
          f"novel {stats['novelty_rate']:.0%}, mean length {stats['mean_length']:.0f}")
    return stats


def write_steps(out: Path, trace, vocab) -> list[Path]:
    """sampling_steps.json (the first sample's first steps, as the sampler drew them) and its picture."""
    from rnnlab import plots
    from rnnlab.files import write_json

    data = trace.to_json(vocab)
    write_json(out / "sampling_steps.json", data)
    title = f"Sampling step by step: the first sample's first {len(data['steps'])} steps"
    plots.sampling_steps(data, out / "sampling_steps.png", title)
    return [out / "sampling_steps.json", out / "sampling_steps.png"]
