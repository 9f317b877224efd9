"""`har-bench results`: RESULTS.md from run dirs (fabricated here) and published figures."""

from __future__ import annotations

import pytest
import yaml
from test_compare import make_run

from har_bench.cli import main


def test_results_markdown_from_runs_and_published_rows(tmp_path, capsys):
    for seed, acc in enumerate((0.96, 0.97, 0.98)):
        make_run(tmp_path / "runs" / "best" / str(seed), seed=seed, acc=acc, f1=acc - 0.01)
    make_run(tmp_path / "runs" / "best" / "3", seed=3, status="failed")
    spec = {
        "title": "Test results",
        "tables": [
            {
                "title": "UCI-HAR",
                "rows": [
                    {"label": "best", "command": "har-bench -m seed=0,1,2", "runs": ["runs/best"]},
                    {"label": "not run yet", "runs": ["runs/missing"]},
                    {"label": "SVM", "published": {"accuracy": 0.964}, "source": "Anguita 2013"},
                ],
            }
        ],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "RESULTS.md"
    code = main(
        ["results", str(tmp_path / "spec.yaml"), "--out", str(out), "--base", str(tmp_path)]
    )
    assert code == 0, capsys.readouterr().err
    lines = {line.split(" | ")[0]: line for line in out.read_text().splitlines() if "|" in line}
    best = lines["| best"].split(" | ")
    assert best[1] == "3 of 4"  # the failed run is counted, not averaged
    assert best[2] == "97.00 ± 1.00" and best[3] == "96.00 ± 1.00"
    assert best[-1] == "`har-bench -m seed=0,1,2` |"
    assert lines["| not run yet"].split(" | ")[1] == "0"
    assert "note: not run yet: no runs under runs/missing" in capsys.readouterr().err
    assert "96.40" in lines["| SVM *(published)*"]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("just text", "expected a mapping with a 'tables' list, got str"),
        ("tables: 3", "tables=3 is invalid: expected a list of tables"),
        ("tables: [{rows: []}]", "tables[0].title=None is invalid: expected a string"),
        ("tables: [{title: T, rows: x}]", "tables[0].rows='x' is invalid: expected a list"),
        ("{notes: text, tables: []}", "notes='text' is invalid: expected a list of paragraphs"),
        ("tables: [{title: T, rows: [{runs: [a]}]}]", "tables[0].rows[0]={'runs': ['a']} is"),
        ("tables: [{title: T, rows: [{label: x, runs: 3}]}]", "rows[0].runs=3 is invalid"),
        ("tables: [{title: T, rows: [{label: x}]}]", "(x): expected either 'runs'"),
        (
            "tables: [{title: T, rows: [{label: x, runs: [a], published: {accuracy: 0.9}}]}]",
            "not both or neither",
        ),
        (
            "tables: [{title: T, rows: [{label: svm, published: {accuracy: 96.4}}]}]",
            "published={'accuracy': 96.4} is invalid: expected accuracy and/or macro_f1",
        ),
    ],
)
def test_results_bad_spec_is_one_line(tmp_path, capsys, spec, needle):
    (tmp_path / "spec.yaml").write_text(spec)
    out = tmp_path / "RESULTS.md"
    assert main(["results", str(tmp_path / "spec.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


def test_results_archive_keeps_rows_after_the_run_dirs_are_gone(tmp_path, capsys):
    import shutil

    for seed, acc in enumerate((0.90, 0.92)):
        make_run(tmp_path / "outputs" / "best" / str(seed), seed=seed, acc=acc, f1=acc)
    make_run(tmp_path / "outputs" / "best" / "2", seed=2, status="failed")
    row = {"label": "best", "command": "har-bench", "runs": ["outputs/best"]}
    spec = {"archive": "docs/runs", "tables": [{"title": "T", "rows": [row]}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "RESULTS.md"
    args = ["results", str(tmp_path / "spec.yaml"), "--out", str(out), "--base", str(tmp_path)]

    def best_cells() -> list[str]:
        assert main(args) == 0, capsys.readouterr().err
        return next(x for x in out.read_text().splitlines() if x.startswith("| best")).split(" | ")

    assert best_cells()[1:3] == ["2", "91.00 ± 1.41"]  # the failed run is not archived
    archived = tmp_path / "docs" / "runs" / "outputs" / "best" / "0"
    assert (archived / "metrics.json").is_file() and (archived / ".hydra" / "config.yaml").is_file()
    shutil.rmtree(tmp_path / "outputs")
    assert best_cells()[1:3] == ["2", "91.00 ± 1.41"]
    # A run made again replaces its archived copy; the others stay.
    make_run(tmp_path / "outputs" / "best" / "1", seed=1, acc=0.96, f1=0.96)
    assert best_cells()[1:3] == ["2", "93.00 ± 4.24"]


def _archive_spec(tmp_path, archive: str, runs: str = "outputs/best") -> list[str]:
    row = {"label": "best", "command": "har-bench", "runs": [runs]}
    spec = {"archive": archive, "tables": [{"title": "T", "rows": [row]}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "RESULTS.md"
    return ["results", str(tmp_path / "spec.yaml"), "--out", str(out), "--base", str(tmp_path)]


def _tree(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    ("archive", "runs"),
    [
        (".", "outputs/best"),  # each copy would be the run itself
        ("outputs/best/0/copies", "outputs/best"),  # inside a run
        (".", "outputs/best/0"),
        ("..", "outputs/best"),  # the copies land on another folder's runs
    ],
)
def test_results_archive_never_touches_a_run(tmp_path, capsys, archive, runs):
    """An archive on, inside or around the runs, or onto other runs, is refused before
    anything is written; every run, checkpoints included, stays byte for byte."""
    base = tmp_path / "base"
    for seed in (0, 1):
        run = make_run(base / "outputs" / "best" / str(seed), seed=seed)
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    other = make_run(tmp_path / "outputs" / "best" / "0", seed=7)  # where ".." copies would go
    (other / "train.log").write_text("log")
    args = _archive_spec(tmp_path, archive, runs)
    args[-1] = str(base)
    before = _tree(tmp_path)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "refusing to replace" in err or "outside every run" in err, err
    assert _tree(tmp_path) == before  # nothing removed, nothing changed, nothing added


def test_results_archive_copy_is_atomic_and_skips_linked_records(tmp_path, capsys, monkeypatch):
    """A copy that fails half-way leaves the earlier copy as it was and no temporary folder;
    a record file that is a symbolic link is refused rather than its target copied."""
    import shutil

    from har_bench.runs import rundir

    run = make_run(tmp_path / "outputs" / "best" / "0", acc=0.9, f1=0.9)
    args = _archive_spec(tmp_path, "docs/runs")
    assert main(args) == 0, capsys.readouterr().err
    archived = tmp_path / "docs" / "runs" / "outputs" / "best" / "0"
    earlier = _tree(archived)
    (run / "history.csv").write_text("epoch\n1\n")
    real_copy = shutil.copy2

    def failing_copy(src, dst, **kwargs):
        if str(src).endswith("history.csv"):
            raise OSError(28, "No space left on device")
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(rundir.shutil, "copy2", failing_copy)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "No space left" in err and err.count("\n") == 1, err
    assert _tree(archived) == earlier
    assert sorted(p.name for p in archived.parent.iterdir()) == ["0"]
    monkeypatch.undo()
    secret = tmp_path / "secret.txt"
    secret.write_text("not a record")
    (run / "history.csv").unlink()
    (run / "history.csv").symlink_to(secret)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "symbolic link" in err and err.count("\n") == 1, err
    assert not (archived / "history.csv").exists()


def test_results_yaml_error_is_one_line_with_line_and_column(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("title: T\ntables:\n  - title: UCI\n    rows: [a, b\n")
    assert main(["results", str(spec), "--out", str(tmp_path / "RESULTS.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {spec}:5:1: invalid YAML"), err
