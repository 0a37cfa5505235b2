"""Stage `sample`: sample novel sequences from the trained model.

    python pipeline/sample.py                      # the DVC stage: writes data/samples/samples.{txt,json}
    python pipeline/sample.py sample.prime="ROMEO:" sample.temperature=0.8 sample.num_samples=5
                                                   # just prints (any sample.* key of params.yaml)
    python pipeline/sample.py sample.checkpoint=data/train/checkpoints/last.ckpt
"""

import sys
from pathlib import Path

from rnnlab import corpus
from rnnlab.config import load_params, section, with_overrides
from rnnlab.errors import entry_point


def run(params, write: bool = True) -> None:
    from rnnlab import checkpoint, sampling, tracking  # torch after the cheap checks

    spec = section(params, sampling.SampleSpec, "sample", skip=("checkpoint",))
    model_path = params.sample.checkpoint or f"{params.paths.train}/model"
    vocab, model, meta = checkpoint.load_trained(params.paths.vocab, model_path)
    samples = sampling.sample(model, vocab, spec)
    for s in samples:
        print(s.text, end="\n\n" if vocab.level == "char" else "\n")
    if not write:
        return
    train_text = corpus.read_split(params.paths.prepared, "train")
    out = Path(params.paths.samples)
    sampling.save_samples(out, samples, vocab, train_text, params.corpus.format == "lines")
    tracking.log_to_run(section(params, tracking.TrackingSpec, "tracking"), meta.get("mlflow_run_id"),
                        artifacts=[out / "samples.txt", out / "samples.json"], artifact_path="samples")


@entry_point
def main() -> None:
    overrides = sys.argv[1:]
    run(with_overrides(load_params(), overrides), write=not overrides)  # overrides: a look, no outputs


if __name__ == "__main__":
    main()
