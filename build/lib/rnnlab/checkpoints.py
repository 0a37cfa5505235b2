"""The Lightning checkpoint store of a training: atomic writes, where to resume, and its `run.json`.

`<paths.train>/checkpoints/` holds Lightning's `last.ckpt` and `best.ckpt` (and, after SLURM's requeue
signal, `hpc_ckpt_<n>.ckpt`) and `run.json` (the hash of
the training's params, its MLflow run id, whether it finished). It is not a DVC output (so DVC's run
cache works): it stays, and an interrupted `dvc repro` resumes from it when the params are the same.
A damaged file never makes every later run fail: resume falls back from last.ckpt to best.ckpt to a
fresh start, saying why in one line. Under DDP, the launching process picks the checkpoint and hands it
to the processes Lightning starts through the environment (`RESUME_ENV`).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rnnlab import averaging
from rnnlab.errors import UserError
from rnnlab.files import atomic_write, shape_error, write_json

RESUME_ENV = "RNNLAB_RESUME_CHECKPOINT"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written like every other output (files.atomic_write: a temporary file in the
    checkpoint folder, fsync, rename), so a kill or a full disk leaves the previous checkpoint intact;
    read back with weights_only=True, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_write(path, lambda fh: torch.save(checkpoint, fh), mode="wb")

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def readable(path: Path) -> str | None:
    """None when `path` loads as a checkpoint (weights only), else why not, in a few words."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return "missing"
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            pickle.UnpicklingError) as err:  # torch.load of text or of a truncated zip fails in any of these
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
    shapes = {"rnnlab": dict, "state_dict": dict, "loops": dict, "optimizer_states": list, "lr_schedulers": list,
              "callbacks": dict, "pytorch-lightning_version": str, "global_step": int, "epoch": int}
    why = shape_error(ckpt, shapes)
    return None if why is None else f"not a checkpoint of this rnnlab version ({why})"


def resume_point(ckpt_dir: Path, phash: str, clean: bool = True) -> tuple[Path, str] | None:
    """(checkpoint, MLflow run id) of an unfinished run of the very same params, or None: start afresh.
    `clean`: remove a checkpoint folder that will not be resumed."""
    try:
        state = json.loads((ckpt_dir / "run.json").read_text())
    except FileNotFoundError:
        state = None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        print(f"note: {ckpt_dir / 'run.json'} cannot be read ({err}); starting afresh", file=sys.stderr)
        state = None
    why = None if state is None else shape_error(state, {"params_hash": str, "run_id": (str, type(None))})
    if why:
        print(f"note: {ckpt_dir / 'run.json'} is not what rnnlab writes ({why}); starting afresh", file=sys.stderr)
        state = None
    if state and state.get("params_hash") == phash and not state.get("complete"):
        for path in candidates(ckpt_dir):
            why = readable(path)
            if why is None:
                return path, state.get("run_id")
            if why != "missing":
                print(f"note: {path} cannot be read ({why}); trying the next checkpoint", file=sys.stderr)
        print(f"note: no readable checkpoint in {ckpt_dir}; starting afresh", file=sys.stderr)
    if clean and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # another config, a finished run, or nothing usable: start afresh
    return None


def candidates(ckpt_dir: Path) -> list[Path]:
    """Where to resume, in order: the newer of SLURM's requeue checkpoint (Lightning's `hpc_ckpt_<n>.ckpt`,
    saved on SIGUSR1: rnnlab.runtime.signals_deferred) and last.ckpt, then the other, then best.ckpt."""
    numbered = [(int(p.stem[len("hpc_ckpt_"):]), p) for p in ckpt_dir.glob("hpc_ckpt_*.ckpt")
                if p.stem[len("hpc_ckpt_"):].isdigit()]
    hpc = [max(numbered)[1]] if numbered else []
    recent = sorted([*hpc, ckpt_dir / "last.ckpt"], key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)
    return [*recent, ckpt_dir / "best.ckpt"]


def load_weights(lit, path: Path) -> None:
    """Put the weights of the Lightning checkpoint `path` (e.g. best.ckpt) into the LightningModule `lit`."""
    lit.load_state_dict(averaging.weights(torch.load(path, map_location="cpu", weights_only=True)))


def mark(ckpt_dir: Path, phash: str, run_id: str, complete: bool) -> None:
    """Record in run.json which params and MLflow run the checkpoints belong to, and whether they finished."""
    write_json(ckpt_dir / "run.json", {"params_hash": phash, "run_id": run_id, "complete": complete})


def launching_process() -> bool:
    """False in the further processes of a data-parallel run: Lightning's DDP starts them by running the
    same command with LOCAL_RANK set (a cluster launcher sets NODE_RANK, RANK or SLURM_PROCID)."""
    return all(int(os.environ.get(key) or 0) == 0 for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def hand_over(resume: Path | None) -> None:
    """Tell the processes DDP starts (they inherit the environment) where process 0 resumes."""
    os.environ[RESUME_ENV] = str(resume or "")


def handed_over(ckpt_dir: Path, phash: str) -> Path | None:
    """In a further DDP process: where process 0 resumes (or, started by a cluster launcher rather than
    by process 0, what the same files decide)."""
    given = os.environ.get(RESUME_ENV)
    if given is None:
        found = resume_point(ckpt_dir, phash, clean=False)
        return found[0] if found else None
    return Path(given) if given else None


def check_finished(trainer, ckpt_dir: Path) -> None:
    """Lightning ends `fit` quietly on Ctrl-C (trainer.interrupted): say how to resume instead."""
    if trainer.interrupted:
        raise UserError(f"training was interrupted at step {trainer.global_step}; run `dvc repro` again to resume "
                        f"from the last checkpoint in {ckpt_dir}")
