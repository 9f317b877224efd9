"""selection=kfold: a grid chosen by k-fold cross-validation inside the training cases, the
chosen settings trained on all of them and tested; its records, its time, its bad input and
its resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SMALL, assert_one_line_error, in_process_cli
from helpers import SHARED_DATA

from har_bench.analysis.grouping import load_run
from har_bench.config import compose
from har_bench.deploy.loaded import FinishedRun
from har_bench.experiment import run as run_module
from har_bench.experiment import select as select_module
from har_bench.experiment.components import build
from har_bench.runs import rundir

KFOLD = [*SMALL, "dataset.windows_per_subject=30", "selection=kfold", "selection.folds=3"]
# Long enough for a learning rate of 0.01 to beat one of 0.
LEARNS = "trainer.max_epochs=4"
UEA = SHARED_DATA / "UEA"


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def read(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name).read_text())


def test_the_best_cv_mean_is_chosen_and_trained_on_every_training_case(cli, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    folds, final = [], []
    score_fold, fit = select_module.score_fold, run_module.fit

    def recording_score_fold(candidate, data, fold, *args, **kwargs):
        folds.append(fold)
        return score_fold(candidate, data, fold, *args, **kwargs)

    def recording_fit(training, model, data, *args, **kwargs):
        final.append(data.train.index)
        return fit(training, model, data, *args, **kwargs)

    monkeypatch.setattr(select_module, "score_fold", recording_score_fold)
    monkeypatch.setattr(run_module, "fit", recording_fit)
    code, err = cli(
        *KFOLD,
        LEARNS,
        # An absurd candidate first: it learns nothing and must not be chosen.
        "selection.grid={optimizer.lr:[0.0,0.01]}",
        "split.val_fraction=0.2",  # the split's validation part joins the training cases
        f"hydra.run.dir={run_dir}",
    )
    assert code == 0, err
    report = read(run_dir, rundir.SPLIT_REPORT)
    selection = report["selection"]
    assert [c["overrides"] for c in selection["candidates"]] == [
        {"optimizer.lr": 0.0},
        {"optimizer.lr": 0.01},
    ]
    means = [c["mean"] for c in selection["candidates"]]
    assert all(len(c["scores"]) == 3 for c in selection["candidates"])
    assert means[1] > means[0]
    assert selection["chosen"]["index"] == 1
    metrics = read(run_dir, rundir.METRICS)
    assert metrics["selection"]["chosen"] == {"optimizer.lr": 0.01}
    assert metrics["selection"]["cv_mean"] == pytest.approx(max(means))

    # What the folds trained on and held out, seen from outside the selection's own record.
    data = build(compose(["dataset=synthetic", "dataset.windows_per_subject=30"]), "dataset")
    test_subjects = set(report["parts"]["test"]["subjects"])
    training = np.flatnonzero(~np.isin(data.subjects, sorted(test_subjects)))
    assert len(folds) == 6
    held = np.concatenate([f.held for f in folds[:3]])
    assert sorted(held.tolist()) == training.tolist()  # each training window held out once
    for fold in folds:
        seen = np.concatenate([fold.train, fold.held])
        assert not set(data.subjects[seen].tolist()) & test_subjects
        assert not set(data.subjects[fold.train].tolist()) & set(data.subjects[fold.held].tolist())
    assert selection["test_windows_in_folds"] == 0
    assert selection["test_subjects_in_folds"] == []
    assert selection["training_windows_held_out_once"] is True
    assert [f["held_out_windows"] for f in selection["fold_sizes"]] == [
        len(f.held) for f in folds[:3]
    ]

    # The final model trained on every training window (the validation part's included).
    assert len(final) == 1 and sorted(final[0].tolist()) == training.tolist()
    assert report["parts"]["val"]["windows"] == 0
    assert "validation_joined_training" in report["info"]
    assert metrics["val"] is None

    # Read back (export, predict): the chosen settings, the windows the model trained on.
    finished = FinishedRun(run_dir)
    assert finished.experiment.training.optimizer_factory.keywords["lr"] == 0.01
    assert sorted(finished.data.train.index.tolist()) == training.tolist()


def test_train_time_counts_every_fold_and_the_final_training(cli, tmp_path):
    run_dir = tmp_path / "run"
    code, err = cli(*KFOLD, "selection.grid={trainer.max_epochs:[1,2]}", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    selection = read(run_dir, rundir.SPLIT_REPORT)["selection"]
    scores = read(run_dir / rundir.CHECKPOINTS / rundir.SELECTION_CHECKPOINTS, "scores.json")
    folds = sum(e["train_seconds"] for e in scores["entries"].values())
    assert len(scores["entries"]) == selection["trainings"] == 6
    assert [e["epochs"] for e in scores["entries"].values()] == [1, 1, 1, 2, 2, 2]
    final = read(run_dir, rundir.TIMINGS)["train_seconds_total"]
    assert selection["train_seconds"] == pytest.approx(folds)
    assert load_run(run_dir).values["train_seconds"] == pytest.approx(folds + final)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["selection.grid={optimizer.lrr:[0.1]}"], ["optimizer.lrr", "did you mean optimizer.lr?"]),
        (["selection.grid={optimizer.lr:[]}"], ["optimizer.lr has no candidate values"]),
        (["selection.grid={optimizer.lr:0.1}"], ["optimizer.lr=0.1", "expected a list"]),
        ([], ["needs selection.grid"]),
        (["selection.grid={split.val_fraction:[0.1]}"], ["split.val_fraction cannot be selected"]),
        (["selection.grid={seed:[1,2]}"], ["seed cannot be selected"]),
        (["selection.grid={optimizer.lr:[0.1]}", "selection.folds=1"], ["selection.folds=1"]),
        (
            ["selection.grid={optimizer.lr:[0.1]}", "selection.folds=500"],
            ["selection.folds=500", "training cases of the smallest class"],
        ),
        (
            ["selection.grid={optimizer.lr:[0.1]}", "selection.folds=9"],
            ["selection.folds=9", "the 7 subjects"],
        ),
        (["selection.grid={optimizer.lr:[0.1]}", "trainer.refit=true"], ["trainer.refit=false"]),
        (["selection.grid={optimizer.lr:[0.1]}", "trainer.patience=2"], ["trainer.patience=null"]),
        (["selection.grid={optimizer.lr:[-1]}"], ["optimizer.lr=-1"]),
        (["selection.grid={optimizer.lr:[0.1]}", "selection.metric=auc"], ["selection.metric"]),
    ],
)
def test_bad_selection_is_one_error_line(cli, args, needles):
    assert_one_line_error(*cli(*KFOLD, *args), *needles)


def test_the_smallest_class_bound_names_both_numbers(cli, tmp_path):
    code, err = cli(*KFOLD, "selection.grid={optimizer.lr:[0.1]}", "selection.folds=500")
    line = assert_one_line_error(code, err)
    assert "500" in line
    smallest = int(line.split("than the ")[1].split()[0])
    assert 0 < smallest < 500


def test_minirocket_selects_its_kernel_count(cli, tmp_path):
    pytest.importorskip("aeon")
    run_dir = tmp_path / "run"
    code, err = cli(
        "dataset=synthetic",
        "model=minirocket",
        "efficiency.latency_repeats=1",
        "selection=kfold",
        "selection.folds=2",
        "selection.grid={model.n_kernels:[84,168]}",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 0, err
    selection = read(run_dir, rundir.SPLIT_REPORT)["selection"]
    assert [len(c["scores"]) for c in selection["candidates"]] == [2, 2]
    metrics = read(run_dir, rundir.METRICS)
    assert metrics["selection"]["chosen"] in ({"model.n_kernels": 84}, {"model.n_kernels": 168})


def test_a_stopped_selection_keeps_its_fold_scores_and_resumes_after_them(
    cli, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    real = select_module.score_fold
    calls: list[int] = []

    def stop_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(select_module, "score_fold", stop_at_third)
    code, err = cli(*KFOLD, "selection.grid={optimizer.lr:[0.0,0.01]}", f"hydra.run.dir={run_dir}")
    assert code == 130, err
    assert rundir.read_status(run_dir)["status"] == "interrupted"
    saved = read(run_dir / rundir.CHECKPOINTS / rundir.SELECTION_CHECKPOINTS, "scores.json")
    assert sorted(saved["entries"]) == ["0/0", "0/1"]

    calls.clear()
    monkeypatch.setattr(
        select_module, "score_fold", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    code, err = cli(f"trainer.resume={run_dir}")
    assert code == 0, err
    assert len(calls) == 6 - 2  # the two recorded folds are not trained again
    selection = read(run_dir, rundir.SPLIT_REPORT)["selection"]
    assert selection["candidates"][0]["scores"][:2] == [
        saved["entries"]["0/0"]["score"],
        saved["entries"]["0/1"]["score"],
    ]
    assert read(run_dir, rundir.METRICS)["status"] == "completed"


@pytest.mark.parametrize("name", ["none", "kfold"])
def test_selection_options_compose(name):
    cfg = compose([f"selection={name}"])
    assert cfg.selection.method == name


def test_uea_cv_preset_selects_by_folds_without_a_validation_part():
    cfg = compose(["experiment=uea_cv"])
    assert cfg.selection.method == "kfold"
    assert cfg.split.val_fraction == 0 and cfg.trainer.refit is False
    assert cfg.dataset._target_.endswith("load_uea")


@pytest.mark.slow
@pytest.mark.skipif(not (UEA / "BasicMotions").is_dir(), reason="../shared/data/UEA absent")
def test_uea_cv_on_basic_motions(cli, tmp_path):
    run_dir = tmp_path / "run"
    code, err = cli(
        "experiment=uea_cv",
        f"dataset.root={UEA}",
        # The preset's grid at smoke length: its folds and records are what is checked.
        "selection.grid.trainer.max_steps=[2,4]",
        "trainer.max_epochs=2",
        "trainer.progress=false",
        "efficiency.latency_repeats=1",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 0, err
    selection = read(run_dir, rundir.SPLIT_REPORT)["selection"]
    assert selection["training_windows"] == 40  # BasicMotions' TRAIN cases, no test case
    assert [f["held_out_windows"] for f in selection["fold_sizes"]] == [10, 10, 10, 10]
    assert selection["test_windows_in_folds"] == 0 and selection["test_subjects_in_folds"] == []
    assert len(selection["candidates"]) == 4
    assert read(run_dir, rundir.METRICS)["selection"]["chosen"] == selection["chosen"]["overrides"]
