"""The demo's figure: the killed and the resumed runs' loss curves over the reference's."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no window, no global figure to close

from examples.demo.training import Logs, loss

RED, BLUE = "#d62728", "#08306b"
LABEL = dict(xycoords=("data", "axes fraction"), textcoords="offset points", fontsize=8, va="top")


def plot_losses(path: Path, reference: Logs, killed: Logs, resumed: Logs, *, kill_at: int,
                resumed_from: int) -> None:  # fmt: skip
    """Writes a PNG of the runs' losses to ``path``: the reference as a thick pale line,
    the others as thin lines that sit exactly on it where they match it."""
    fig = Figure(figsize=(8, 4.5), dpi=120)
    ax = fig.subplots()
    curve = lambda logs: ([s + 1 for s in sorted(logs)], [loss(logs[s]) for s in sorted(logs)])  # noqa: E731
    ax.plot(*curve(reference), color="#9ecae1", linewidth=6, label="reference (never killed)")
    ax.plot(*curve(killed), color=RED, linewidth=1.5, label="killed run")
    resumed_label = f"resumed from step {resumed_from}"
    ax.plot(*curve(resumed), color=BLUE, linewidth=1.5, linestyle="--", label=resumed_label)
    source = f"resumed from checkpoint {resumed_from}" if resumed_from else "resumed from scratch"
    for x, y, dx, color, text, ha in (
        (kill_at, 0.97, 4, RED, f"SIGKILL during the async save of step {kill_at}", "left"),
        (resumed_from, 0.90, -4, BLUE, source, "right" if resumed_from else "left"),
    ):
        ax.axvline(x, color=color, linestyle=":", linewidth=1.2)
        ax.annotate(text, xy=(x, y), xytext=(dx, 0), color=color, ha=ha, **LABEL)
    title = "datarax demo: killed and resumed from an Orbax checkpoint"
    ax.set(xlabel="step", ylabel="training loss", title=title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
