"""``har-bench compare`` on fabricated run dirs: statistics checked against hand-computed values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from har_bench import cli
from har_bench.analysis.grouping import (
    compare,
    find_run_dirs,
    load_run,
    mean_std,
    sort_groups,
)
from har_bench.analysis.plots import pareto_front


def make_run(
    path: Path,
    *,
    cardinality: int = 1,
    seed: int = 0,
    fold: int = 0,
    acc: float = 0.9,
    f1: float = 0.8,
    params: int = 1000,
    flops: float = 2e6,
    sps: float = 500.0,
    latency: float = 1.5,
    status: str = "completed",
    model: str = "resnext_har",
    layers: list[int] | None = None,
    output_dir: str = "outputs",
) -> Path:
    path.mkdir(parents=True)
    config: dict[str, Any] = {
        "seed": seed,
        "paths": {"output_dir": output_dir, "data_dir": "/somewhere"},
        "model": {"cardinality": cardinality, "layers": layers or [1, 1, 1, 1]},
        "split": {"fold": fold, "val_fraction": 0.2},
        "trainer": {"max_epochs": 3, "progress": True},
    }
    hydra_cfg = {"hydra": {"runtime": {"choices": {"model": model, "dataset": "uci_har"}}}}
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra_cfg))
    (path / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"model.cardinality={cardinality}", f"seed={seed}"])
    )
    metrics: dict[str, Any] = {"status": status}
    if status == "completed":
        metrics |= {
            "val": {"accuracy": acc - 0.01, "macro_f1": f1 - 0.01},
            "test": {"accuracy": acc, "macro_f1": f1},
            "epochs_trained": 3,
        }
        (path / "model_summary.json").write_text(
            json.dumps({"params": params, "flops_per_sample": flops})
        )
        (path / "timings.json").write_text(
            json.dumps({"train_samples_per_second": sps, "inference_latency_ms": {"p50": latency}})
        )
    else:
        metrics |= {"error": "ValueError: boom", "user_error": True}
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_train_seconds_count_the_refit_phase(tmp_path):
    run = make_run(tmp_path / "r")
    timings = json.loads((run / "timings.json").read_text()) | {"train_seconds_total": 100.0}
    (run / "timings.json").write_text(json.dumps(timings))
    assert load_run(run).values["train_seconds"] == 100.0
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["refit"] = {
        "history": [{"epoch": 1, "train_seconds": 30.0}, {"epoch": 2, "train_seconds": 20.5}]
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert load_run(run).values["train_seconds"] == 150.5


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """cardinality 1 and 4 x seeds 0,1,2 (+ one failed run at cardinality 4)."""
    root = tmp_path / "outputs" / "multirun" / "2026-01-01" / "10-00-00-000000"
    accs = {1: [0.90, 0.92, 0.94], 4: [0.95, 0.96, 0.97]}
    f1s = {1: [0.80, 0.85, 0.90], 4: [0.91, 0.91, 0.94]}
    sps = {1: [1000.0, 1100.0, 1200.0], 4: [400.0, 500.0, 900.0]}
    job = 0
    for c in (1, 4):
        for seed in range(3):
            make_run(
                root / str(job),
                cardinality=c,
                seed=seed,
                acc=accs[c][seed],
                f1=f1s[c][seed],
                params=1000 * c,
                flops=2e6 * c,
                sps=sps[c][seed],
                latency=1.0 * c + 0.1 * seed,
            )
            job += 1
    make_run(root / str(job), cardinality=4, seed=3, status="failed")
    return root


def test_mean_std_is_sample_std():
    assert mean_std([0.90, 0.92, 0.94]) == pytest.approx((0.92, 0.02, 3))
    mean, std, n = mean_std([5.0])
    assert (mean, n) == (5.0, 1) and math.isnan(std)
    assert mean_std([])[2] == 0


def test_groups_over_seeds_with_hand_computed_stats(sweep: Path):
    comp = compare([load_run(d) for d in find_run_dirs([sweep])])
    assert comp.keys == ["model.cardinality"]  # paths.* and trainer.progress never count
    assert comp.replicates == ["seed"]
    assert [g.key["model.cardinality"] for g in comp.groups] == [1, 4]
    g1, g4 = comp.groups
    assert g1.stats("accuracy") == pytest.approx((0.92, 0.02, 3))
    assert g4.stats("accuracy") == pytest.approx((0.96, 0.01, 3))
    # f1 at C=4: mean 0.92, deviations -.01 -.01 .02 -> var = .0006/2
    assert g4.stats("macro_f1") == pytest.approx((0.92, math.sqrt(0.0003), 3))
    assert g4.stats("train_sps") == pytest.approx((600.0, math.sqrt(70000.0), 3))
    assert g1.stats("latency_ms") == pytest.approx((1.1, 0.1, 3))
    assert g4.stats("params") == pytest.approx((4000.0, 0.0, 3))
    assert len(g4.runs) == 4 and len(g4.completed) == 3  # the failed run is not averaged


def test_cli_writes_csv_md_and_plots(sweep: Path, tmp_path: Path, capsys):
    out = tmp_path / "cmp"
    code = cli.main(["compare", str(sweep), "--sort", "accuracy", "--plot", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "96.00 ± 1.00" in printed and "92.00 ± 2.00" in printed
    assert "not completed" in printed and "ValueError: boom" in printed
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model.cardinality"] for r in rows] == ["4", "1"]  # best accuracy first
    assert float(rows[0]["accuracy_mean"]) == pytest.approx(0.96)
    assert float(rows[0]["accuracy_std"]) == pytest.approx(0.01)
    assert rows[0]["accuracy_n"] == "3" and rows[0]["n_runs"] == "4"
    assert float(rows[1]["flops_mean"]) == pytest.approx(2e6)
    md = (out / "comparison.md").read_text()
    assert "| model.cardinality | n | not completed | test acc % |" in md
    assert "| 4 | 3 | 1 | 96.00 ± 1.00 |" in md
    for png in ("comparison_vs_model.cardinality.png", "accuracy_vs_flops.png"):
        assert (out / png).stat().st_size > 1000


def test_metrics_option_and_default_output_dir(sweep: Path, capsys):
    assert cli.main(["compare", str(sweep), "--metrics", "val_macro_f1,latency_ms"]) == 0
    header = (sweep / "comparison.csv").read_text().splitlines()[0]
    assert header == (
        "model.cardinality,n,n_runs,val_macro_f1_mean,val_macro_f1_std,val_macro_f1_n,"
        "latency_ms_mean,latency_ms_std,latency_ms_n"
    )


def test_folds_are_replicates_and_globs_expand(tmp_path: Path):
    base = tmp_path / "outputs" / "multirun"
    for fold, acc in enumerate([0.7, 0.8, 0.9]):
        make_run(base / "a" / str(fold), fold=fold, acc=acc)
    make_run(base / "b" / "0", fold=0, acc=0.5, cardinality=8)
    # A copy being made next to a run (a hidden temporary folder) is not a run.
    make_run(base / "b" / ".0.tmp", fold=0, acc=0.1, cardinality=8)
    dirs = find_run_dirs([str(base / "*")])
    assert len(dirs) == 4
    comp = compare([load_run(d) for d in dirs])
    assert comp.keys == ["model.cardinality"] and comp.replicates == ["split.fold"]
    by_c = {g.key["model.cardinality"]: g for g in comp.groups}
    assert by_c[1].stats("accuracy") == pytest.approx((0.8, 0.1, 3))
    assert by_c[8].stats("accuracy")[2] == 1


def test_keys_that_follow_a_preset_get_no_column(tmp_path: Path):
    make_run(tmp_path / "r18", model="resnet18", layers=[2, 2, 2, 2])
    make_run(tmp_path / "r50", model="resnet50", layers=[3, 4, 6, 3])
    make_run(tmp_path / "r50b", model="resnet50", layers=[3, 4, 6, 3], seed=1)
    comp = compare([load_run(d) for d in find_run_dirs([tmp_path])])
    assert comp.keys == ["model"]  # model.layers only follows the preset
    assert [len(g.runs) for g in comp.groups] == [1, 2]


def test_sort_lower_is_better_for_costs(sweep: Path):
    comp = compare([load_run(d) for d in find_run_dirs([sweep])])
    by_latency = sort_groups(comp.groups, "latency_ms")
    assert [g.key["model.cardinality"] for g in by_latency] == [1, 4]
    assert [g.key["model.cardinality"] for g in sort_groups(comp.groups, "accuracy")] == [4, 1]


def test_pareto_front():
    # (flops, accuracy): the third point is beaten by the second (cheaper and better).
    pts = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.94), (4.0, 0.97), (4.0, 0.96)]
    assert pareto_front(pts) == [0, 1, 3]


def test_bad_input_is_one_line(tmp_path: Path, sweep: Path, capsys):
    assert cli.main(["compare", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    (tmp_path / "empty").mkdir()
    assert cli.main(["compare", str(tmp_path / "empty")]) == 2
    assert "no runs" in capsys.readouterr().err
    assert cli.main(["compare", str(sweep), "--metrics", "acc"]) == 2
    assert "unknown acc" in capsys.readouterr().err


def test_std_is_shown_to_the_means_precision():
    from har_bench.analysis.tables import format_stat

    assert format_stat(1087.2, 18.4, 2, "rate", 2) == "1087 ± 18"
    assert format_stat(0.681, 0.0228, 2, "ms", 2) == "0.681 ± 0.023"
    assert format_stat(0.9157, 0.0074, 2, "fraction", 2) == "91.57 ± 0.74"
    assert format_stat(1.11, 0.001, 3, "ms", 2) == "1.11 ± 0.001 (n=3)"  # not "± 0.00"
    assert format_stat(2.0, 0.6, 2, "ms", 2) == "2.00 ± 0.60"  # not "2 ± 1"
    assert format_stat(5.0, 0.6, 2, "rate", 2) == "5.000 ± 0.600"


def test_a_users_file_named_like_a_table_is_never_written_over(
    sweep, tmp_path, monkeypatch, capsys
):
    # Several paths and no --out: the tables go to the current directory, where a file of the
    # same name may be the user's own.
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "comparison.csv"
    mine.write_text("subject,score\n1,0.5\n")
    paths = [str(sweep / "0"), str(sweep / "3")]
    assert cli.main(["compare", *paths]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "comparison.csv" in err and "--out" in err
    assert mine.read_text() == "subject,score\n1,0.5\n"
    assert not (tmp_path / "comparison.md").exists()
    # The command's own tables are rewritten freely.
    mine.unlink()
    assert cli.main(["compare", *paths]) == 0
    assert cli.main(["compare", *paths, "--metrics", "accuracy"]) == 0
    assert (tmp_path / "comparison.md").read_text().startswith("# har-bench compare")
    (tmp_path / "comparison.md").write_text("# my notes\n")
    assert cli.main(["compare", *paths]) == 2
    assert (tmp_path / "comparison.md").read_text() == "# my notes\n"


def test_a_users_image_named_like_a_figure_is_never_written_over(sweep, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "cmp"
    out.mkdir()
    mine = out / "accuracy_vs_flops.png"
    Image.new("RGB", (4, 4), "red").save(mine)
    before = mine.read_bytes()
    assert cli.main(["compare", str(sweep), "--plot", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "accuracy_vs_flops.png" in err
    assert mine.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_flops.png"]
    # Without --plot the figure is not touched, so the tables are written.
    assert cli.main(["compare", str(sweep), "--out", str(out)]) == 0
    assert mine.read_bytes() == before
    # The command's own figures are rewritten freely.
    mine.unlink()
    assert cli.main(["compare", str(sweep), "--plot", "--out", str(out)]) == 0
    assert cli.main(["compare", str(sweep), "--plot", "--out", str(out)]) == 0
    assert (out / "comparison_vs_model.cardinality.png").exists()
