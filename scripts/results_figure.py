"""Draw one figure per dataset table of RESULTS.md: test accuracy (mean ± std over seeds or
folds) against training time, one point per trained row, published rows as dashed lines.

    python scripts/results_figure.py [--results RESULTS.md] [--out-dir docs]
    python scripts/results_figure.py --table UCI-HAR [--out docs/results_uci_har.png]

A dataset table is a ``## `` section whose heading names a dataset (a study of another table's
data, headed "<study>: ...", is left out); its figure is docs/results_<dataset>.png
(``har_bench.analysis.results.figure_file``, which ``har-bench results`` links RESULTS.md's
headings to). A table with fewer than two rows that have both a test accuracy and a train time
gets no figure; the script says so.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Annotation, Text  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from har_bench.analysis.results import COLUMNS, FIGURE_DIR, figure_file  # noqa: E402
from har_bench.core.fs import atomic_write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"^\s*([\d.,]+)(?:\s*±\s*([\d.,]+))?\s*$")
PUBLISHED = "*(published)*"
# Cells of a row, by the generator's columns (the first cell is the row's label).
ACCURACY = 1 + COLUMNS.index("test acc %")
TRAIN_SECONDS = 1 + COLUMNS.index("train s")
# Rows below this many trained points make no picture of a trade-off.
MIN_ROWS = 2
TIME_TICKS = [
    (0.1, "0.1 s"),
    (0.3, "0.3 s"),
    (1, "1 s"),
    (3, "3 s"),
    (10, "10 s"),
    (30, "30 s"),
    (60, "1 min"),
    (300, "5 min"),
    (600, "10 min"),
    (1800, "30 min"),
    (3600, "1 h"),
    (3 * 3600, "3 h"),
    (10 * 3600, "10 h"),
]


@dataclass
class Table:
    title: str
    trained: list[tuple[str, float, float, float]] = field(default_factory=list)
    published: list[tuple[str, float]] = field(default_factory=list)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def read_tables(results: Path) -> list[Table]:
    """Every ``## `` section of ``results`` with its trained rows (label, accuracy %, std,
    train s) and published rows (label, accuracy %)."""
    tables: list[Table] = []
    for line in results.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            tables.append(Table(line[3:].strip()))
            continue
        if not tables or not line.startswith("| ") or line.startswith("| model"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) <= TRAIN_SECONDS:
            continue
        acc, seconds = FIGURE.match(cells[ACCURACY]), FIGURE.match(cells[TRAIN_SECONDS])
        if cells[0].endswith(PUBLISHED) and acc is not None:
            tables[-1].published.append((cells[0].removesuffix(PUBLISHED).strip(), number(acc[1])))
        elif acc is not None and seconds is not None:
            row = (cells[0], number(acc[1]), number(acc[2] or "0"), number(seconds[1]))
            tables[-1].trained.append(row)
    return tables


def labels(names: list[str], width: int = 34) -> list[str]:
    """Each row's label up to its note ("minirocket (all ...)" -> "minirocket"); where rows
    share that name, the first words in which its note differs from theirs; at most ``width``
    characters."""
    split = [(n.split(" (", 1) + [""])[:2] for n in names]
    out = []
    for short, note in split:
        label = short.replace(" with a validation part", " + val.")
        others = [o for s, o in split if s == short and o != note]
        if others:
            words = re.findall(r"[^\s,;()]+", note)
            common = max(len(shared_prefix(words, re.findall(r"[^\s,;()]+", o))) for o in others)
            label += (
                f" ({' '.join(words[common : common + 4] if common < len(words) else words[:4])})"
            )
        out.append(label if len(label) <= width else label[: width - 1].rstrip() + "…")
    return out


def shared_prefix(a: list[str], b: list[str]) -> list[str]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def declutter(fig: plt.Figure, texts: list[Annotation], points: list[tuple[float, float]]) -> None:
    """Move labels (annotations placed in offset points) up until none overlaps another label
    or a point (data coordinates), the lowest first, so that close points keep readable labels."""
    renderer = fig.canvas.get_renderer()

    def box(text: Annotation) -> Bbox:  # the text alone, without its leader line
        text.update_positions(renderer)  # an annotation places its text when drawn
        return Text.get_window_extent(text, renderer)

    ax = texts[0].axes
    r = 3  # pixels around a marker's centre
    placed = [
        Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in ax.transData.transform(points)
    ]
    for text in sorted(texts, key=lambda t: box(t).y0):
        bb = box(text)
        while hits := [p for p in placed if bb.overlaps(p)]:
            dx, dy = text.xyann
            text.xyann = (dx, dy + (max(p.y1 for p in hits) - bb.y0 + 1) * 72 / fig.dpi)
            bb = box(text)
        placed.append(bb)


def draw(table: Table, out: Path) -> None:
    rows = table.trained
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    seconds = [r[3] for r in rows]
    texts = []
    for name, (_, acc, std, s) in zip(labels([r[0] for r in rows]), rows, strict=True):
        ax.errorbar(s, acc, yerr=std, fmt="o", capsize=3)
        texts.append(
            ax.annotate(
                name,
                (s, acc),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=7,
                va="bottom",
                # A leader line: a label moved away from a crowd still points at its row.
                arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 0},
            )
        )
    ax.set_xscale("log")
    ax.margins(y=0.12)  # room above the top row for labels moved up
    ax.set_xlim(min(seconds) / 2.5, max(seconds) * 6)
    low, high = ax.get_xlim()
    ticks = [(t, text) for t, text in TIME_TICKS if low <= t <= high]
    ax.xaxis.set_major_locator(FixedLocator([t for t, _ in ticks]))
    ax.set_xticklabels([text for _, text in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    for name, acc in table.published:
        ax.axhline(acc, color="0.5", linestyle="--", linewidth=0.8)
        texts.append(
            ax.annotate(
                f"{labels([name], 40)[0]} (published)",
                (0.995, acc),
                xycoords=("axes fraction", "data"),
                textcoords="offset points",
                xytext=(0, 1),
                ha="right",
                fontsize=6,
                color="0.35",
            )
        )
    ax.set_xlabel("training time (2 CPU cores, log scale)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("\n".join(textwrap.wrap(f"{table.title} (RESULTS.md)", 80)), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    declutter(fig, texts, [(r[3], r[1]) for r in rows])
    try:
        # A figure the docs link is replaced whole or not at all (a temp file beside it).
        atomic_write(out, fig.savefig)
    finally:
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT / FIGURE_DIR, help="where the figures go"
    )
    parser.add_argument(
        "--table", help="only the table whose heading starts with this (e.g. UCI-HAR)"
    )
    parser.add_argument(
        "--out", type=Path, help="with one table: its figure's path (alone: the UCI-HAR table)"
    )
    args = parser.parse_args()
    if args.out is not None and args.table is None:
        args.table = "UCI-HAR ("
    tables = [t for t in read_tables(args.results) if figure_file(t.title)]
    if args.table is not None:
        tables = [t for t in tables if t.title.startswith(args.table)][:1]
        if not tables:
            raise SystemExit(f"error: no dataset table headed {args.table!r} in {args.results}")
    if not tables:
        raise SystemExit(f"error: no dataset tables (## headings) in {args.results}")
    for table in tables:
        if len(table.trained) < MIN_ROWS:
            print(
                f"no {figure_file(table.title)} for {table.title}: {len(table.trained)} row(s) "
                f"with a test accuracy and a train time (a figure needs {MIN_ROWS})"
            )
            continue
        out = args.out or args.out_dir / figure_file(table.title)
        out.parent.mkdir(parents=True, exist_ok=True)
        draw(table, out)
        print(f"wrote {out} ({len(table.trained)} rows, {len(table.published)} published)")


if __name__ == "__main__":
    main()
