"""The tables of ``har-bench compare``: numbers formatted as mean ± std (n), printed with rich
and written as CSV and Markdown. Nothing here imports torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from har_bench.analysis.grouping import LEGEND, METRICS, MISSING, Comparison, Group
from har_bench.core.fs import atomic_write


def format_value(v: float, kind: str) -> str:
    if math.isnan(v):
        return "-"
    if kind == "fraction":
        return f"{100 * v:.2f}"
    if kind in ("count", "flops"):
        for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.3g}{unit}"
        return f"{v:.3g}"
    if kind == "ms":
        return f"{v:.3g}"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"


def _format_mean_std(mean: float, std: float, kind: str) -> str:
    """Rates and latencies: mean and std to the same decimal place, set by the mean's
    significant digits ("1087 ± 18", "2.00 ± 0.60"), unless the std would round to zero."""
    sig = 3 if kind == "ms" else 4
    if kind in ("fraction", "count", "flops") or not 1e-3 <= abs(mean) < 1e6:
        return f"{format_value(mean, kind)} ± {format_value(std, kind)}"
    decimals = 0 if abs(mean) >= 1000 else max(0, sig - 1 - math.floor(math.log10(abs(mean))))
    if round(std, decimals) == 0:
        return f"{format_value(mean, kind)} ± {format_value(std, kind)}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def format_stat(mean: float, std: float, n: int, kind: str, group_n: int) -> str:
    if n == 0:
        return "-"
    text = format_value(mean, kind)
    if n > 1 and std != 0:
        text = _format_mean_std(mean, std, kind)
    if n != group_n:
        text += f" (n={n})"
    return text


def format_key(v: Any) -> str:
    if v == MISSING:
        return "-"
    if isinstance(v, list):
        return "x".join(map(str, v))
    return str(v)


def table_rows(
    comp: Comparison, metrics: Sequence[str], groups: Sequence[Group]
) -> tuple[list[str], list[list[str]]]:
    show_failed = any(len(g.completed) != len(g.runs) for g in groups)
    header = [*comp.keys, "n", *(["not completed"] if show_failed else [])]
    header += [METRICS[m].label for m in metrics]
    rows = []
    for g in groups:
        n = len(g.completed)
        row = [format_key(g.key[k]) for k in comp.keys] + [str(n)]
        if show_failed:
            row.append(str(len(g.runs) - n) if len(g.runs) != n else "")
        for m in metrics:
            row.append(format_stat(*g.stats(m), METRICS[m].kind, n))
        rows.append(row)
    return header, rows


def write_csv(
    path: Path, comp: Comparison, metrics: Sequence[str], groups: Sequence[Group]
) -> None:
    import csv

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            _write_rows(csv.writer(f), comp, metrics, groups)

    atomic_write(path, write)


def _write_rows(w: Any, comp: Comparison, metrics: Sequence[str], groups: Sequence[Group]) -> None:
    """The comparison table as CSV rows: the swept keys, counts, then mean/std/n per metric."""
    header, rows = csv_rows(comp, metrics, groups)
    w.writerow(header)
    for row in rows:
        w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])


# The counts every comparison.csv has after the swept keys (also how compare knows its own file).
COUNT_COLUMNS = ("n", "n_runs")


def csv_rows(
    comp: Comparison, metrics: Sequence[str], groups: Sequence[Group]
) -> tuple[list[str], list[list[Any]]]:
    """The comparison table as numbers (NaN where a metric is missing): the swept keys, counts,
    then mean/std/n per metric; comparison.csv and ``har_bench.compare`` hold these."""
    header = [*comp.keys, *COUNT_COLUMNS]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    rows = []
    for g in groups:
        row: list[Any] = [format_key(g.key[k]) for k in comp.keys]
        row += [len(g.completed), len(g.runs)]
        for m in metrics:
            mean, std, n = g.stats(m)
            row += [float(mean), float(std), n]
        rows.append(row)
    return header, rows


def markdown(comp: Comparison, metrics: Sequence[str], groups: Sequence[Group], title: str) -> str:
    header, rows = table_rows(comp, metrics, groups)
    lines = [f"# {title}", ""]
    lines += _context_lines(comp)
    lines += [
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < len(comp.keys) else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", LEGEND]
    bad = [r for r in comp.runs if r.status != "completed"]
    if bad:
        lines += ["", "Not completed:", ""]
        lines += [f"- `{r.path}`: {r.status}" + (f" ({r.error})" if r.error else "") for r in bad]
    return "\n".join(lines) + "\n"


def _context_lines(comp: Comparison) -> list[str]:
    n_runs, n_groups = len(comp.runs), len(comp.groups)
    lines = [f"{n_runs} run{'s' * (n_runs != 1)} in {n_groups} group{'s' * (n_groups != 1)}."]
    if comp.replicates:
        lines.append(f"Replicates (averaged over): {', '.join(comp.replicates)}.")
    else:
        lines.append("No runs differ only by seed or split.fold: each group is a single run.")
    if comp.keys:
        lines.append(f"Differing settings: {', '.join(comp.keys)}.")
    if comp.constant_choices:
        same = " ".join(f"{k}={v}" for k, v in comp.constant_choices.items())
        lines.append(f"Same in all runs: {same}.")
    return lines


def print_table(
    comp: Comparison, metrics: Sequence[str], groups: Sequence[Group], title: str
) -> None:
    from rich.table import Table

    header, rows = table_rows(comp, metrics, groups)
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < len(comp.keys) else "right")
    for r in rows:
        table.add_row(*r)
    console = rich_console()
    console.print(table)
    for line in _context_lines(comp):
        console.print(line, highlight=False)
    console.print(LEGEND, highlight=False)
    bad = [r for r in comp.runs if r.status != "completed"]
    for r in bad:
        console.print(
            f"[yellow]not completed[/yellow]: {r.path} ({r.status}"
            + (f": {r.error}" if r.error else "")
            + ")",
            highlight=False,
        )


def rich_console() -> Any:
    from rich.console import Console

    console = Console()
    # Piped into a file, rich would wrap at 80 columns and cut the table's cells.
    return console if console.is_terminal else Console(width=200)
