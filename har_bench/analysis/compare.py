"""``har-bench compare PATH...``: many runs -> one table of mean ± std per configuration.

Runs are found under the given paths (run dirs, sweep dirs, parent folders or globs) by their
``metrics.json`` and grouped by :mod:`har_bench.analysis.grouping`; :mod:`har_bench.analysis.tables`
prints and writes the table, :mod:`har_bench.analysis.plots` the figures. Nothing here imports
torch, so the command answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from har_bench.analysis.grouping import (
    DEFAULT_METRICS,
    METRICS,
    compare,
    find_run_dirs,
    load_run,
    sort_groups,
)
from har_bench.analysis.tables import COUNT_COLUMNS, markdown, print_table, write_csv
from har_bench.core.fs import atomic_write_text
from har_bench.runs import rundir

# -- command -----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="har-bench compare",
        description=(
            "Compare runs: mean ± std (n) per configuration over seeds and folds. PATHs are run "
            "dirs, sweep dirs, folders holding runs, or globs."
        ),
        epilog=(
            "metrics: "
            + ", ".join(METRICS)
            + ". accuracy/macro_f1 are test-set figures (the best-on-validation weights)."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help="comma-separated metrics to show (default: %(default)s)",
    )
    p.add_argument("--sort", metavar="METRIC", help="sort best first by this metric")
    p.add_argument("--reverse", action="store_true", help="worst first")
    p.add_argument(
        "--out",
        type=Path,
        help="where comparison.csv/.md (and plots) go; default: the PATH when it is a single "
        "directory, else the current directory",
    )
    p.add_argument("--plot", action="store_true", help="write PNG plots next to the tables")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p


def _parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"--metrics: unknown {', '.join(unknown) or '(none given)'}; expected some of "
            + ", ".join(METRICS)
        )
    return names


TITLE = "har-bench compare"
TABLES = ("comparison.csv", "comparison.md")


def written_by_compare(path: Path) -> bool:
    """Whether ``path`` is a table or figure this command wrote (comparison.md's title,
    comparison.csv's count columns, a figure's PNG text), so writing over it loses nothing of
    the user's."""
    if path.suffix == ".png":
        from har_bench.analysis.plots import is_compare_figure

        return is_compare_figure(path)
    try:
        with open(path, newline="", errors="replace") as f:
            first = f.readline().rstrip("\r\n")
    except OSError:
        return False
    if path.suffix == ".md":
        return first == f"# {TITLE}"
    return set(COUNT_COLUMNS) <= set(next(csv.reader([first]), []))


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        metrics = _parse_metrics(args.metrics)
        if args.sort is not None and args.sort not in METRICS:
            raise ValueError(f"--sort {args.sort}: expected one of {', '.join(METRICS)}")
        run_dirs = find_run_dirs(args.paths)
        if not run_dirs:
            raise ValueError(
                f"no runs (folders with {rundir.METRICS}) under {', '.join(args.paths)}"
            )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    comp = compare([load_run(d) for d in run_dirs])
    groups = sort_groups(comp.groups, args.sort, args.reverse) if args.sort else comp.groups
    print_table(comp, metrics, groups, TITLE)
    if args.no_write:
        return 0
    out = args.out
    if out is None:
        single = len(args.paths) == 1 and Path(args.paths[0]).is_dir()
        out = Path(args.paths[0]) if single else Path.cwd()
    names = list(TABLES)
    if args.plot:
        from har_bench.analysis.plots import figure_names

        names += figure_names(comp, groups)
    for name in names:
        if (out / name).exists() and not written_by_compare(out / name):
            print(
                f"error: {out / name} exists and is not a file har-bench compare wrote; "
                "nothing was written: delete it, or pass --out DIR (or --no-write)",
                file=sys.stderr,
            )
            return 2
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = (out / name for name in TABLES)
    write_csv(csv_path, comp, metrics, groups)
    atomic_write_text(md_path, markdown(comp, metrics, groups, TITLE))
    written = [csv_path, md_path]
    if args.plot:
        from har_bench.analysis.plots import plot  # matplotlib only when plotting

        written += plot(comp, metrics, out, groups)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
