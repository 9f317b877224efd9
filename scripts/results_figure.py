"""Draw docs/results_uci_har.png from RESULTS.md's UCI-HAR table: test accuracy (mean ± std over
seeds) against training time, one point per trained row (published rows have no time).

    python scripts/results_figure.py [--results RESULTS.md] [--out docs/results_uci_har.png]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"^\s*([\d.]+)(?:\s*±\s*([\d.]+))?\s*$")


def uci_rows(results: Path) -> list[tuple[str, float, float, float]]:
    """(model, accuracy %, std, train s) of every trained row of the UCI-HAR table."""
    rows, in_table = [], False
    for line in results.read_text().splitlines():
        if line.startswith("## "):
            in_table = line.startswith("## UCI-HAR")
            continue
        if not in_table or not line.startswith("| ") or line.startswith("| model"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        acc, train_s = FIGURE.match(cells[2]), FIGURE.match(cells[6])
        if acc is None or train_s is None:  # separator or published row
            continue
        rows.append((cells[0], float(acc[1]), float(acc[2] or 0), float(train_s[1])))
    return rows


def labels(names: list[str]) -> list[str]:
    """Each row's model name, with the first words of its note where two rows share it."""
    short = [n.split(" (")[0].replace(" with a validation part", " + val.") for n in names]
    return [
        f"{s} ({' '.join(n.split(' (')[1].split()[:2])})" if short.count(s) > 1 else s
        for s, n in zip(short, names, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results_uci_har.png")
    args = parser.parse_args()
    rows = uci_rows(args.results)
    if not rows:
        raise SystemExit(
            f"error: no UCI-HAR rows with a test accuracy and a train time in {args.results}"
        )
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for name, (_, acc, std, seconds) in zip(labels([r[0] for r in rows]), rows, strict=True):
        ax.errorbar(seconds / 60, acc, yerr=std, fmt="o", capsize=3)
        ax.annotate(
            name, (seconds / 60, acc), textcoords="offset points", xytext=(5, 3), fontsize=7
        )
    ax.set_xscale("log")
    ax.margins(x=0.2)
    ax.set_xlabel("training time, minutes (2 CPU cores, log scale)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("UCI-HAR, official subject split (RESULTS.md)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
