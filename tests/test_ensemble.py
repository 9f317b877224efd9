"""``har-bench ensemble``: finished runs' calibrated test probabilities averaged into a run
directory of its own, which compare and results read; members that were not tested on the
same windows, unfinished members and an occupied output folder are one error line each."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from cli_helpers import SMALL, assert_one_line_error

import har_bench
from har_bench import cli
from har_bench.analysis.grouping import load_run
from har_bench.core.calibration import probability_column
from har_bench.deploy.loaded import FinishedRun, load_calibration
from har_bench.runs import rundir
from har_bench.runs.artifacts import TestPredictions

# Every member draws the same synthetic data (dataset.seed defaults to the run's seed).
TINY = [*SMALL, "dataset.seed=0"]
ROCKET = [*(o for o in TINY if not o.startswith("model")), "model=minirocket", "model.n_kernels=84"]


def train(run_dir: Path, *overrides: str, base: list[str] = TINY) -> Path:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        har_bench.train([*base, f"paths.output_dir={run_dir.parent}", *overrides], run_dir)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return run_dir


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    """Three tiny resnet18 runs on the same data, seeds 1-3 (trained once for the module)."""
    base = tmp_path_factory.mktemp("members")
    return [train(base / f"seed{s}", f"seed={s}") for s in (1, 2, 3)]


def ensemble(*args: object, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["ensemble", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, symlinks=True)
    return dest


def edit_json(path: Path, **changes: object) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def independent_probabilities(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """A member's calibrated test probabilities and labels, computed here: its tested model
    (the API's) on its test windows, softmax of the logits over its temperature."""
    finished = FinishedRun(run_dir)
    test = finished.data.test
    model = har_bench.load_run(run_dir).model()
    with torch.no_grad():
        logits = model(test.X).double()
    temperature = load_calibration(run_dir).temperature
    return torch.softmax(logits / temperature, dim=1).numpy(), test.y.numpy()


def test_ensemble_averages_the_members_and_compare_lists_it(members, tmp_path, capsys):
    out = tmp_path / "ensemble"
    code, stdout, err = ensemble(*members, "-o", out, capsys=capsys)
    assert code == 0, err
    assert "ensemble of 3 runs" in stdout and str(out) in stdout

    # The accuracy is that of the members' averaged probabilities, computed here.
    computed = [independent_probabilities(m) for m in members]
    y = computed[0][1]
    averaged = np.mean([p for p, _ in computed], axis=0)
    metrics = json.loads((out / rundir.METRICS).read_text())
    assert metrics["status"] == "completed" and metrics["test"]["num_samples"] == len(y)
    assert metrics["test"]["accuracy"] == pytest.approx(float((averaged.argmax(1) == y).mean()))
    cm = pd.read_csv(out / rundir.CONFUSION_CSV, index_col=0)
    assert int(cm.to_numpy().sum()) == len(y)
    assert int(np.trace(cm.to_numpy())) == round(metrics["test"]["accuracy"] * len(y))
    saved = pd.read_csv(out / rundir.TEST_PREDICTIONS)
    names = list(cm.columns)
    assert np.allclose(saved[[probability_column(n) for n in names]], averaged, atol=1e-6)

    # Members with their own figures; training time is theirs summed.
    rows = metrics["ensemble"]["members"]
    assert [r["run_dir"] for r in rows] == [str(m.resolve()) for m in members]
    for row, member in zip(rows, members, strict=True):
        own = json.loads((member / rundir.METRICS).read_text())["test"]["accuracy"]
        assert row["test_accuracy"] == own and row["seed"] in (1, 2, 3)
    seconds = [load_run(m).values["train_seconds"] for m in members]
    assert load_run(out).values["train_seconds"] == pytest.approx(sum(seconds))
    config = rundir.saved_config(out)
    assert config["ensemble"]["size"] == 3 and config["seed"] == [1, 2, 3]

    # compare, on a folder holding the members and the ensemble: the ensemble is its own row.
    folder = tmp_path / "together"
    folder.mkdir()
    for m in [*members, out]:
        copy_run(m, folder / m.name)
    table = har_bench.compare(folder)
    assert sorted(table["n"]) == [1, 3]
    row = table[table["n"] == 1].iloc[0]
    assert str(row["ensemble.size"]) == "3"
    assert row["accuracy_mean"] == pytest.approx(metrics["test"]["accuracy"])

    # An ensemble has no model of its own to export or predict with.
    code = cli.main(["predict", str(out), "--input", str(out / rundir.TEST_PREDICTIONS)])
    assert_one_line_error(code, capsys.readouterr().err, "is an ensemble of runs")


def test_members_from_before_test_predictions_are_run_again(members, tmp_path, capsys):
    """A run that saved no test_predictions.csv has its tested model run on its test windows:
    the same ensemble as from the files."""
    old = []
    for m in members[:2]:
        copy = copy_run(m, tmp_path / m.name)
        (copy / rundir.TEST_PREDICTIONS).unlink()
        old.append(copy)
    code, _, err = ensemble(*old, "-o", tmp_path / "from_models", capsys=capsys)
    assert code == 0, err
    assert "running its tested model" in err
    code, _, err = ensemble(*members[:2], "-o", tmp_path / "from_files", capsys=capsys)
    assert code == 0, err
    a, b = (
        json.loads((tmp_path / d / rundir.METRICS).read_text())
        for d in ("from_models", "from_files")
    )
    assert a["test"]["accuracy"] == b["test"]["accuracy"]
    assert {r["probabilities"] for r in a["ensemble"]["members"]} == {
        "recomputed from the tested checkpoint"
    }


def test_default_output_is_a_new_folder_under_outputs(members, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for i, m in enumerate(members[:2]):
        copy_run(m, sweep / str(i))
    # A sweep dir stands for its jobs; a quoted glob is expanded here.
    code, _, err = ensemble(sweep, capsys=capsys)
    assert code == 0, err
    code, _, err = ensemble(f"{sweep}/*", capsys=capsys)
    assert code == 0, err
    made = sorted((tmp_path / "outputs" / "ensembles").glob("*/*/metrics.json"))
    assert len(made) == 2
    assert all(json.loads(p.read_text())["ensemble"]["size"] == 2 for p in made)


def test_members_tested_on_other_data_are_refused(members, tmp_path, capsys):
    first = members[0]
    # Another dataset setting (the synthetic data drawn from another seed).
    other_seed = copy_run(members[1], tmp_path / "other_seed")
    config = yaml.safe_load((other_seed / rundir.SAVED_CONFIG).read_text())
    config["dataset"]["seed"] = 7
    (other_seed / rundir.SAVED_CONFIG).write_text(yaml.safe_dump(config))
    # Another split (its choice).
    other_split = copy_run(members[1], tmp_path / "other_split")
    hydra = (other_split / rundir.SAVED_HYDRA_CONFIG).read_text()
    (other_split / rundir.SAVED_HYDRA_CONFIG).write_text(
        hydra.replace("split: official", "split: group_kfold")
    )
    # The same settings, other test windows.
    shifted = copy_run(members[1], tmp_path / "shifted")
    frame = pd.read_csv(shifted / rundir.TEST_PREDICTIONS)
    frame.loc[0, "window"] += 10_000
    frame.to_csv(shifted / rundir.TEST_PREDICTIONS, index=False)
    cases = [
        (other_seed, "dataset.seed: 7, but"),
        (other_split, "in split: group_kfold, but"),
        (shifted, "its test windows: 1 of"),
    ]
    for member, needle in cases:
        code, _, err = ensemble(first, member, "-o", tmp_path / "never", capsys=capsys)
        line = assert_one_line_error(code, err, f"member {member}", needle)
        assert str(first) in line
    assert not (tmp_path / "never").exists()


def test_unfinished_members_and_an_occupied_output_are_refused(members, tmp_path, capsys):
    failed = copy_run(members[1], tmp_path / "failed")
    edit_json(failed / rundir.METRICS, status="failed", error="ValueError: boom")
    code, _, err = ensemble(members[0], failed, "-o", tmp_path / "never", capsys=capsys)
    assert_one_line_error(code, err, f"member {failed} is not a finished run", "the run failed")

    code, _, err = ensemble(members[0], tmp_path / "nowhere", capsys=capsys)
    assert_one_line_error(code, err, "nowhere: no such file or directory")

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    code, _, err = ensemble(*members[:2], "-o", occupied, capsys=capsys)
    assert_one_line_error(code, err, f"-o {occupied} already exists and is not an empty folder")
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]

    code, _, err = ensemble(*members[:2], "-o", members[0] / "inside", capsys=capsys)
    assert_one_line_error(code, err, "lies inside the member")

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = ensemble(*members[:2], "-o", empty, capsys=capsys)
    assert code == 0, err
    # Named as a member, an ensemble is refused; found below a folder it is left out.
    code, _, err = ensemble(members[0], empty, capsys=capsys)
    assert_one_line_error(code, err, f"member {empty} is itself an ensemble")
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_minirocket_member_gives_calibrated_probabilities(members, tmp_path, capsys):
    pytest.importorskip("aeon", reason="model=minirocket needs the [rocket] extra")
    rocket = train(tmp_path / "rocket", "seed=1", base=ROCKET)
    saved = pd.read_csv(rocket / rundir.TEST_PREDICTIONS)
    probs = saved.filter(like="p_").to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    own = json.loads((rocket / rundir.METRICS).read_text())
    assert (saved["true"] == saved["predicted"]).mean() == pytest.approx(own["test"]["accuracy"])
    assert own["calibration"]["fitted_on"] == "train (leave-one-out)"

    code, _, err = ensemble(members[0], rocket, "-o", tmp_path / "mixed", capsys=capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "mixed" / rundir.METRICS).read_text())
    assert metrics["model"] == "resnet18+minirocket"

    # A MiniRocket run from before test predictions were saved keeps no model to run again.
    (rocket / rundir.TEST_PREDICTIONS).unlink()
    code, _, err = ensemble(members[0], rocket, "-o", tmp_path / "never", capsys=capsys)
    assert_one_line_error(code, err, f"member {rocket} has no", "model=minirocket keeps no")


def test_a_refitted_minirocket_is_calibrated_on_what_it_was_fitted_on(tmp_path):
    """With trainer.refit=true MiniRocket is fitted on train + validation: a temperature fitted
    on the validation windows would sharpen its probabilities as if they were held out."""
    pytest.importorskip("aeon", reason="model=minirocket needs the [rocket] extra")
    rocket = train(tmp_path / "refit", "split.val_fraction=0.3", "trainer.refit=true", base=ROCKET)
    calibration = json.loads((rocket / rundir.METRICS).read_text())["calibration"]
    assert calibration["fitted_on"] == "train+val (leave-one-out)"


def test_a_glob_takes_the_runs_it_matches_not_the_folder_of_a_file(members, tmp_path, capsys):
    folder = tmp_path / "ens"
    for i, m in enumerate(members[:2]):
        copy_run(m, folder / f"seed{i}")
    copy_run(members[2], folder / "other")
    (folder / "seed_notes.txt").write_text("notes\n")
    code, _, err = ensemble(folder / "seed*", "-o", tmp_path / "two", capsys=capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "two" / rundir.METRICS).read_text())
    assert len(metrics["ensemble"]["members"]) == 2


def test_an_output_that_cannot_be_made_is_one_line(members, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = ensemble(*members[:2], "-o", blocker / "out", capsys=capsys)
    assert_one_line_error(code, err, f"-o {blocker / 'out'}", "cannot create")


def test_help_lists_the_verb(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["har-bench"])
    with pytest.raises(SystemExit):
        cli.main(["ensemble", "--help"])
    assert "-o OUT" in capsys.readouterr().out


def test_a_run_with_a_capped_evaluation_completes_without_a_partial_file(tmp_path):
    """trainer.limit_eval_batches scores only some test windows (a smoke run): the run completes,
    and writes no test_predictions.csv, which would list windows it never scored."""
    run_dir = train(
        tmp_path / "capped", "trainer.limit_eval_batches=1", "trainer.eval_batch_size=16"
    )
    metrics = json.loads((run_dir / rundir.METRICS).read_text())
    assert metrics["status"] == "completed"
    assert metrics["test"]["num_samples"] == 16
    assert not (run_dir / rundir.TEST_PREDICTIONS).exists()


def test_a_member_whose_evaluation_cap_never_bound_is_an_ordinary_member(members, tmp_path, capsys):
    """trainer.limit_eval_batches above the test part's batches scored every window: such a run
    without test_predictions.csv (saved before runs wrote it) has its model run again."""
    uncapped = train(tmp_path / "uncapped", "seed=1", "trainer.limit_eval_batches=1000")
    (uncapped / rundir.TEST_PREDICTIONS).unlink()
    code, _, err = ensemble(members[0], uncapped, "-o", tmp_path / "e", capsys=capsys)
    assert code == 0, err
    assert "running its tested model" in err
    assert (tmp_path / "e" / rundir.METRICS).is_file()


def test_a_member_with_a_capped_evaluation_is_refused_with_its_reason(members, tmp_path, capsys):
    """Its missing test_predictions.csv is by design, not the mark of a run from before them:
    the error says what it scored and how to run it again, and no member is run again."""
    capped = train(
        tmp_path / "capped", "seed=1", "trainer.limit_eval_batches=1", "trainer.eval_batch_size=16"
    )
    code, _, err = ensemble(members[0], capped, "-o", tmp_path / "e", capsys=capsys)
    assert_one_line_error(
        code,
        err,
        f"member {capped.resolve()} evaluated only 16 of its",
        "(trainer.limit_eval_batches=1)",
        "run it again without trainer.limit_eval_batches",
    )
    assert "ran before" not in err and not (tmp_path / "e").exists()


# Another family for --by: a small CNN on the same data.
OTHER = [
    *(o for o in TINY if not o.startswith("model")),
    "model=cnn",
    "model.channels=[8,8,8]",
    "model.hidden=16",
]


@pytest.fixture(scope="module")
def others(tmp_path_factory) -> list[Path]:
    """Three tiny CNN runs on the members' data, seeds 1-3."""
    base = tmp_path_factory.mktemp("others")
    return [train(base / f"seed{s}", f"seed={s}", base=OTHER) for s in (1, 2, 3)]


def test_by_seed_pairs_the_runs_of_each_seed(members, others, tmp_path, capsys):
    out = tmp_path / "pairs"
    code, stdout, err = ensemble("--by", "seed", *members, *others, "-o", out, capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["1", "2", "3"]
    for seed, network, cnn in zip((1, 2, 3), members, others, strict=True):
        metrics = json.loads((out / str(seed) / rundir.METRICS).read_text())
        listed = [r["run_dir"] for r in metrics["ensemble"]["members"]]
        assert listed == [str(network.resolve()), str(cnn.resolve())]
        pair = [TestPredictions.read(m) for m in (network, cnn)]
        y = pair[0].y_true
        mean = (pair[0].probs + pair[1].probs) / 2
        assert metrics["test"]["accuracy"] == pytest.approx(float((mean.argmax(1) == y).mean()))
        assert f"seed={seed}: ensemble of 2 runs" in stdout
    # The folder is read as three repeats of one ensemble.
    table = har_bench.compare(out)
    assert list(table["n"]) == [3]


def test_by_fold_pairs_runs_tested_on_different_folds(tmp_path, capsys):
    """Runs of two folds are tested on different windows: refused as one ensemble, averaged
    fold by fold with --by split.fold."""
    fold = [*TINY, "split=group_kfold"]
    runs = [
        train(tmp_path / "runs" / f"f{k}s{s}", f"split.fold={k}", f"seed={s}", base=fold)
        for k in (0, 1)
        for s in (1, 2)
    ]
    code, _, err = ensemble(*runs, "-o", tmp_path / "never", capsys=capsys)
    assert_one_line_error(code, err, f"member {runs[2]}", "split.fold: 1, but")
    code, _, err = ensemble("--by", "split.fold", *runs, "-o", tmp_path / "folds", capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "folds").iterdir()) == ["0", "1"]
    for k in (0, 1):
        metrics = json.loads((tmp_path / "folds" / str(k) / rundir.METRICS).read_text())
        assert [r["run_dir"] for r in metrics["ensemble"]["members"]] == [
            str(r.resolve()) for r in runs[2 * k : 2 * k + 2]
        ]
    assert not (tmp_path / "never").exists()


def test_by_refuses_uneven_groups_lone_runs_and_a_missing_key(members, others, tmp_path, capsys):
    cases = [
        ([*members, *others[:2]], "seed", ["different numbers of runs", "seed=3: 1"]),
        (members, "seed", ["every seed has one run", "nothing to average"]),
        ([*members, *others], "trainer.nope", [f"member {members[0].resolve()} has no trainer"]),
        ([*members, *others], "split", ["split is a group of settings, not one value"]),
    ]
    for runs, key, needles in cases:
        code, _, err = ensemble("--by", key, *runs, "-o", tmp_path / "never", capsys=capsys)
        assert_one_line_error(code, err, f"--by {key}: ", *needles)
    assert not (tmp_path / "never").exists()
    # An occupied output is refused before any group is written.
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine\n")
    code, _, err = ensemble("--by", "seed", *members, *others, "-o", taken, capsys=capsys)
    assert_one_line_error(code, err, "already exists and is not an empty folder")
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
