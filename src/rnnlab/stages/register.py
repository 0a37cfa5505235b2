"""Stage `register`, DVC's last: with `tracking.register_model=NAME`, the trained model (`paths.train`/model)
becomes a version of NAME in MLflow's Model Registry, in seconds and without training
(rnnlab.registry.register: the training run's logged sampler model, reused when that run is already a
version of NAME). Only `tracking.register_model` reruns it (rnnlab.stages.reruns), so
`dvc exp run -S tracking.register_model=NAME` on a trained workspace registers the model it has. With null
it registers nothing. It writes `paths.state`/registered.json: the name and version, or nulls.
"""

from __future__ import annotations

from pathlib import Path

from rnnlab.files import write_json



def run(params) -> dict:
    name = params.tracking.register_model
    version = None
    if name:
        from rnnlab import registry

        version = registry.register(params, name)
    write_json(Path(params.paths.state) / "registered.json", {"name": name, "version": version})
    return {}
