"""DVC stage `register` (dvc.yaml): with tracking.register_model=NAME, register the trained model in MLflow's
Model Registry (no training); with null, nothing.

The work is rnnlab.stages.register.run.
"""

from rnnlab.stages import main, register

if __name__ == "__main__":
    main(register.run)
