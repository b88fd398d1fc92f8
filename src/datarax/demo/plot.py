"""The demo's figure: the killed-and-resumed run's loss curve over the reference run's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from datarax.demo.training import StepLog


def plot_losses(
    path: Path,
    reference: Mapping[int, StepLog],
    killed: Mapping[int, StepLog],
    resumed: Mapping[int, StepLog],
    *,
    kill_at: int,
    resumed_from: int,
) -> Path:
    """Writes a PNG of the three runs' losses to ``path`` and returns ``path``.

    The reference is drawn as a thick pale line; the killed run (until its last logged
    step) and the resumed run (from the step it restored) as thin lines over it, so that
    where they match the reference they hide nothing but sit exactly on it.
    """
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    try:

        def curve(logs: Mapping[int, StepLog]) -> tuple[list[int], list[float]]:
            steps = sorted(logs)
            return [s + 1 for s in steps], [logs[s].loss for s in steps]

        ax.plot(*curve(reference), color="#9ecae1", linewidth=6, label="reference (never killed)")
        ax.plot(*curve(killed), color="#d62728", linewidth=1.5, label="killed run")
        ax.plot(
            *curve(resumed),
            color="#08306b",
            linewidth=1.5,
            linestyle="--",
            label=f"resumed from step {resumed_from}",
        )
        ax.axvline(kill_at, color="#d62728", linestyle=":", linewidth=1.2)
        ax.annotate(
            f"SIGKILL during the async save of step {kill_at}",
            xy=(kill_at, 0.97),
            xycoords=("data", "axes fraction"),
            xytext=(4, 0),
            textcoords="offset points",
            color="#d62728",
            fontsize=8,
            va="top",
        )
        ax.axvline(resumed_from, color="#08306b", linestyle=":", linewidth=1.2)
        ax.annotate(
            f"resumed from checkpoint {resumed_from}" if resumed_from else "resumed from scratch",
            xy=(resumed_from, 0.90),
            xycoords=("data", "axes fraction"),
            xytext=(-4, 0),
            textcoords="offset points",
            color="#08306b",
            fontsize=8,
            va="top",
            ha="right" if resumed_from else "left",
        )
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("datarax demo: killed and resumed from an Orbax checkpoint")
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
