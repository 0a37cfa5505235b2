"""The measured recipe table and learning curves: what `dvc exp run -S +experiment=<recipe>` gave here.

A measured run is recorded from the workspace it ran in (its metrics, val.csv and MLflow database), into
docs/measured/<corpus>/<recipe>.json and .val.csv (kept in git: the evidence behind the README's table);
`table` prints the markdown table from every record and draws the learning curves (validation perplexity
after each epoch, every recipe on one plot):

    python bench/recipes_measured.py record /path/to/workspace awd_small_full \\
        --command "dvc exp run -S +experiment=awd_small_full -S corpus.mirror=../shared/corpora/ptb" \\
        --wall-min 31.5 [--note "..."]        # with evaluate.cache_size on, the cache's numbers too
        [--of-epochs 39]                      # a run of a recipe's first epochs only (-S trainer.max_epochs=2)
    python bench/recipes_measured.py table [--corpus ptb]      # markdown on stdout, docs/<corpus>-learning-curves.png

`--wall-min`: the whole `dvc exp run` (prepare to evaluate), timed by the caller (e.g. /usr/bin/time).
The training time and tokens/s come from the run's MLflow metrics (`time/train_s`, the median of
`train/tokens_per_s`).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sqlite3
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASURED = REPO / "docs" / "measured"


def machine() -> str:
    import os

    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return f"{os.cpu_count()} cores ({model}), torch {torch.__version__} CPU"


def record(args) -> None:
    ws = Path(args.workspace)
    train = json.loads((ws / "data/train/metrics.json").read_text())
    test = json.loads((ws / "data/eval/metrics.json").read_text())
    rows = list(csv.DictReader((ws / "data/train/val.csv").open()))
    db = sqlite3.connect(ws / "mlflow.db")
    meta = json.loads((ws / "data/train/model/meta.json").read_text())
    run_id = meta["mlflow_run_id"]

    def values(key: str) -> list[float]:
        return [v for (v,) in db.execute("select value from metrics where run_uuid = ? and key = ? order by step",
                                         (run_id, key))]

    out = MEASURED / args.corpus
    out.mkdir(parents=True, exist_ok=True)
    entry = {
        "recipe": args.recipe, "command": args.command, "corpus": args.corpus,
        "val_ppl": train["val_ppl"], "test_ppl": test[test["split"]]["ppl"], "test_loss": test[test["split"]]["loss"],
        "best_step": train["best_step"], "steps": train["step"], "epochs": len(rows),
        "train_min": round(values("time/train_s")[-1] / 60, 1), "wall_min": args.wall_min,
        "tokens_per_s": round(statistics.median(values("train/tokens_per_s"))),
        "machine": machine(), "note": args.note, "params_hash": meta["params_hash"],
    }
    if args.of_epochs:  # the first epochs of a longer recipe: its full time is projected from these
        entry["of_epochs"] = args.of_epochs
        entry["projected_train_h"] = round(entry["train_min"] / entry["epochs"] * args.of_epochs / 60, 1)
    if "cache" in test:  # evaluate.cache_size was on: the continuous cache's numbers, beside the model's own
        entry["cache"] = test["cache"]
    (out / f"{args.recipe}.json").write_text(json.dumps(entry, indent=2) + "\n")
    (out / f"{args.recipe}.val.csv").write_text((ws / "data/train/val.csv").read_text())
    print(json.dumps(entry, indent=2))


def table(args) -> None:
    folder = MEASURED / args.corpus
    entries = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    entries.sort(key=lambda e: -e["test_ppl"])
    print("| recipe | val ppl | test ppl | with the cache (val / test) | epochs | training | whole pipeline | "
          "tokens/s | machine | command |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for e in entries:
        note = f" ({e['note']})" if e.get("note") else ""
        c = e.get("cache")
        cached = f"{c['val_ppl']:.2f} / {c['test_ppl']:.2f} (size {c['size']}, θ {c['theta']}, λ {c['lambda']})" if c else "–"
        epochs = f"{e['epochs']} of {e['of_epochs']} (all {e['of_epochs']}: {e['projected_train_h']} h, projected)" \
            if e.get("of_epochs") else e["epochs"]
        print(f"| `{e['recipe']}`{note} | {e['val_ppl']:.2f} | **{e['test_ppl']:.2f}** | {cached} | {epochs} | "
              f"{e['train_min']:.1f} min | {e['wall_min']:.1f} min | {e['tokens_per_s']:,} | {e['machine']} | `{e['command']}` |")
    curves = []
    for e in entries:
        rows = list(csv.DictReader((folder / f"{e['recipe']}.val.csv").open()))
        first = f"first {e['epochs']} of {e['of_epochs']} epochs, " if e.get("of_epochs") else ""
        curves.append((f"{e['recipe']} ({first}test {e['test_ppl']:.1f})", list(range(1, len(rows) + 1)),
                       [float(r["val_ppl"]) for r in rows]))
    sys.path.insert(0, str(REPO / "src"))
    from rnnlab import plots

    path = REPO / "docs" / f"{args.corpus}-learning-curves.png"
    plots.learning_curves(curves, path, f"Validation perplexity after each epoch ({args.corpus.upper()})")
    print(f"\n{path.relative_to(REPO)}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("record")
    r.add_argument("workspace")
    r.add_argument("recipe")
    r.add_argument("--command", required=True)
    r.add_argument("--wall-min", type=float, required=True)
    r.add_argument("--note", default="")
    r.add_argument("--corpus", default="ptb")
    r.add_argument("--of-epochs", type=int, default=0, help="the recipe's epochs, when the run trained only its first")
    t = sub.add_parser("table")
    t.add_argument("--corpus", default="ptb")
    args = p.parse_args()
    record(args) if args.what == "record" else table(args)


if __name__ == "__main__":
    main()
