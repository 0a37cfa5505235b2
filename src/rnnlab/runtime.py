"""Process settings: signals for every stage; torch threads, the glibc allocator, denormals, quiet logs
for a training run.

    runtime.catch_signals()            # at the start of every stage (rnnlab.stages.main)
    runtime.configure(threads=None)    # once, before the Trainer is built
    with runtime.signals_deferred():   # around Trainer.fit
        trainer.fit(...)

Signals: SIGTERM (SLURM's preemption and time-out, `kill`) and SIGINT (Ctrl-C) raise `errors.Stopped`,
which the entry point turns into one line and exit status 128 + signal; the training marks its MLflow run
KILLED on the way out and keeps its last checkpoint, so `dvc repro` resumes. Around `Trainer.fit` the
handler only records SIGTERM: Lightning's own handler (which calls this one too) lets the batch finish
and raises its SIGTERMException, which `stopped()` then names; SIGINT raises KeyboardInterrupt there,
which Lightning handles with a teardown.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import warnings

from rnnlab.errors import Stopped

_SIGNALS = {"deferred": False, "received": None}


def _on_signal(signum: int, frame) -> None:
    _SIGNALS["received"] = signum
    if not _SIGNALS["deferred"]:
        raise Stopped(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt  # Lightning tears the fit down and exits; `stopped()` names the signal


def catch_signals() -> None:
    """Turn SIGTERM and SIGINT into `errors.Stopped` for the rest of the process (main thread only)."""
    _SIGNALS["received"] = None
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_signal)


@contextlib.contextmanager
def signals_deferred():
    """Record signals instead of raising at once: the code inside stops at a safe point of its own."""
    before, _SIGNALS["deferred"] = _SIGNALS["deferred"], True
    try:
        yield
    finally:
        _SIGNALS["deferred"] = before


def stopped(err: BaseException) -> BaseException:
    """What to raise after `err` ended a fit: `Stopped` when a signal caused it (Lightning ends a fit on
    SIGTERM with its SIGTERMException, a SystemExit without a code, which would exit 0), else `err`."""
    if isinstance(err, Stopped):
        return err
    if _SIGNALS["received"]:
        return Stopped(_SIGNALS["received"])
    return Stopped(signal.SIGTERM) if type(err).__name__ == "SIGTERMException" else err


def configure(threads: int | None) -> None:
    import torch

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
