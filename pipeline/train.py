"""DVC stage `train` (dvc.yaml): train the language model. The work is rnnlab.stages.train.run."""

from rnnlab.stages import main, train

if __name__ == "__main__":
    main(train.run)
