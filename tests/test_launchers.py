"""Cluster sweeps through hydra-submitit-launcher: our SLURM settings (conf/hydra/launcher/slurm.yaml) as
the sbatch script submitit writes from them, and a whole sweep through `submitit_local`, SLURM's code
path minus SLURM (each job pickled, run in its own process, its result read back)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO, run
from test_sweep import SMALL, sweep_runs


class Submitted(Exception):
    pass


def sbatch_script(tmp_path, *overrides: str) -> str:
    """The sbatch script `hydra/launcher=slurm` submits for one job (the launcher's own code builds the
    executor; submission stops there)."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("sweep", overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
                      return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    executors = []
    srun = tmp_path / "bin" / "srun"  # submitit's check that this is a SLURM node
    srun.parent.mkdir(exist_ok=True)
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)

    def submit(executor, *args, **kwargs):
        executors.append(executor)
        raise Submitted

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Submitted):
        patch.setattr(submitit.AutoExecutor, "map_array", submit)
        patch.setenv("PATH", f"{srun.parent}:{os.environ['PATH']}")
        launcher.launch([["model=rnn"]], initial_job_idx=0)
    return executors[0]._executor._make_submission_file_text("python -m submitit.core._submit", "x")


def test_slurm_launcher_defaults_and_overrides(tmp_path):
    script = sbatch_script(tmp_path)
    for line in ("--cpus-per-task=4", "--mem=16GB", "--time=60", "--ntasks-per-node=1", "--nodes=1"):
        assert f"#SBATCH {line}\n" in script
    assert "--partition" not in script and "--gpus-per-node" not in script  # the cluster's defaults: no GPU
    assert f"--output={tmp_path}/sweep/.submitit/%j/%j_0_log.out" in script and "--error" not in script

    script = sbatch_script(tmp_path, "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=120",
                           "hydra.launcher.gpus_per_node=1", "hydra.launcher.cpus_per_task=8")
    for line in ("--partition=gpu", "--time=120", "--gpus-per-node=1", "--cpus-per-task=8"):
        assert f"#SBATCH {line}\n" in script


def test_slurm_setup_gives_torch_the_cpus_of_the_job(tmp_path):
    setup = sbatch_script(tmp_path).split("# setup\n")[1].split("\n\n")[0]
    show = f"{setup}\necho $OMP_NUM_THREADS,$SRUN_CPUS_PER_TASK"
    given = subprocess.run(["bash", "-c", show], env={"SLURM_CPUS_PER_TASK": "4"}, capture_output=True, text=True)
    assert given.stdout == "4,4\n"
    unset = subprocess.run(["bash", "-c", show], env={}, capture_output=True, text=True)  # cpus_per_task=null
    assert unset.stdout == ",\n" and not unset.stderr


@pytest.mark.slow
def test_submitit_local_sweep_groups_runs_and_shares_data(project):
    # The local executor starts every job at once: one torch thread each on this 2-core machine.
    run(["python", "pipeline/sweep.py", "-m", *SMALL, "model=rnn,gru", "threads=1",
         "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"], project)
    _, children = sweep_runs(project)  # the parent's id reached both job processes
    assert sorted(name for _, name, _ in children) == ["model=gru", "model=rnn"]
    assert all(status == "FINISHED" for _, _, status in children)
    (sweep_dir,) = (project / "multirun").iterdir()  # the jobs resolved ${now:...} as the launching process did
    assert len(list((sweep_dir / "data").glob("prepared-*[!k]"))) == 1  # prepared once, shared by both jobs
    for job in ("0", "1"):
        assert (sweep_dir / job / "samples" / "samples.txt").read_text().strip()
        assert json.loads((sweep_dir / job / "eval" / "metrics.json").read_text())
    logs = sorted((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and "[job 0 model=rnn] " in "".join(log.read_text() for log in logs)
    assert (sweep_dir / "report" / "report.md").exists()
