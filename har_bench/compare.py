"""``har-bench compare PATH...``: many runs -> one table of mean ± std per configuration.

Runs are found under the given paths (run dirs, sweep dirs, parent folders or globs) by their
``metrics.json``. Their saved configs (``.hydra/config.yaml`` plus the group choices of
``.hydra/hydra.yaml``) are flattened and compared: the keys whose values differ between runs
define the groups, except the replicate keys (``seed``, ``split.fold``), over which the mean,
the sample standard deviation (ddof=1) and n are taken. Only ``completed`` runs enter the
statistics; the others are counted per group and listed.

Nothing here imports torch, so the command answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from har_bench import rundir
from har_bench._fs import atomic_write, atomic_write_text
from har_bench.config import BOOKKEEPING_KEYS, flatten, key_in
from har_bench.errors import is_number

# Runs that differ only by these are repeats of one configuration.
REPLICATE_KEYS = ("seed", "split.fold")
# Where the data was read from does not change what was computed either.
IGNORED = (*BOOKKEEPING_KEYS, "dataset.root")
# Group choices worth a column of their own (model=resnet18 says more than its 12 keys).
CHOICE_GROUPS = ("model", "dataset", "split", "optimizer", "scheduler", "trainer", "experiment")
SKIP_DIRS = {rundir.CHECKPOINTS, rundir.HYDRA_DIR, ".submitit", "__pycache__"}


@dataclass(frozen=True)
class Metric:
    label: str
    source: str  # file in the run dir (a har_bench.rundir name)
    path: tuple[str, ...]  # keys into that file's JSON
    higher_is_better: bool
    kind: str  # "fraction" (shown in %), "count", "flops", "rate", "ms"


METRICS: dict[str, Metric] = {
    "accuracy": Metric("test acc %", rundir.METRICS, ("test", "accuracy"), True, "fraction"),
    "macro_f1": Metric("test F1 %", rundir.METRICS, ("test", "macro_f1"), True, "fraction"),
    "balanced_accuracy": Metric(
        "test bal-acc %", rundir.METRICS, ("test", "balanced_accuracy"), True, "fraction"
    ),
    "val_accuracy": Metric("val acc %", rundir.METRICS, ("val", "accuracy"), True, "fraction"),
    "val_macro_f1": Metric("val F1 %", rundir.METRICS, ("val", "macro_f1"), True, "fraction"),
    "params": Metric("params", rundir.MODEL_SUMMARY, ("params",), False, "count"),
    "flops": Metric("FLOPs", rundir.MODEL_SUMMARY, ("flops_per_sample",), False, "flops"),
    "train_sps": Metric("train sps", rundir.TIMINGS, ("train_samples_per_second",), True, "rate"),
    "latency_ms": Metric(
        "latency ms", rundir.TIMINGS, ("inference_latency_ms", "p50"), False, "ms"
    ),
    "train_seconds": Metric("train s", rundir.TIMINGS, ("train_seconds_total",), False, "rate"),
    "epochs": Metric("epochs", rundir.METRICS, ("epochs_trained",), True, "count"),
}
LEGEND = (
    "mean ± sample std (ddof=1) over the n completed runs of each group; test acc/F1 on the "
    "test set with the best-on-validation weights, in %; FLOPs per sample (a multiply-add = 2); "
    "train sps = training samples/s (median epoch); train s = training time of every phase "
    "(selection and refit); latency = p50 ms at batch size 1."
)
DEFAULT_METRICS = ("accuracy", "macro_f1", "params", "flops", "train_sps", "latency_ms")


@dataclass
class Run:
    path: Path
    status: str
    config: dict[str, Any]  # flattened dot keys, plus the group choices under their group name
    values: dict[str, float]  # metric name -> value (only those the run has)
    error: str | None = None
    overrides: list[str] = field(default_factory=list)
    user_error: bool = False  # failed on bad input (see har_bench.errors)


@dataclass
class Group:
    key: dict[str, Any]  # the differing (non-replicate) config values shared by the group
    runs: list[Run]

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    def stats(self, metric: str) -> tuple[float, float, int]:
        """(mean, sample std, n) over the completed runs that have the metric."""
        return mean_std([r.values[metric] for r in self.completed if metric in r.values])


@dataclass
class Comparison:
    runs: list[Run]
    groups: list[Group]
    keys: list[str]  # differing config keys that define the groups, in display order
    replicates: list[str]  # replicate keys that do vary
    constant_choices: dict[str, Any]


# -- finding and reading runs ------------------------------------------------------------------


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run dir (a folder with metrics.json) at or below each path; globs are expanded
    here too, so a quoted pattern works the same as one the shell expanded."""
    found: dict[Path, None] = {}
    for raw in paths:
        raw = str(raw)
        matches = sorted(glob.glob(os.path.expanduser(raw))) if glob.has_magic(raw) else [raw]
        for m in matches:
            p = Path(m).expanduser()
            if not p.exists():
                raise FileNotFoundError(f"{raw}: no such file or directory")
            if p.is_file():
                p = p.parent  # e.g. .../metrics.json
            for run_dir in _walk_runs(p):
                found.setdefault(run_dir.resolve(), None)
    return list(found)


def _walk_runs(root: Path) -> Iterable[Path]:
    if (root / rundir.METRICS).is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if rundir.METRICS in filenames:
            dirnames[:] = []  # a run dir holds no further runs
            yield Path(dirpath)


def load_run(run_dir: Path) -> Run:
    record = rundir.load_run(run_dir)
    values: dict[str, float] = {}
    for name, m in METRICS.items():
        v: Any = record.documents[m.source]
        for k in m.path:
            v = v.get(k) if isinstance(v, Mapping) else None
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            values[name] = float(v)
    # A refit trains a second model after the selection phase: both are the run's training time.
    refit = record.documents[rundir.METRICS].get("refit")
    if "train_seconds" in values and isinstance(refit, Mapping):
        values["train_seconds"] += sum(float(r["train_seconds"]) for r in refit.get("history", []))
    config = flatten(record.config)
    for group in CHOICE_GROUPS:
        if record.choices.get(group) is not None:
            config[group] = record.choices[group]
    # Where and on how many threads a run was timed: runs measured differently are not
    # repeats of one another for the speed columns (trainer.num_threads=null hides this).
    timings = record.documents[rundir.TIMINGS]
    for key in ("device", "torch_threads"):
        if timings.get(key) is not None:
            config[key] = timings[key]
    return Run(
        path=record.path,
        status=record.status,
        config=config,
        values=values,
        error=record.error,
        overrides=record.overrides,
        user_error=record.user_error,
    )


def _ignored(key: str) -> bool:
    return key_in(key, IGNORED)


# -- grouping ----------------------------------------------------------------------------------


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, list | dict) else v


_MISSING = "<unset>"


def differing_keys(runs: Sequence[Run]) -> list[str]:
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r.config))
    out = []
    for k in keys:
        if _ignored(k):
            continue
        if len({_hashable(r.config.get(k, _MISSING)) for r in runs}) > 1:
            out.append(k)
    return out


def _explained_by_choice(key: str, choice: str, runs: Sequence[Run]) -> bool:
    """Whether runs with the same ``choice`` (e.g. model=resnet18) all have the same ``key``:
    then the key only follows the preset and needs no column of its own."""
    seen: dict[Any, Any] = {}
    for r in runs:
        c = _hashable(r.config.get(choice, _MISSING))
        v = _hashable(r.config.get(key, _MISSING))
        if seen.setdefault(c, v) != v:
            return False
    return True


def compare(runs: Sequence[Run]) -> Comparison:
    diff = differing_keys(runs)
    replicates = [k for k in REPLICATE_KEYS if k in diff]
    keys = []
    for k in diff:
        if k in REPLICATE_KEYS:
            continue
        group = k.split(".", 1)[0]
        if "." in k and group in diff and _explained_by_choice(k, group, runs):
            continue
        keys.append(k)
    # Choices first (model, dataset, ...), then the other keys in config order.
    keys.sort(key=lambda k: (k not in CHOICE_GROUPS, 0))
    groups: dict[tuple[Any, ...], Group] = {}
    for r in runs:
        ident = tuple(_hashable(r.config.get(k, _MISSING)) for k in keys)
        g = groups.get(ident)
        if g is None:
            groups[ident] = g = Group({k: r.config.get(k, _MISSING) for k in keys}, [])
        g.runs.append(r)
    constant = {
        c: runs[0].config[c]
        for c in CHOICE_GROUPS
        if runs and c in runs[0].config and c not in diff and runs[0].config[c] is not None
    }
    ordered = sorted(groups.values(), key=lambda g: [_sort_value(g.key[k]) for k in keys])
    return Comparison(list(runs), ordered, keys, replicates, constant)


def _sort_value(v: Any) -> tuple[int, Any]:
    # Numbers before strings, each in natural order; None/unset last.
    if isinstance(v, bool):
        return (1, str(v))
    if isinstance(v, int | float):
        return (0, v)
    if v is None or v == _MISSING:
        return (2, "")
    return (1, str(v))


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan, 1
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var), n


def sort_groups(groups: list[Group], metric: str, reverse: bool = False) -> list[Group]:
    """Best first by ``metric`` (higher or lower, as the metric says); groups without it last."""
    higher = METRICS[metric].higher_is_better

    def key(g: Group) -> tuple[bool, float]:
        mean, _, n = g.stats(metric)
        if n == 0:
            return (True, 0.0)
        return (False, -mean if higher != reverse else mean)

    return sorted(groups, key=key)


# -- formatting --------------------------------------------------------------------------------


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
    if v == _MISSING:
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
    header = [*comp.keys, "n", "n_runs"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    w.writerow(header)
    for g in groups:
        row: list[Any] = [format_key(g.key[k]) for k in comp.keys]
        row += [len(g.completed), len(g.runs)]
        for m in metrics:
            mean, std, n = g.stats(m)
            row += [
                "" if math.isnan(mean) else repr(mean),
                "" if math.isnan(std) else repr(std),
            ]
            row.append(n)
        w.writerow(row)


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


# -- plots -------------------------------------------------------------------------------------


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
    from har_bench.artifacts import pyplot, save_figure  # matplotlib only when plotting

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
            lines.setdefault(tuple(_hashable(g.key[k]) for k in others), []).append(g)
        for ax, m in zip(axes.flat, metrics, strict=False):
            scale = 100.0 if METRICS[m].kind == "fraction" else 1.0
            for ident, members in lines.items():
                members = sorted(members, key=lambda g: _sort_value(g.key[key]))
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
        path = out_dir / f"comparison_vs_{_safe(key)}.png"
        save_figure(fig, path)
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
        path = out_dir / "accuracy_vs_flops.png"
        save_figure(fig, path)
        written.append(path)
    return written


def _cat_order(s: str, values: Sequence[Any]) -> int:
    return [format_key(v) for v in values].index(s)


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


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
    title = "har-bench compare"
    print_table(comp, metrics, groups, title)
    if args.no_write:
        return 0
    out = args.out
    if out is None:
        single = len(args.paths) == 1 and Path(args.paths[0]).is_dir()
        out = Path(args.paths[0]) if single else Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "comparison.csv", comp, metrics, groups)
    md = markdown(comp, metrics, groups, title)
    atomic_write_text(out / "comparison.md", md)
    written = [out / "comparison.csv", out / "comparison.md"]
    if args.plot:
        written += plot(comp, metrics, out, groups)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
