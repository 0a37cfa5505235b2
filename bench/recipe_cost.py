"""Benchmark: what each word-level recipe (conf/experiment/) costs on this machine, per epoch of PTB.

For each recipe, composes the real config (`+experiment=<name>`), builds its model, optimiser, clipping,
batch and window as training does (LightningModule + Trainer, gradient statistics on), and times
`--steps` training steps on a Zipfian stream over PTB's 10,000-word vocabulary (the cost depends on the
sizes, not on the text; this sandbox cannot download PTB). Prints tokens/s and the implied time for one
epoch of PTB's 929,589 training tokens and for the recipe's epochs (validation not included).

    python bench/recipe_cost.py [--recipes zaremba_small,wlm,awd_small,zaremba_medium] [--steps 15]
"""

from __future__ import annotations

import argparse

PTB_TRAIN_TOKENS, PTB_VOCAB = 929_589, 10_000


def tokens_per_s(cfg, steps: int, warmup: int = 3) -> float:
    import warnings

    import lightning.pytorch as pl

    from rnnlab import runtime
    from rnnlab.data import StreamWindows

    from train_throughput import lightning_loop  # noqa: I001  (bench/, next to this script)
    from word_throughput import zipf_stream

    runtime.configure(None)
    warnings.filterwarnings("ignore", message=".*(val_dataloader|ReduceLROnPlateau conditioned).*")  # no val here
    pl.seed_everything(0, verbose=False)
    model, optim, data = cfg.model, cfg.optim, cfg.data
    windows = StreamWindows(zipf_stream(PTB_VOCAB, data.batch_size * (data.bptt * (steps + warmup) + 1)),
                            data.batch_size, data.bptt)
    return lightning_loop(model, PTB_VOCAB, windows, steps, warmup, optim, cfg.trainer.gradient_clip_val)


def main() -> None:
    from rnnlab.config import compose

    p = argparse.ArgumentParser()
    p.add_argument("--recipes", default="zaremba_small,wlm,awd_small,zaremba_medium")
    p.add_argument("--steps", type=int, default=15)
    args = p.parse_args()
    print(f"{'recipe':<16}{'model':<22}{'tok/s':>9}{'PTB epoch':>11}{'epochs':>8}{'all epochs':>12}")
    for name in args.recipes.split(","):
        cfg = compose([f"+experiment={name}"])
        m = cfg.model
        rate = tokens_per_s(cfg, args.steps)
        epoch = PTB_TRAIN_TOKENS / rate
        epochs = cfg.trainer.max_epochs
        shape = f"{m.cell.upper()} {m.num_layers}x{m.hidden_size}{' tied' if m.tie_weights else ''}"
        print(f"{name:<16}{shape:<22}{rate:>9,.0f}{epoch / 60:>9.1f} m{epochs:>8}{epoch * epochs / 3600:>10.1f} h",
              flush=True)


if __name__ == "__main__":
    main()
