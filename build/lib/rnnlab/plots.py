"""Every PNG the project draws, in one place: training's loss, gradient-norm and gradient-through-time
plots, the agreement probe's accuracy plot and the report's comparison plots.

All pictures share one look (`figure`: matplotlib's Agg backend, 7 inches wide at 110 dpi, a light grid)
and one way to disk (`save`: through `rnnlab.files.atomic_write`, so a failed or interrupted write keeps
the previous PNG and leaves no half-written one). The functions take plain lists (no tensors), and
matplotlib is imported only when something is drawn: the cheap stages that import this module never
load it.
"""

from __future__ import annotations

from pathlib import Path

from rnnlab.files import atomic_write

TINY = 1e-30  # the floor of values on a log scale (a zero norm would vanish from the plot)


def figure(rows: int = 1, height: float = 4.2, grid: str = "major", **subplots):
    """A new figure 7 inches wide (at 110 dpi) with `rows` axes, each gridded (`grid`: major, minor or
    both ticks); returns (fig, ax), or (fig, [axes]) for several rows. `subplots` go to plt.subplots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(7, height), dpi=110, **subplots)
    for ax in fig.axes:
        ax.grid(True, which=grid, alpha=0.3)
    return fig, axes


def save(fig, path: str | Path) -> None:
    """Lay `fig` out tightly, write it to `path` as a PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        atomic_write(path, lambda fh: fig.savefig(fh, format="png"), mode="wb")
    finally:
        plt.close(fig)


def loss(train: list[list], val: list[list], path: str | Path, title: str) -> None:
    """Training loss (every log step) and validation loss against the step, in nats per token
    (rows [step, loss, ...] of loss.csv and val.csv)."""
    fig, ax = figure()
    ax.plot([r[0] for r in train], [r[1] for r in train], label="train", linewidth=1)
    ax.plot([r[0] for r in val], [r[1] for r in val], marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.legend()
    save(fig, path)


def gradient_norm(rows: list[list], path: str | Path, title: str) -> None:
    """grad_norm.csv drawn (rows [step, pre_clip, post_clip, clip_fraction]): the total gradient norm
    before and after clipping (log scale), and the share of steps clipped, against the step."""
    steps = [r[0] for r in rows]
    fig, (top, bottom) = figure(2, height=5.2, sharex=True, height_ratios=[2, 1])
    top.semilogy(steps, [max(r[1], TINY) for r in rows], label="before clipping", linewidth=1)
    top.semilogy(steps, [max(r[2], TINY) for r in rows], label="after clipping", linewidth=1)
    top.set_ylabel("‖gradient‖ (log scale)")
    top.set_title(title)
    top.legend(fontsize=8)
    bottom.plot(steps, [r[3] for r in rows], color="tab:red", linewidth=1)
    bottom.set_ylabel("clip fraction")
    bottom.set_xlabel("step")
    save(fig, path)


def gradient_through_time(curves: list[tuple[str, list[float]]], path: str | Path, title: str) -> None:
    """Log-scale ||dL_T/dx_t|| against the distance T - t, one curve (label, norms by distance) per
    validation, coloured from early (dark) to late (yellow)."""
    import matplotlib

    fig, ax = figure(grid="both")
    cmap = matplotlib.colormaps["viridis"]
    for i, (label, norms) in enumerate(curves):
        distance = list(range(len(norms)))  # norms are ordered by distance already
        ax.semilogy(distance, [max(n, TINY) for n in norms], label=label, color=cmap(i / max(len(curves) - 1, 1)))
    ax.set_xlabel("distance T − t (steps back from the predicted token)")
    ax.set_ylabel("‖∂L_T / ∂x_t‖ (log scale)")
    ax.set_title(title)
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    save(fig, path)


def agreement(curves: dict[str, list[dict]], path: str | Path, title: str = "Subject–verb agreement") -> None:
    """The agreement probe: accuracy against distance, one line per label (rows {"distance", "accuracy"}),
    with the 50 % chance line."""
    fig, ax = figure()
    for label, rows in curves.items():
        ax.plot([r["distance"] for r in rows], [100 * r["accuracy"] for r in rows], marker="o", label=label)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("distance (filler words between subject and verb)")
    ax.set_ylabel("correct verb form preferred (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend()
    save(fig, path)


def runs_gradient_through_time(curves: list[tuple[str, list[int], list[float]]], path: str | Path) -> None:
    """The report's gradient through time: per run (label, distances, norms of its last validation)."""
    _runs([(label, x, [max(v, TINY) for v in y]) for label, x, y in curves], path, "both",
          xlabel="distance T − t", ylabel="‖∂L_T/∂x_t‖ (last validation)", title="Gradient through time")


def runs_val_loss(curves: list[tuple[str, list[int], list[float]]], path: str | Path) -> None:
    """The report's validation loss: per run (label, steps, val/loss) on a log scale."""
    _runs(curves, path, "major", xlabel="step", ylabel="val loss (nats/token, log scale)", title="Validation loss")


def learning_curves(curves: list[tuple[str, list[int], list[float]]], path: str | Path, title: str) -> None:
    """Validation perplexity after each epoch, one line per run (label, epochs, perplexities), log scale."""
    fig, ax = figure(grid="both")
    for label, epochs, ppl in curves:
        ax.semilogy(epochs, ppl, marker="o", markersize=3, label=label)
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 120, not 1.2 x 10^2
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set(xlabel="epoch", ylabel="validation perplexity (log scale)", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save(fig, path)


def _runs(curves: list[tuple[str, list, list[float]]], path: str | Path, grid: str, **labels: str) -> None:
    """One log-scale line with markers per run; a legend when there is any run."""
    fig, ax = figure(grid=grid)
    for label, x, y in curves:
        ax.semilogy(x, y, marker="o", label=label)
    ax.set(**labels)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    save(fig, path)
