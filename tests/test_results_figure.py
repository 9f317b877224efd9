"""scripts/results_figure.py: one accuracy-against-time figure per dataset table of a RESULTS.md
written by ``har-bench results`` (from fabricated runs), none for a table of fewer than two
trained rows or for a study of another table's data; RESULTS.md links the figures drawn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from test_compare import make_run

import har_bench
from har_bench.cli import main

# The script beside the package under test (the checkout whose har_bench is imported).
ROOT = Path(har_bench.__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "results_figure.py"


def fake_runs(folder: Path, accuracies: list[float], seconds: float) -> str:
    for seed, acc in enumerate(accuracies):
        run = make_run(folder / str(seed), seed=seed, acc=acc, f1=acc)
        timings = json.loads((run / "timings.json").read_text())
        (run / "timings.json").write_text(json.dumps(timings | {"train_seconds_total": seconds}))
    return str(folder.name)


def write_results(tmp_path: Path, out: Path) -> None:
    """RESULTS.md as the generator writes it: a dataset table of three trained rows and a
    published one, a dataset table of one row, a study table of two rows."""
    rows = {
        name: {"label": label, "command": "har-bench", "runs": [fake_runs(tmp_path / name, a, s)]}
        for name, label, a, s in [
            ("fast", "minirocket (all training subjects)", [0.96, 0.97], 10.0),
            ("fast2", "minirocket (16 training subjects)", [0.95], 8.0),
            ("slow", "resnext50 (the article's)", [0.98, 0.99, 0.985], 3000.0),
            ("one", "uea_best", [0.9], 40.0),
        ]
    }
    spec = {
        "tables": [
            {
                "title": "UCI-HAR (official subject split, 2,947 test windows)",
                "rows": [
                    rows["fast"],
                    rows["fast2"],
                    rows["slow"],
                    {"label": "SVM (Anguita 2013)", "published": {"accuracy": 0.964}},
                ],
            },
            {"title": "UEA Tiny, a single row", "rows": [rows["one"]]},
            {"title": "Ablation: each part removed", "rows": [rows["fast"], rows["slow"]]},
        ]
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    argv = ["results", str(tmp_path / "spec.yaml"), "--out", str(out), "--base", str(tmp_path)]
    assert main(argv) == 0


def draw(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_one_figure_per_dataset_table_of_two_rows_or_more(tmp_path):
    results = tmp_path / "site" / "RESULTS.md"
    results.parent.mkdir()
    write_results(tmp_path, results)
    figures = results.parent / "docs"
    done = draw("--results", results, "--out-dir", figures)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in figures.iterdir()) == ["results_uci_har.png"]
    assert (figures / "results_uci_har.png").read_bytes()[:4] == b"\x89PNG"
    # Named by the figure it would be, the heading split as har-bench results splits it.
    assert "no results_uea_tiny.png for UEA Tiny, a single row: 1 row(s)" in done.stdout
    assert "(3 rows, 1 published)" in done.stdout

    # The documented single figure: --out alone draws the UCI-HAR table there.
    done = draw("--results", results, "--out", tmp_path / "one.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "one.png").is_file()

    # Written again, RESULTS.md links each figure drawn under its table's heading, no other.
    spec = tmp_path / "spec.yaml"
    argv = ["results", str(spec), "--out", str(results), "--base", str(tmp_path)]
    assert main(argv) == 0
    text = results.read_text()
    _, rest = text.split("## UCI-HAR (official subject split, 2,947 test windows)\n\n", 1)
    assert rest.startswith("![Test accuracy against training time: UCI-HAR")
    assert rest.splitlines()[0].endswith("](docs/results_uci_har.png)")
    assert text.count("](docs/results_") == 1


def test_a_figure_is_replaced_whole(tmp_path):
    """Drawn into a temp file and renamed over the old figure: a reader (or a second link to
    the old file) never sees a half-written one."""
    results = tmp_path / "site" / "RESULTS.md"
    results.parent.mkdir()
    write_results(tmp_path, results)
    out = tmp_path / "docs" / "results_uci_har.png"
    out.parent.mkdir()
    out.write_bytes(b"old figure")
    os.link(out, tmp_path / "kept.png")
    done = draw("--results", results, "--out", out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "kept.png").read_bytes() == b"old figure"  # the old file, untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["results_uci_har.png"]
