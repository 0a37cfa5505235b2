"""DVC stage `evaluate` (dvc.yaml): test-split perplexity and bits per character, plus sample statistics.

The work is rnnlab.stages.evaluate.run.
"""

from rnnlab.stages import main, evaluate

if __name__ == "__main__":
    main(evaluate.run)
