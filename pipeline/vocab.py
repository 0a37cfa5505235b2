"""DVC stage `vocab` (dvc.yaml): build the vocabulary from the training split and encode every split.

The work is rnnlab.stages.vocab.run.
"""

from rnnlab.stages import main, vocab

if __name__ == "__main__":
    main(vocab.run)
