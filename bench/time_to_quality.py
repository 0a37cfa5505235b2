"""Benchmark: time to quality on tinyshakespeare with nanoGPT's split (first 90 % train, last 10 % val).

Trains with rnnlab's own pipeline functions (prepare, vocab, Lightning training) for a wall-clock budget
and prints, from the validation history, when val first reached 1.88 nats/char (what nanoGPT's CPU
recipe reports after 155 s) and the best val loss within the budget.

    python bench/time_to_quality.py [--minutes 15] [--cell gru --hidden 384 --layers 2 ...]

The defaults are the best configuration found for 2 CPU cores (GRU 2×384, dropout 0.3, Adam 2e-3
halved on plateau, 64 × 128, clip 1.0).

Needs ../shared/corpora/tinyshakespeare.txt (skips with a message elsewhere).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
from rnnlab.config import spec as conf_spec  # conf/'s defaults, with changes

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"


class ValClock(pl.Callback):
    """Wall-clock (since training start) of each validation, with its loss."""

    def __init__(self) -> None:
        self.start, self.points = time.perf_counter(), []

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if "val/loss" in trainer.callback_metrics and not trainer.sanity_checking:
            self.points.append((time.perf_counter() - self.start, trainer.global_step,
                                float(trainer.callback_metrics["val/loss"])))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--cell", default="gru")
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bptt", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--schedule", default="plateau", help="none | plateau (lr x 0.5 when val stalls)")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if not CORPUS.exists():
        print(f"skipped: {CORPUS} is not on this machine")
        return

    from rnnlab import corpus, training, vocab
    from rnnlab.config import defaults
    from rnnlab.params import build
    from rnnlab.schema import TrainerSpec
    from rnnlab.stages import train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = conf_spec("corpus", source="file", path=str(CORPUS), val_frac=0.1, test_frac=0.0)
        corpus.prepare(spec, tmp / "prepared", tmp / "raw")
        texts = {s: corpus.read_split(tmp / "prepared", s) for s in corpus.SPLITS}
        vocab.build_and_encode(texts, conf_spec("vocab", level="char"), False, tmp / "vocab")
        clock = ValClock()
        base = defaults()
        trainer = {"max_steps": -1, "max_epochs": -1, "max_time": {"seconds": int(args.minutes * 60)},
                   "val_check_interval": args.val_every, "check_val_every_n_epoch": None,
                   "gradient_clip_val": 1.0, "accelerator": "cpu", "log_every_n_steps": 50}
        params = base.replace(
            paths={"vocab": str(tmp / "vocab"), "train": str(tmp / "train")},
            model={"cell": args.cell, "embedding_size": args.embedding, "hidden_size": args.hidden,
                   "num_layers": args.layers, "dropout": args.dropout},
            optim={"lr": args.lr, "schedule": args.schedule, "plateau_factor": 0.5, "plateau_patience": 1},
            data={"batch_size": args.batch, "bptt": args.bptt, "eval_batch_size": 64},
            trainer=build(TrainerSpec, "trainer", base.section("trainer") | trainer),
            gradstats={"every_n_steps": 50, "gtt_length": 0, "samples": 0},
            tracking={"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "bench"}, seed=1337, threads=args.threads)
        training.train(params, train.READS, [clock])

    print(f"\nconfig: {vars(args)}")
    print(f"{'seconds':>8}{'step':>7}{'val loss':>10}")
    for sec, step, loss in clock.points:
        print(f"{sec:>8.0f}{step:>7}{loss:>10.4f}")
    hit = next(((s, st) for s, st, loss in clock.points if loss <= 1.88), None)
    best = min(clock.points, key=lambda p: p[2]) if clock.points else None
    print(f"val <= 1.88 nats/char after: {f'{hit[0]:.0f} s (step {hit[1]})' if hit else 'not reached'}")
    if best:
        print(f"best val within {args.minutes:g} min: {best[2]:.4f} nats/char at {best[0]:.0f} s (step {best[1]})")


if __name__ == "__main__":
    sys.exit(main())
