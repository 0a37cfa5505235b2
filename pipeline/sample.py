"""DVC stage `sample` (dvc.yaml): sample novel sequences from the trained model. The work is
rnnlab.stages.sample.run.

    python pipeline/sample.py                      # the DVC stage: writes data/samples/samples.{txt,json}
    python pipeline/sample.py sample.prime="ROMEO:" sample.temperature=0.8 sample.num_samples=5
                                                   # just prints (any sample.* key of params.yaml)
    python pipeline/sample.py sample.checkpoint=data/train/checkpoints/last.ckpt
"""

from rnnlab.stages import main, sample

if __name__ == "__main__":
    main(sample.run, overrides=True)
