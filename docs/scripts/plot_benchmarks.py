"""Draws ``docs/benchmarks.png`` from the tables measured in ``docs/benchmarks.md``.

Run from the repository root: ``.venv/bin/python docs/scripts/plot_benchmarks.py``. The
figures are read from the Markdown tables, never typed in here, so the plot cannot drift
from the page: re-run this after re-measuring.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

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
    found = re.search(r"[-+]?\d[\d,]*(?:\.\d+)?", cell)
    if found is None:
        raise ValueError(f"no number in table cell {cell!r}")
    return float(found[0].replace(",", ""))


def plot(benchmarks_md: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_table(benchmarks_md.read_text(encoding="utf-8"), "Metadata creation")
    labels = [row[0].replace("`", "") for row in rows]
    fast = [number(row[1]) for row in rows]
    slow = [number(row[2]) for row in rows]

    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    y = range(len(rows))
    height = 0.38
    ax.barh([i - height / 2 for i in y], fast, height, label="datarax MetadataManager")
    ax.barh([i + height / 2 for i in y], slow, height, label="straightforward baseline")
    for i, (f, s) in enumerate(zip(fast, slow, strict=True)):
        ax.annotate(f"{f / s:,.0f}x", (f, i - height / 2), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("records per second (log scale, higher is better)")
    ax.set_title("Metadata creation, as measured in docs/benchmarks.md", fontsize=10)
    ax.set_xlim(right=max(fast) * 8)  # room for the ratio labels
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--page", type=Path, default=DOCS / "benchmarks.md")
    parser.add_argument("--out", type=Path, default=DOCS / "benchmarks.png")
    args = parser.parse_args(argv)
    plot(args.page, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
