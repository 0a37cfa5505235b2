"""DVC stage `params` (dvc.yaml): stop when conf/ was edited but params.yaml was not recomposed from it.

The work is rnnlab.stages.params.run.
"""

from rnnlab.stages import main, params

if __name__ == "__main__":
    main(params.run)
