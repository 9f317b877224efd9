"""The figures of ``har-bench compare --plot``: each metric against each differing key, and
accuracy against FLOPs with its Pareto front. matplotlib is imported only when plotting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from har_bench.analysis.grouping import METRICS, Comparison, Group, hashable, sort_value
from har_bench.analysis.tables import format_key
from har_bench.core.errors import is_number

# Written into each figure's PNG text chunks and read back before writing over a file of the
# same name, so a user's own image is never replaced.
FIGURE_METADATA = {"Software": "har-bench compare"}
FLOPS_FIGURE = "accuracy_vs_flops.png"


def key_figure(key: str) -> str:
    """The figure of every metric against the swept ``key``."""
    return f"comparison_vs_{_safe(key)}.png"


def figure_names(comp: Comparison, groups: Sequence[Group]) -> list[str]:
    """The files :func:`plot` writes for these groups, in its order."""
    names = [key_figure(key) for key in comp.keys]
    if any(g.stats("accuracy")[2] and g.stats("flops")[2] for g in groups):
        names.append(FLOPS_FIGURE)
    return names


def is_compare_figure(path: Path) -> bool:
    """Whether ``path`` is a PNG that :func:`plot` wrote (its text chunks say so)."""
    from PIL import Image  # matplotlib's own image dependency

    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {})
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return all(text.get(k) == v for k, v in FIGURE_METADATA.items())


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: cost (x) as low, quality (y) as high."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot(
    comp: Comparison, metrics: Sequence[str], out_dir: Path, groups: Sequence[Group]
) -> list[Path]:
    from har_bench.runs.artifacts import pyplot, save_figure  # matplotlib only when plotting

    plt = pyplot()
    written: list[Path] = []
    for key in comp.keys:
        others = [k for k in comp.keys if k != key]
        xs_all = [g.key[key] for g in groups]
        numeric = all(is_number(x) for x in xs_all)
        categories = sorted({format_key(x) for x in xs_all}, key=lambda s: _cat_order(s, xs_all))
        ncols = min(3, len(metrics))
        nrows = -(-len(metrics) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
        for ax in axes.flat[len(metrics) :]:
            ax.set_visible(False)
        lines: dict[tuple[Any, ...], list[Group]] = {}
        for g in groups:
            lines.setdefault(tuple(hashable(g.key[k]) for k in others), []).append(g)
        for ax, m in zip(axes.flat, metrics, strict=False):
            scale = 100.0 if METRICS[m].kind == "fraction" else 1.0
            for ident, members in lines.items():
                members = sorted(members, key=lambda g: sort_value(g.key[key]))
                pts = [(g.key[key], *g.stats(m)) for g in members]
                pts = [p for p in pts if p[3] > 0]
                if not pts:
                    continue
                x = [p[0] if numeric else categories.index(format_key(p[0])) for p in pts]
                y = [p[1] * scale for p in pts]
                err = [0.0 if math.isnan(p[2]) else p[2] * scale for p in pts]
                label = ", ".join(
                    f"{k}={format_key(v)}" for k, v in zip(others, ident, strict=True)
                )
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label or None)
            if numeric and all(x > 0 for x in xs_all) and max(xs_all) / min(xs_all) >= 8:
                ax.set_xscale("log", base=2)
                ticks = sorted(set(xs_all))
                ax.set_xticks(ticks, labels=[format_key(t) for t in ticks])
            elif not numeric:
                ax.set_xticks(range(len(categories)), labels=categories, rotation=30, ha="right")
            ax.set_xlabel(key)
            ax.set_title(METRICS[m].label, fontsize=10)
            ax.grid(alpha=0.3)
        if any(others) and len(lines) > 1:
            axes[0][0].legend(fontsize=7)
        fig.suptitle(f"mean ± std over {', '.join(comp.replicates) or 'runs'} vs {key}")
        fig.tight_layout()
        path = out_dir / key_figure(key)
        save_figure(fig, path, FIGURE_METADATA)
        written.append(path)

    pts, labels = [], []
    for g in groups:
        acc, acc_sd, n = g.stats("accuracy")
        flops, _, nf = g.stats("flops")
        if n and nf:
            pts.append((flops, acc, acc_sd))
            labels.append(
                ", ".join(f"{k.rpartition('.')[2]}={format_key(g.key[k])}" for k in comp.keys)
                or "all runs"
            )
    if pts:
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        front = pareto_front([(p[0], p[1]) for p in pts])
        x = [p[0] / 1e6 for p in pts]
        y = [100 * p[1] for p in pts]
        err = [0.0 if math.isnan(p[2]) else 100 * p[2] for p in pts]
        ax.errorbar(x, y, yerr=err, fmt="o", color="tab:blue", capsize=3, label="configuration")
        ax.plot(
            [x[i] for i in front],
            [y[i] for i in front],
            "-s",
            color="tab:red",
            markerfacecolor="none",
            markersize=11,
            label="Pareto front",
        )
        for xi, yi, lab in zip(x, y, labels, strict=True):
            ax.annotate(lab, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if min(x) > 0 and max(x) / min(x) >= 8:
            ax.set_xscale("log")
        ax.set_xlabel("MFLOPs per sample")
        ax.set_ylabel("test accuracy %")
        ax.set_title("accuracy vs FLOPs (mean ± std)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / FLOPS_FIGURE
        save_figure(fig, path, FIGURE_METADATA)
        written.append(path)
    return written


def _cat_order(s: str, values: Sequence[Any]) -> int:
    return [format_key(v) for v in values].index(s)


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
