"""What a finished training leaves in `paths.train` and in its MLflow run.

    model/          the saved model (rnnlab.trained_model: `model.pt` of the best validation + `meta.json`)
    metrics.json    final train/val numbers (a DVC metric)
    loss.csv, val.csv, grad_norm.csv, gtt.csv    the history (DVC plots)
    plots/*.png     the same, drawn (rnnlab.plots), for offline viewing

Every file is written atomically (rnnlab.files). The same files go to the MLflow run as artifacts,
with `time/train_s` and the `best/*` summary as metrics. To a tracking server these writes are queued
(rnnlab.outbox): logging never holds the outputs back, and a server that is down at the end costs a
warning line and `mlflow-unsent.json`, not the outputs.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from rnnlab import plots, trained_model
from rnnlab.files import atomic_write, remove_leftovers, write_json
from rnnlab.vocab import VocabDir

TABLES = ("loss.csv", "val.csv", "grad_norm.csv", "gtt.csv", "metrics.json")


def clean(out: Path) -> None:
    """Before a training: remove the temporary files a killed run left in `out` (files.remove_leftovers)."""
    remove_leftovers(out)


def final_metrics(step: int, history: dict, grad_rows: list, curves: list) -> dict:
    """metrics.json: the step, the last training loss, the best (saved) and the last validation, the share
    of steps clipped and the far/near ratio of the last gradient-through-time curve."""
    best_val = min(history["val"], key=lambda row: row[1]) if history["val"] else None
    metrics = {"step": step, "train_loss": history["train"][-1][1] if history["train"] else None}
    if best_val:  # the saved model is the best validation's; the last validation is reported as "last"
        metrics |= {"val_loss": best_val[1], "val_ppl": best_val[2], "val_bpc": best_val[3], "best_step": best_val[0],
                    "last_val_loss": history["val"][-1][1]}
    if grad_rows:
        metrics["clip_fraction"] = sum(row[3] for row in grad_rows) / len(grad_rows)
    if curves and curves[-1][1][0] > 0:
        values = curves[-1][1]
        metrics["gtt_ratio_far_near"] = values[-1] / values[0]
    return {k: (float(f"{v:.6g}") if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in metrics.items()}


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    def write(fh) -> None:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)

    atomic_write(path, write)


def write_history(out: Path, history: dict, grad_rows: list, curves: list, title: str) -> None:
    """The CSV tables (DVC plots) and PNG plots (for offline viewing) of the training's history."""
    write_csv(out / "loss.csv", ["step", "train_loss"], history["train"])
    write_csv(out / "val.csv", ["step", "val_loss", "val_ppl", "val_bpc"], history["val"])
    write_csv(out / "grad_norm.csv", ["step", "pre_clip", "post_clip", "clip_fraction"], grad_rows)
    last_curve = curves[-1][1] if curves else []
    write_csv(out / "gtt.csv", ["distance", "grad_norm"], [[d, v] for d, v in enumerate(last_curve)])
    plots.loss(history["train"], history["val"], out / "plots" / "loss.png", f"Loss — {title}")
    if grad_rows:
        plots.gradient_norm(grad_rows, out / "plots" / "gradient_norm.png", f"Gradient norm — {title}")
    if curves:
        plots.gradient_through_time([(f"step {step}", values) for step, values in curves],
                                    out / "plots" / "gradient_through_time.png", f"Gradient through time — {title}")


def write(out: Path, model, vocab, meta: dict, history: dict, grad_rows: list, curves: list,
          title: str) -> dict:
    """Every output of a finished training (the model last but one, metrics.json last); returns the metrics."""
    metrics = final_metrics(meta["step"], history, grad_rows, curves)
    trained_model.save(out / "model", model, vocab, meta | {"metrics": metrics})
    write_history(out, history, grad_rows, curves, title)
    write_json(out / "metrics.json", metrics)
    return metrics


def log(logger, out: Path, vocab_dir: VocabDir, logged: dict, metrics: dict, train_seconds: float) -> None:
    """The training's summary metrics and every output file, to its MLflow run (through `logger.experiment`,
    which an OutboxLogger queues)."""
    step = metrics["step"]
    # Not in metrics.json (a DVC output that a rerun or a resumed run reproduces exactly): MLflow only.
    logger.log_metrics({"time/train_s": round(train_seconds, 1)}, step=step)
    best = {f"best/{k}": v for k, v in metrics.items() if k.startswith("val_") or k == "best_step"}
    logger.log_metrics(best, step=step)  # the summary: the saved model's validation
    client, run_id = logger.experiment, logger.run_id
    client.log_dict(run_id, logged, "config/params.json")
    client.log_artifact(run_id, str(vocab_dir.vocab_file), "vocab")
    client.log_artifacts(run_id, str(out / "model"), "model")
    for name in TABLES:
        client.log_artifact(run_id, str(out / name), "tables")
    client.log_artifacts(run_id, str(out / "plots"), "plots")
