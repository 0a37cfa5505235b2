"""Preflight: what can be known to fail before any work starts, checked before DVC removes anything.

DVC deletes a stage's outputs just before it runs the stage, so a `prepare` that fails on an empty corpus
used to take the prepared splits with it (and `train` the model). The `params` stage runs first (every
other stage is downstream of its `preflight.json`) and keeps its outputs (`persist: true`), so it runs
`check(params)` and fails there, with the previous outputs untouched:

  corpus     the sources exist, are readable and not empty (rnnlab.corpus.preview), and each split of the
             cleaned, split text holds enough characters for one window (an upper bound on its tokens:
             cheap, never a false alarm); for downloads (`corpus=url`) and large inputs only the files
  devices    `trainer.accelerator` / `trainer.devices` name devices this machine has
  topology   `trainer.num_nodes` > 1 only where a cluster launcher (SLURM, torchrun, or MASTER_ADDR and
             NODE_RANK) starts the other nodes' processes; without one, DDP waits 30 minutes in silence;
             and the batch sizes divide among the processes (each owns an equal share of the streams)
  tracking   the MLflow store: a SQLite file that is one (or can be created), a server that answers

The train stage runs `devices` and `topology` again (a direct `python pipeline/train.py`); a stage that
still fails under DVC names the command that brings the removed outputs back (rnnlab.stages).
"""

from __future__ import annotations

import os

from rnnlab.errors import UserError

EMPTY_VAL = ("the val split is empty (corpus.val_frac=0 or an empty val file), and training validates on it; "
             "set corpus.val_frac (e.g. 0.05) or give a val file, or train without validation: "
             "trainer.limit_val_batches=0")


def check(params, parts: dict[str, str] | None) -> list[str]:
    """Every check in turn; the first problem is a UserError (one line: the problem and the fix).
    `parts`: the corpus split in memory (rnnlab.corpus.preview), None where that is not cheap.
    Returns the names of the checks run."""
    if parts is not None:
        windows(parts, params)
    for each in CHECKS:
        each(params)
    return ["corpus" if parts is not None else "corpus files", *(each.__name__ for each in CHECKS)]


# --- corpus ----------------------------------------------------------------------------------------------
# rnnlab.corpus.preview reads, cleans and splits the corpus in memory (the params stage passes the parts
# here); this module imports no corpus code, so the train stage, which runs `devices` and `topology`, does
# not depend on it.


def windows(parts: dict[str, str], params) -> None:
    """Each split needs enough tokens for one window of the stage that reads it; a split of c characters
    and l lines has at most c + l tokens (characters, or words, plus one <eos> a line)."""
    data, ev, trainer = params.data, params.evaluate, params.trainer
    needs = {"train": (data.batch_size * (data.bptt + 1), "data.batch_size or data.bptt")}
    if trainer.limit_val_batches != 0:
        needs["val"] = (data.eval_batch_size * (data.bptt + 1), "data.eval_batch_size or data.bptt")
    if parts["test"]:
        needs["test"] = (ev.batch_size * 2, "evaluate.batch_size")
    for split, (need, knobs) in needs.items():
        text = parts[split]
        most = len(text) + text.count("\n")
        if not text.strip() and split == "val":
            raise UserError(EMPTY_VAL)
        if most < need:
            larger = "" if split == "train" else f", a larger corpus.{split}_frac"
            raise UserError(f"the {split} split has {len(text):,} characters, at most {most:,} tokens: too few "
                            f"for one window of {need:,} tokens; use a larger corpus{larger}, or lower {knobs}")


# --- devices and topology --------------------------------------------------------------------------------


def devices(params) -> None:
    """`trainer.accelerator` gpu/cuda/mps must exist here, with as many devices as `trainer.devices` asks."""
    trainer = params.trainer
    kind = str(trainer.accelerator).lower()
    if kind in ("auto", "cpu"):
        return
    if kind not in ("gpu", "cuda", "mps"):
        raise UserError(f"trainer.accelerator={trainer.accelerator} is not supported here; use auto, cpu, gpu "
                        "(cuda) or mps")
    import torch

    have = torch.cuda.device_count() if kind in ("gpu", "cuda") else int(torch.backends.mps.is_available())
    if kind == "gpu" and not have and torch.backends.mps.is_available():
        have = 1
    want = trainer.devices
    needed = (len(want) if isinstance(want, list) else want if isinstance(want, int) and want > 0 else 1)
    if have < needed:
        found = f"only {have}" if have else "none"
        raise UserError(f"trainer.accelerator={trainer.accelerator} with trainer.devices={want} needs {needed} "
                        f"device(s), and this machine has {found}; use trainer.accelerator=auto (or cpu), or "
                        "fewer trainer.devices")


CLUSTER_ENVIRONMENTS = (
    ("SLURM_NTASKS",),  # srun / sbatch (Lightning's SLURMEnvironment)
    ("TORCHELASTIC_RUN_ID",),  # torchrun
    ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK"),  # torchrun, older
    ("MASTER_ADDR", "NODE_RANK"),  # by hand on each node (Lightning's LightningEnvironment)
)


def topology(params) -> None:
    """Several nodes only under a launcher that starts the other nodes (else DDP waits 30 min for them)."""
    trainer = params.trainer
    if trainer.num_nodes > 1 and not any(all(os.environ.get(k) for k in keys) for keys in CLUSTER_ENVIRONMENTS):
        raise UserError(f"trainer.num_nodes={trainer.num_nodes} needs a process on each node, and no cluster "
                        "launcher started one (no SLURM_NTASKS, torchrun, or MASTER_ADDR + NODE_RANK); run it "
                        "under SLURM (hydra/launcher=slurm) or torchrun, see docs/scaling-out.md, or use "
                        "trainer.num_nodes=1")
    shares(params)


def shares(params) -> None:
    """Under DDP each process owns an equal share of the streams: the batch sizes must divide by the number
    of processes (trainer.devices x trainer.num_nodes). The data module checks it again when the Trainer
    knows the real count; here it fails before DVC removes any output."""
    trainer = params.trainer
    want = trainer.devices
    per_node = len(want) if isinstance(want, (list, tuple)) else want if isinstance(want, int) and want > 0 else 1
    world = per_node * trainer.num_nodes
    for key, size in (("data.batch_size", params.data.batch_size), ("data.eval_batch_size", params.data.eval_batch_size)):
        if world > 1 and size % world:
            raise UserError(f"{key}={size} does not divide among {world} processes (trainer.devices x "
                            f"trainer.num_nodes): each process owns an equal share of the streams; use a "
                            f"multiple of {world}")


# --- tracking --------------------------------------------------------------------------------------------


def tracking(params) -> None:
    """The MLflow store: a server must answer; a SQLite file must be one, in a folder that can be written."""
    from rnnlab import tracking as tracking_mod

    tracking_mod.check_store(tracking_mod.tracking_uri(params.tracking))


CHECKS = (devices, topology, tracking)
