"""Draws ``docs/benchmarks.png`` from the tables measured in ``docs/benchmarks.md``.

One figure, four panels: records per second of metadata creation, the cost of the
checkpoint items against Orbax's ``JsonSave`` and ``StandardSave``, and (log-log) the
save and restore time of a host batch of N records against N, beside the same baselines.

Run from the repository root: ``.venv/bin/python docs/scripts/plot_benchmarks.py``. The
figures are read from the Markdown tables, never typed in here, so the plot cannot drift
from the page: re-run this after re-measuring.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]


def read_table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells as text, header and separator dropped) of the first table after
    the ``## heading`` line."""
    match = re.search(rf"^##[ \t]+{re.escape(heading)}[ \t]*$", markdown, re.MULTILINE)
    if match is None:
        raise ValueError(f"no '## {heading}' section in the benchmarks page")
    rows: list[list[str]] = []
    for line in markdown[match.end() :].splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    if len(rows) < 3:
        raise ValueError(f"no table under '## {heading}'")
    return rows[2:]


def number(cell: str) -> float:
    """``'1,234.5'``, ``'12.3x'`` or ``'0.85 ms'`` as a float."""
    return numbers(cell)[0]


def numbers(cell: str) -> list[float]:
    """Every number of a cell: ``'16.98 / 15.16'`` (one per run) is ``[16.98, 15.16]``."""
    found = re.findall(r"[-+]?\d[\d,]*(?:\.\d+)?", cell)
    if not found:
        raise ValueError(f"no number in table cell {cell!r}")
    return [float(n.replace(",", "")) for n in found]


def plot(benchmarks_md: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    page = benchmarks_md.read_text(encoding="utf-8")
    fig, axes = plt.subplot_mosaic(
        [["creation", "creation"], ["items", "items"], ["save", "restore"]],
        figsize=(9, 12.5), layout="constrained", height_ratios=[1.1, 1, 0.9],
    )  # fmt: skip
    _plot_creation(axes["creation"], read_table(page, "Metadata creation"))
    _plot_checkpoint(axes["items"], read_table(page, "Checkpoint plugin"))
    sizes = read_table(page, "Checkpoint cost against size")
    _plot_sizes(axes["save"], sizes, column=2, what="save + wait")
    _plot_sizes(axes["restore"], sizes, column=3, what="restore")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_creation(ax: Any, rows: list[list[str]]) -> None:
    labels = [row[0].replace("`", "") for row in rows]
    fast = [number(row[1]) for row in rows]
    slow = [number(row[2]) for row in rows]
    y = range(len(rows))
    height = 0.38
    ax.barh([i - height / 2 for i in y], fast, height, label="datarax MetadataManager")
    ax.barh([i + height / 2 for i in y], slow, height, label="straightforward baseline")
    for i, (f, s) in enumerate(zip(fast, slow, strict=True)):
        ratio = f"{f / s:,.0f}x" if f / s >= 10 else f"{f / s:.2f}x"
        ax.annotate(ratio, (f, i - height / 2), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(fast) * 8)  # room for the ratio labels
    ax.set_xlabel("records per second (log scale, higher is better)", fontsize=9)
    ax.set_title("Metadata creation", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def _plot_checkpoint(ax: Any, rows: list[list[str]]) -> None:
    """Bars: the mean of the runs the table reports; ticks on each bar: each run."""
    item = ""
    groups: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        item = row[0].replace("`", "") or item  # a blank item cell continues the one above
        variant = row[1].replace("`", "")
        groups.setdefault(f"{item}\nsave + wait", {})[variant] = numbers(row[2])
        groups.setdefault(f"{item}\nrestore", {})[variant] = numbers(row[3])
    variants = list(next(iter(groups.values())))
    height = 0.8 / len(variants)
    for v, variant in enumerate(variants):
        ys = [g + (v - (len(variants) - 1) / 2) * height for g in range(len(groups))]
        runs = [group[variant] for group in groups.values()]
        means = [sum(r) / len(r) for r in runs]
        label = variant if "Save" not in variant else f"Orbax {variant} / {variant[:-4]}Restore"
        ax.barh(ys, means, height, label=label)
        for y, r in zip(ys, runs, strict=True):
            ax.plot(r, [y] * len(r), "|", color="black", markersize=7)
    ax.set_yticks(range(len(groups)), list(groups), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median ms per operation (lower is better; ticks: each run)", fontsize=9)
    ax.set_title("Checkpoint items inside a CheckpointManager", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def _plot_sizes(ax: Any, rows: list[list[str]], column: int, what: str) -> None:
    """Log-log lines: median ms of one operation against N, one line per variant."""
    lines: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        variant = row[1].replace("`", "")
        xs, ys = lines.setdefault(variant, ([], []))
        xs.append(number(row[0]))
        runs = numbers(row[column])  # one figure per run: plot their mean
        ys.append(sum(runs) / len(runs))
    for variant, (xs, ys) in lines.items():
        ax.plot(xs, ys, "o-", label=variant, markersize=4)
    ax.set_xscale("log", base=2)
    sizes = sorted({x for xs, _ in lines.values() for x in xs})
    ax.set_xticks(sizes, [_short(n) for n in sizes], fontsize=8)
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("records in the host batch, N (log)", fontsize=9)
    ax.set_ylabel(f"median ms, {what} (log)", fontsize=9)
    ax.set_title(f"Host batch of N records: {what}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)


def _short(n: float) -> str:
    """``1048576`` as ``'1M'``, ``4096`` as ``'4k'``, ``256`` as ``'256'``."""
    for size, suffix in ((1 << 20, "M"), (1 << 10, "k")):
        if n >= size and n % size == 0:
            return f"{int(n) // size}{suffix}"
    return f"{n:g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--page", type=Path, default=DOCS / "benchmarks.md")
    parser.add_argument("--out", type=Path, default=DOCS / "benchmarks.png")
    args = parser.parse_args(argv)
    plot(args.page, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
