"""Every PNG the project draws, in one place: training's loss, gradient-norm and gradient-through-time
plots, the agreement probe's accuracy plot, the report's comparison plots, and the lecture's pictures
(the sampling procedure step by step, entropy per step, bits per character).

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


# --- the lecture's pictures (the sample stage and notebooks/lecture.ipynb) ----------------------------------


def shown(token: str, width: int = 10) -> str:
    """A token as a cell shows it: whitespace made visible, long words cut."""
    token = token.replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥")
    return token if len(token) <= width else token[: width - 1] + "…"


def sampling_steps(trace: dict, path: str | Path, title: str) -> None:
    """The sampling procedure, one row per step (rnnlab.sampling.Trace.to_json): the token fed in x<t>,
    the token drawn ŷ<t> with its probability (a rejected `<unk>` shown struck out, then the redraw),
    an arrow feeding it back as the next row's input, and the most likely candidates of the softmax it
    was drawn from, shaded by probability, the drawn one framed (the rejected `<unk>` in red)."""
    from matplotlib.patches import Rectangle

    steps, top = trace["steps"], max((len(s["top"]) for s in trace["steps"]), default=1)
    fig, ax = figure(height=1.3 + 0.3 * max(len(steps), 1))
    mono = {"ha": "center", "va": "center", "family": "monospace"}
    for y, step in enumerate(steps):
        rejected = step["rejected"]
        ax.text(0.4, y, f"{y + 1}", fontsize=7, color="grey", **mono)
        ax.text(1.2, y, shown(step["input"]), fontsize=8, **mono)
        drawn = f"{shown(step['drawn'])} {step['drawn_prob']:.2f}"
        ax.text(2.6, y, ("✗<unk>→" if rejected else "") + drawn, fontsize=8, weight="bold",
                color="tab:red" if rejected else "black", **mono)
        if y + 1 < len(steps):  # the draw is the next step's input
            ax.annotate("", xy=(1.45, y + 0.8), xytext=(2.2, y + 0.25),
                        arrowprops={"arrowstyle": "->", "color": "grey", "linewidth": 0.8})
        for x, (token, p) in enumerate(step["top"], start=4):
            struck = rejected and token == step["first"]
            ax.add_patch(Rectangle((x, y - 0.45), 0.96, 0.9, color=(0.12, 0.47, 0.71, 0.08 + 0.8 * p)))
            if token == step["drawn"] or struck:
                ax.add_patch(Rectangle((x, y - 0.45), 0.96, 0.9, fill=False, linewidth=1.5,
                                       edgecolor="tab:red" if struck else "black"))
            ax.text(x + 0.48, y, f"{shown(token, 8)}\n{p:.2f}", fontsize=6.5, color="tab:red" if struck else "black",
                    **mono)
    heads = [(0.4, "t"), (1.2, "x⟨t⟩ in"), (2.6, "ŷ⟨t⟩ drawn, p"),
             (4 + top / 2, f"softmax: the {top} most likely")]
    for x, head in heads:
        ax.text(x, -1, head, ha="center", va="center", fontsize=7.5, weight="bold")
    ax.set_xlim(0, top + 4)
    ax.set_ylim(max(len(steps), 1), -1.6)
    ax.axis("off")
    prime = "".join(trace["prime"][1:])
    start = f"start x⟨1⟩ = {shown(trace['prime'][0])}" + (f", prime {shown(prime, 30)!r}" if prime else "")
    ax.set_title(f"{title}\n{start}; the sample stopped at: {trace['stopped']}", fontsize=9)
    save(fig, path)


def entropy_steps(curves: list[tuple[str, list[float]]], path: str | Path, title: str) -> None:
    """Entropy (bits) of the distribution drawn from at each step, one line per setting (label, values)."""
    fig, ax = figure()
    for label, values in curves:
        ax.plot(range(1, len(values) + 1), values, marker=".", label=label, linewidth=1)
    ax.set(xlabel="step t", ylabel="entropy of the softmax drawn from (bits)", title=title)
    if curves:
        ax.legend(fontsize=8)
    save(fig, path)


def clipping(runs: list[tuple[str, list[list], list[list]]], path: str | Path, title: str) -> None:
    """Runs side by side (label, grad_norm.csv rows [step, pre, post, fraction], loss.csv rows [step, loss]):
    the gradient norm before (solid) and after (dashed) clipping, log scale, and the training loss."""
    fig, (top, bottom) = figure(2, height=5.6, sharex=True, height_ratios=[3, 2])
    for i, (label, grads, losses) in enumerate(runs):
        colour = f"C{i}"
        top.semilogy([r[0] for r in grads], [max(r[1], TINY) for r in grads], color=colour, label=f"{label}: before")
        top.semilogy([r[0] for r in grads], [max(r[2], TINY) for r in grads], color=colour, linestyle="--",
                     label=f"{label}: after clipping")
        bottom.semilogy([r[0] for r in losses], [r[1] for r in losses], color=colour, label=label)
    top.set(ylabel="‖gradient‖ (log scale)", title=title)
    bottom.set(xlabel="step", ylabel="training loss (nats/token, log)")
    top.legend(fontsize=7)
    save(fig, path)


def bars(values: dict[str, float], path: str | Path, ylabel: str, title: str) -> None:
    """One labelled bar per entry (e.g. bits per character of a char and a word model)."""
    fig, ax = figure()
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"][: len(values)]
    bars_ = ax.bar(list(values), list(values.values()), color=colours)
    ax.bar_label(bars_, fmt="%.3f")
    ax.set(ylabel=ylabel, title=title)
    save(fig, path)
