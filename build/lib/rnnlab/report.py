"""Comparison report of several training runs, read back from MLflow: a Markdown table and PNG plots.

Runs come from a sweep (the children of its parent run) or from DVC experiments (runs tagged with
`dvc_exp_name`). Per run: validation and test perplexity and bits per character, the mean fraction of
steps where clipping fired, the gradient-through-time decay (‖∂L_T/∂x_{T-d}‖ / ‖∂L_T/∂x_T‖ at the
largest probed distance d) and the start of a sample. Plots: gradient through time (one curve per run,
log scale) and validation loss over steps.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from statistics import fmean

from rnnlab.files import make_folder, write_text

GTT = re.compile(r"gtt/d(\d+)")


def children(client, parent_run_id: str) -> list:
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"])


def dvc_experiments(client, experiment: str, names: list[str] = ()) -> list:
    found = client.get_experiment_by_name(experiment)
    if not found:
        return []
    runs = client.search_runs([found.experiment_id], "", order_by=["attributes.start_time ASC"], max_results=1000)
    runs = [r for r in runs if r.data.tags.get("dvc_exp_name")]
    return [r for r in runs if not names or r.data.tags["dvc_exp_name"] in names]


def label(run) -> str:
    """The DVC experiment name, or the run name with keys shortened (trainer.gradient_clip_val= → gradient_clip_val=)."""
    name = run.data.tags.get("dvc_exp_name") or run.info.run_name or run.info.run_id[:8]
    return re.sub(r"[\w+]+\.(\w+)=", r"\1=", name)


def gtt_curve(run) -> tuple[list[float], list[int]]:
    """The last gradient-through-time values logged, ordered by distance."""
    points = sorted((int(m.group(1)), v) for k, v in run.data.metrics.items() if (m := GTT.fullmatch(k)))
    return [v for _, v in points], [d for d, _ in points]


def excerpt(client, run, length: int = 80) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        names = [a.path for a in client.list_artifacts(run.info.run_id, "samples") if a.path.endswith(".txt")]
        if not names:
            return ""
        chosen = "samples/samples.txt" if "samples/samples.txt" in names else sorted(names)[-1]
        text = Path(client.download_artifacts(run.info.run_id, chosen, tmp)).read_text(encoding="utf-8")
    flat = " ".join(text.split())
    return (flat[:length] + "…") if len(flat) > length else flat


def row(client, run) -> dict:
    m, p = run.data.metrics, run.data.params
    values, distances = gtt_curve(run)
    clip = [x.value for x in client.get_metric_history(run.info.run_id, "grad/clip_fraction")]
    return {
        "run": label(run),
        "status": run.info.status.lower(),
        "cell": p.get("model/cell", "?"), "level": p.get("vocab/level", "?"),
        "clip": f"{p.get('trainer/gradient_clip_val', 'None')} ({p.get('trainer/gradient_clip_algorithm', '')})",
        "val loss (best)": m.get("best/val_loss", m.get("val/loss")), "val loss (last)": m.get("val/loss"),
        "test loss": m.get("test/loss"), "test bpc": m.get("test/bpc"),
        "clip fraction": fmean(clip) if clip else None, "train s": m.get("time/train_s"),
        "gtt decay": (values[-1] / values[0], distances[-1]) if values and values[0] > 0 else None,
        "sample": excerpt(client, run),
    }


QUIET_PARAMS = ("paths/", "tracking/", "hydra/")  # where a run wrote, not what it trained


def varied(runs: list) -> list[str]:
    """The params whose values differ between the runs (not paths or tracking; `x/name` only through x's keys)."""
    keys = sorted({k for run in runs for k in run.data.params})
    keys = [k for k in keys if not k.startswith(QUIET_PARAMS) and not k.endswith("/name")]
    return [k for k in keys if len({run.data.params.get(k) for run in runs}) > 1]


def compact(rows: list[dict], runs: list, width: int = 120) -> str:
    """A plain-text table for the terminal: run, the headline metrics, then the params that vary.

    Lines stay within `width`: a long run name is cut, and columns that would pass it go to a second block."""
    params = varied(runs)
    short = {k: k.rsplit("/", 1)[-1] for k in params}
    if len(set(short.values())) < len(short):
        short = {k: k.replace("/", ".") for k in params}
    heads = ["run", "val_loss", "val_ppl", "val_bpc", "test_loss", "test_ppl", "test_bpc", "clip_frac", "train_s"]
    cells = []
    for r, run in zip(rows, runs):
        m = run.data.metrics
        values = [m.get("best/val_loss", m.get("val/loss")), m.get("best/val_ppl", m.get("val/ppl")),
                  m.get("best/val_bpc", m.get("val/bpc")), m.get("test/loss"), m.get("test/ppl"), m.get("test/bpc"),
                  r["clip fraction"], r["train s"]]
        cells.append([cut(r["run"]), *(number(v) for v in values), *(cut(run.data.params.get(k, "–")) for k in params)])
    heads += [short[k] for k in params]
    widths = [max(len(str(c)) for c in column) for column in zip(heads, *cells)]
    blocks, rest = [], list(range(1, len(heads)))
    while rest:  # the run column starts every block
        cols, used = [0], widths[0]
        while rest and (len(cols) == 1 or used + 1 + widths[rest[0]] <= width):
            used += 1 + widths[rest[0]]
            cols.append(rest.pop(0))
        blocks.append("\n".join(" ".join(str(line[c]).ljust(widths[c]) for c in cols).rstrip()
                                for line in [heads, *cells]))
    return "\n\n".join(blocks)


def cut(text: str, length: int = 28) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def number(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3g}"


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        return f"{value[0]:.1e} at d={value[1]}"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1000 else f"{value:.3g}"
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict], title: str) -> str:
    heads = [h for h in (rows[0] if rows else []) if h != "sample"]
    lines = [f"# {title}", "", f"{len(rows)} runs. Losses in nats per token; \"best\" is the saved model's "
             "validation, \"last\" the final one; test scores the saved model.", ""]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(fmt(r[h]) for h in heads) + " |" for r in rows]
    lines += ["", "Samples:", ""] + [f"- {fmt(r['run'])}: {fmt(r['sample'])}" for r in rows]
    lines += ["", "![gradient through time](gradient_through_time.png)", "", "![validation loss](val_loss.png)", ""]
    return "\n".join(lines)


def plots(client, runs: list, out: Path) -> None:
    """gradient_through_time.png and val_loss.png in `out`: the runs' metrics read here, drawn by rnnlab.plots."""
    from rnnlab import plots as draw

    gtt, val = [], []
    for run in runs:
        values, distances = gtt_curve(run)
        if values:
            gtt.append((label(run), distances, values))
        hist = client.get_metric_history(run.info.run_id, "val/loss")
        if hist:
            val.append((label(run), [h.step for h in hist], [h.value for h in hist]))
    draw.runs_gradient_through_time(gtt, out / "gradient_through_time.png")
    draw.runs_val_loss(val, out / "val_loss.png")


def write(client, runs: list, out_dir: str | Path, title: str) -> str:
    """Write report.md, gradient_through_time.png and val_loss.png into out_dir; returns the compact table."""
    out = Path(out_dir)
    make_folder(out)
    rows = [row(client, run) for run in runs]
    plots(client, runs, out)
    write_text(out / "report.md", markdown(rows, title))
    return compact(rows, runs)


def compare(tracking, sweep_dir: Path | None = None, dvc_names: list[str] | None = None,
            out: Path | None = None) -> tuple[str, int, Path]:
    """`python pipeline/report.py`: the runs of a sweep (its folder) or of DVC experiments (names; none: all),
    compared; the report goes to `out` (and to the sweep's parent run). Returns (table, runs, report file)."""
    from mlflow.tracking import MlflowClient

    from rnnlab.errors import UserError
    from rnnlab.tracking import tracking_uri

    client = MlflowClient(tracking_uri(tracking))
    parent = None
    if sweep_dir is not None:
        experiment = client.get_experiment_by_name(tracking.experiment)
        found = client.search_runs([experiment.experiment_id] if experiment else [],
                                   f"tags.`rnnlab.sweep_dir` = '{Path(sweep_dir).resolve()}'")
        if not found:
            raise UserError(f"no MLflow parent run for the sweep {sweep_dir}; give the folder "
                            "`python pipeline/sweep.py -m ...` printed (multirun/<date>_<time>)")
        parent = found[0].info.run_id
        runs = children(client, parent)
    else:
        runs = dvc_experiments(client, tracking.experiment, dvc_names or [])
    if not runs:
        raise UserError("no runs to compare; run a sweep or `dvc exp run` first")
    out = out or (Path(sweep_dir) / "report" if sweep_dir is not None else Path("reports/dvc"))
    table = write(client, runs, out, title=f"Comparison of {len(runs)} runs")
    if parent:
        client.log_artifacts(parent, str(out), "report")
    return table, len(runs), out / "report.md"
