"""Process settings for a training run: torch threads, the glibc allocator, denormals, quiet logs.

    runtime.configure(threads=None)    # once, before the Trainer is built
"""

from __future__ import annotations

import ctypes
import logging
import warnings

import torch


def configure(threads: int | None) -> None:
    quiet_lightning()
    keep_freed_memory()
    torch.set_flush_denormal(True)  # a saturated (diverging) RNN otherwise crawls through denormal floats on CPU
    if threads:
        torch.set_num_threads(threads)  # parallel jobs split the cores: oversubscribed OpenMP threads are 10x slower


def quiet_lightning() -> None:
    """Drop Lightning's start-up chatter and two warnings that do not apply here."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # run.json
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs torch 2.13


def keep_freed_memory() -> None:
    """Let glibc reuse freed blocks for large tensors instead of unmapping them after every training step.

    Each step allocates the same multi-MB activation buffers again; by default glibc returns them to the
    OS on free and page-faults them back in on the next step (measured on 2 cores: +9 % tokens/s with the
    BPTT layers of rnnlab.recurrence, +1 % with nn.GRU; docs/performance.md).
    No-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    if not libc.mallopt(m_mmap_threshold, 2**30):  # older glibc caps the threshold at 32 MB
        libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
