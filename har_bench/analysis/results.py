"""``har-bench results SPEC``: RESULTS.md generated from run directories, never typed.

The spec (YAML) lists tables; each row is either a set of runs (globs of run or sweep dirs)
with the exact command that produced them, or a published figure marked as such. Every run row
shows mean ± sample std over its completed runs (seeds or folds) of the test accuracy and
macro-F1, with params, FLOPs and training time, all read from the runs' own files.

.. code-block:: yaml

    title: har-bench results
    notes: [free text, one paragraph each]
    tables:
      - title: UCI-HAR (official subject split)
        rows:
          - label: uci_har_best
            command: har-bench -m experiment=uci_har_best seed=0,1,2
            runs: [outputs/results/uci_har_best]
          - label: SVM, 561 features (Anguita et al. 2013)
            published: {accuracy: 0.964}

With ``archive: DIR`` (relative to the base folder) the command first copies the record files
of every completed run it finds (``har_bench.runs.rundir.RECORD_FILES``: metrics, history, config,
split report, confusion matrix; no checkpoints) to ``DIR/<the run's path>``, then reads every
row from ``DIR``. Committed with RESULTS.md, the archive keeps each figure traceable to its
run's own files after ``outputs/`` is gone, and rows re-run later replace their old copies.
Nothing in a run directory is ever removed or overwritten: an archive that would put a copy
on, inside or around a run (``archive: .``) is refused, as is replacing a folder that holds
more than record files; each copy is made beside its destination and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from har_bench.analysis.grouping import find_run_dirs, load_run, mean_std
from har_bench.analysis.tables import format_stat
from har_bench.core.errors import UserError, is_number
from har_bench.core.fs import atomic_write_text
from har_bench.runs import rundir

COLUMNS = ("n", "test acc %", "test macro-F1 %", "params", "MFLOPs", "train s", "command")
# metric name in har_bench.analysis.grouping -> (how it is shown, scale)
SHOWN = {
    "accuracy": ("fraction", 1.0),
    "macro_f1": ("fraction", 1.0),
    "params": ("count", 1.0),
    "flops": ("count", 1e-6),
    "train_seconds": ("rate", 1.0),
}


# Where scripts/results_figure.py draws each dataset table's figure, relative to RESULTS.md's
# folder; RESULTS.md links a table's figure under its heading when the file is there.
FIGURE_DIR = "docs"


def figure_file(title: str) -> str | None:
    """The file name of the accuracy-against-time figure of the table ``title``: its dataset,
    the heading up to the first " (" or ",", as a slug (``UCI-HAR (...)`` -> results_uci_har.png);
    None for a study of another table's data, headed "<study>: <details>" (ablation, cardinality)."""
    name = re.split(r" \(|,", title, maxsplit=1)[0]
    if ": " in name:
        return None
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return f"results_{slug}.png" if slug else None


def _invalid(key: str, value: object, expected: str) -> UserError:
    return UserError(f"{key}={value!r} is invalid: expected {expected}")


def _check_notes(key: str, notes: object) -> None:
    if notes is not None and not (
        isinstance(notes, list) and all(isinstance(n, str) for n in notes)
    ):
        raise _invalid(key, notes, "a list of paragraphs (strings)")


def check_spec(spec: object) -> None:
    """A UserError naming the first entry of ``spec`` that :func:`render` cannot use."""
    if not isinstance(spec, Mapping):
        raise UserError(f"expected a mapping with a 'tables' list, got {type(spec).__name__}")
    if not isinstance(spec.get("tables"), list):
        raise _invalid("tables", spec.get("tables"), "a list of tables")
    _check_notes("notes", spec.get("notes"))
    for i, table in enumerate(spec["tables"]):
        where = f"tables[{i}]"
        if not isinstance(table, Mapping):
            raise _invalid(where, table, "a mapping with a 'title' and a 'rows' list")
        if not isinstance(table.get("title"), str):
            raise _invalid(f"{where}.title", table.get("title"), "a string")
        if not isinstance(table.get("rows"), list):
            raise _invalid(f"{where}.rows", table.get("rows"), "a list of rows")
        _check_notes(f"{where}.notes", table.get("notes"))
        for j, row in enumerate(table["rows"]):
            at = f"{where}.rows[{j}]"
            if not isinstance(row, Mapping) or "label" not in row:
                raise _invalid(at, row, "a mapping with a 'label'")
            if ("published" in row) == ("runs" in row):
                raise UserError(
                    f"{at} ({row['label']}): expected either 'runs' (run or sweep dir globs) "
                    "or 'published' figures, not both or neither"
                )
            if "published" in row:
                pub = row["published"]
                if not (
                    isinstance(pub, Mapping)
                    and pub
                    and all(
                        k in ("accuracy", "macro_f1") and is_number(v) and 0 <= v <= 1
                        for k, v in pub.items()
                    )
                ):
                    raise _invalid(
                        f"{at}.published", pub, "accuracy and/or macro_f1 as fractions in [0, 1]"
                    )
            elif not (
                isinstance(row["runs"], list)
                and row["runs"]
                and all(isinstance(r, str) for r in row["runs"])
            ):
                raise _invalid(f"{at}.runs", row["runs"], "a list of run or sweep dir globs")


def _run_rows(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for t in spec.get("tables", []) for r in t.get("rows", []) if r.get("runs")]


def archive_runs(spec: Mapping[str, Any], base: Path, archive: Path) -> list[Path]:
    """Copy the record of every completed run the spec's rows find under ``base`` to
    ``archive``, at the run's path relative to ``base``; returns the copies made.

    Refused (UserError) before anything is copied when a copy would land on, inside or around
    any run the spec finds (``archive: .`` would copy each run onto itself)."""
    pairs: dict[Path, Path] = {}
    for row in _run_rows(spec):
        for pattern in row["runs"]:
            try:
                found = find_run_dirs([base / pattern])
            except FileNotFoundError:
                continue  # not on this machine: the archive keeps its earlier copy
            for run_dir in found:
                rel = Path(os.path.relpath(run_dir, base.resolve()))
                status = rundir.read_status(run_dir).get("status")
                if rel.parts[:1] == ("..",) or status != "completed":
                    continue
                pairs[run_dir] = archive / rel
    for dest in pairs.values():
        for run_dir in pairs:
            if rundir.overlaps(run_dir, dest):
                raise UserError(
                    f"archive={spec['archive']!r} would copy a run's record to {dest}, onto or "
                    f"around the run {run_dir}: choose an archive folder outside every run "
                    "directory (e.g. docs/runs)"
                )
    for run_dir, dest in pairs.items():
        rundir.copy_record(run_dir, dest)
    return list(pairs.values())


def _row(label: str, spec: Mapping[str, Any], base: Path) -> list[str]:
    if "published" in spec:
        pub = spec["published"]
        cells = [f"{100 * pub[k]:.2f}" if k in pub else "" for k in ("accuracy", "macro_f1")]
        return [label + " *(published)*", "", *cells, "", "", "", str(spec.get("source", ""))]
    patterns = [str(base / p) for p in spec.get("runs", [])]
    try:
        runs = [load_run(d) for d in find_run_dirs(patterns)]
    except FileNotFoundError:
        runs = []
    if not runs:
        print(f"note: {label}: no runs under {', '.join(spec['runs'])}", file=sys.stderr)
    done = [r for r in runs if r.status == "completed"]
    cells = [label, str(len(done)) + (f" of {len(runs)}" if len(runs) != len(done) else "")]
    for metric, (kind, scale) in SHOWN.items():
        values = [r.values[metric] * scale for r in done if metric in r.values]
        mean, std, n = mean_std(values)
        if kind == "count" and scale != 1.0:
            cells.append("-" if n == 0 else f"{mean:.1f}")
        else:
            cells.append(format_stat(mean, std, n, kind, len(done)))
    cells.append(f"`{spec['command']}`" if spec.get("command") else "")
    return cells


def render(spec: Mapping[str, Any], base: Path, figures: Path | None = None) -> str:
    """The markdown for ``spec``; run globs are relative to ``base``. With ``figures`` (the
    folder the markdown is written to), a table whose :func:`figure_file` is in its
    :data:`FIGURE_DIR` is linked under its heading."""
    lines = [f"# {spec.get('title', 'Results')}", ""]
    lines += [
        "Generated by `har-bench results` from the run directories below; every figure is read",
        "from the runs' own `metrics.json`, `model_summary.json` and `timings.json`. Test",
        "figures are mean ± sample std (ddof=1) over the n completed runs (seeds or folds), in %;",
        "selection is on validation subjects only. *(published)* rows are quoted, not re-run.",
        "",
    ]
    for note in spec.get("notes", []):
        lines += [str(note).strip(), ""]
    for table in spec.get("tables", []):
        lines += [f"## {table['title']}", ""]
        name = figure_file(str(table["title"]))
        if figures is not None and name and (figures / FIGURE_DIR / name).is_file():
            alt = f"Test accuracy against training time: {table['title']}"
            lines += [f"![{alt}]({FIGURE_DIR}/{name})", ""]
        for note in table.get("notes", []):
            lines += [str(note).strip(), ""]
        lines.append("| model | " + " | ".join(COLUMNS) + " |")
        lines.append("| --- |" + " ---: |" * (len(COLUMNS) - 1) + " --- |")
        for row in table.get("rows", []):
            cells = _row(str(row["label"]), row, base)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def yaml_error(path: Path, error: Exception) -> str:
    """PyYAML's several-line message as one: the file, line and column, and what is wrong."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    context = getattr(error, "context", None)
    return f"{where}: invalid YAML: " + (f"{context}, {problem}" if context else problem)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="har-bench results",
        description="Write RESULTS.md from a spec of tables of run directories.",
    )
    p.add_argument("spec", type=Path, help="YAML spec (see har_bench/analysis/results.py)")
    p.add_argument("--out", type=Path, default=Path("RESULTS.md"))
    p.add_argument(
        "--base",
        type=Path,
        default=Path.cwd(),
        help="folder the spec's run globs are relative to (default: the current directory)",
    )
    args = p.parse_args(list(argv))
    import yaml

    try:
        spec = yaml.safe_load(args.spec.read_text(encoding="utf-8"))
        check_spec(spec)
    except yaml.YAMLError as e:
        print(f"error: {yaml_error(args.spec, e)}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError, UserError) as e:
        print(f"error: {args.spec}: {e}", file=sys.stderr)
        return 2
    base = args.base
    if spec.get("archive"):
        archive = args.base / str(spec["archive"])
        try:
            copied = archive_runs(spec, args.base, archive)
        except (OSError, UserError) as e:
            print(f"error: {args.spec}: {e}", file=sys.stderr)
            return 2
        print(f"archived {len(copied)} run record(s) in {archive}")
        base = archive
    atomic_write_text(args.out, render(spec, base, figures=args.out.parent))
    print(f"wrote {args.out}")
    return 0
