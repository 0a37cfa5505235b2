"""Process settings: signals for every stage; torch threads, the glibc allocator, denormals, quiet logs
for a training run.

    runtime.catch_signals()            # at the start of every stage (rnnlab.stages.main)
    runtime.configure(threads=None)    # once, before the Trainer is built
    with runtime.signals_deferred():   # around Trainer.fit
        trainer.fit(...)

Signals: SIGTERM (SLURM's preemption and time-out, `kill`), SIGINT (Ctrl-C) and SIGUSR1 (outside SLURM,
where it is Lightning's requeue signal: see `signals_deferred`) raise `errors.Stopped`,
which the entry point turns into one line and exit status 128 + signal; the training marks its MLflow run
KILLED on the way out and keeps its last checkpoint, so `dvc repro` resumes. Around `Trainer.fit` the
handler only records SIGTERM: Lightning's own handler (which calls this one too) lets the batch finish
and raises its SIGTERMException, which `stopped()` then names; SIGINT and SIGUSR1 raise KeyboardInterrupt
there, which Lightning handles with a teardown.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import warnings

from rnnlab.errors import Stopped

_SIGNALS = {"deferred": False, "received": None}


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def _on_signal(signum: int, frame) -> None:
    if not _SIGNALS["deferred"]:
        _SIGNALS["received"] = signum
        raise Stopped(signum)
    first = _SIGNALS["received"] is None
    _SIGNALS["received"] = _SIGNALS["received"] or signum  # the first signal names the stop (130 for Ctrl-C)
    if signum != signal.SIGTERM and first:
        # Not a KeyboardInterrupt raised wherever the signal lands (once inside a weakref callback, where
        # Python prints it as "Exception ignored" with a traceback): SIGTERM to ourselves, which Lightning's
        # handler turns into a stop at the batch end, and `stopped()` names the first signal.
        os.kill(os.getpid(), signal.SIGTERM)


def catch_signals() -> None:
    """Turn SIGTERM, SIGINT and SIGUSR1 into `errors.Stopped` for the rest of the process (main thread
    only). SIGUSR1's default action would end the process without a word, its MLflow run left RUNNING."""
    _SIGNALS["received"] = None
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)


@contextlib.contextmanager
def signals_deferred():
    """Record signals instead of raising at once: the code inside stops at a safe point of its own.

    Under SLURM, SIGUSR1 is Lightning's requeue signal (`SLURMEnvironment(auto_requeue=True)`, its
    default there, e.g. `#SBATCH --signal=USR1@120`): Lightning saves `hpc_ckpt_<n>.ckpt` in the
    checkpoint folder and runs `scontrol requeue`; SLURM then ends the job with SIGTERM, and the requeued
    job resumes from that checkpoint (rnnlab.checkpoints.resume_point). Lightning installs its handler
    only where none is, so ours steps aside for the fit.
    """
    before, _SIGNALS["deferred"] = _SIGNALS["deferred"], True
    _SIGNALS["received"] = None  # one that came before was raised at once (not deferred then)
    requeue = slurm_requeue()
    if requeue:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        yield
    finally:
        _SIGNALS["deferred"] = before
        if requeue:
            signal.signal(signal.SIGUSR1, _on_signal)
    raise_pending()  # a signal recorded after the fit ended (while outputs were written) still stops the run


def raise_pending() -> None:
    """Raise `Stopped` for a signal recorded while deferred that nobody acted on: one that came before
    Lightning installed its own handler (Lightning forgets it: `received_sigterm` starts False), or after
    its fit ended. Called when the training starts (callbacks.PendingSignal) and when the deferral ends."""
    if _SIGNALS["received"]:
        raise Stopped(_SIGNALS["received"])


def slurm_requeue() -> bool:
    """Does Lightning run under SLURM here, where it requeues the job on SIGUSR1?"""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


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
