"""selection=kfold: a grid chosen by k-fold cross-validation inside the training cases, the
chosen settings trained on all of them and tested; its records, its time, its bad input and
its resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import SMALL, assert_one_line_error, in_process_cli
from fixtures_data import write_image_folder
from helpers import SHARED_DATA

from har_bench.analysis.grouping import load_run
from har_bench.config import compose
from har_bench.core.errors import UserError
from har_bench.deploy.loaded import FinishedRun
from har_bench.experiment import prepare as prepare_module
from har_bench.experiment import run as run_module
from har_bench.experiment import select as select_module
from har_bench.experiment.components import build, selection_from_config
from har_bench.experiment.spec import Choices
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
    scores = read(rundir.selection_dir(run_dir), rundir.SELECTION_SCORES)
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
            ["selection.folds=500", "subjects of the training part"],
        ),
        (
            ["selection.grid={optimizer.lr:[0.1]}", "selection.folds=9"],
            ["selection.folds=9", "the 7 subjects"],
        ),
        (["selection.grid={optimizer.lr:[0.1]}", "trainer.refit=true"], ["trainer.refit=false"]),
        (["selection.grid={optimizer.lr:[0.1]}", "trainer.patience=2"], ["trainer.patience=null"]),
        (["selection.grid={optimizer.lr:[-1]}"], ["optimizer.lr=-1"]),
        (["selection.grid={optimizer.lr:[0.1]}", "selection.metric=auc"], ["selection.metric"]),
        # Bookkeeping keys say how a run is kept, not what it trains (the folds would refuse
        # later: the grid must be refused first).
        (
            ["selection.grid={trainer.progress:[true,false]}", "selection.folds=500"],
            ["trainer.progress cannot be selected"],
        ),
        (
            ["selection.grid={dataset.progress:[true,false]}", "selection.folds=500"],
            ["dataset.progress cannot be selected"],
        ),
    ],
)
def test_bad_selection_is_one_error_line(cli, args, needles):
    assert_one_line_error(*cli(*KFOLD, *args), *needles)


def test_folds_are_bounded_by_the_subjects_of_the_rarest_class_not_its_windows():
    """Folds are grouped by subject: a class done by two subjects is in two folds at most, however
    many windows it has."""
    subjects = np.repeat(np.arange(6), 20)
    y = np.zeros(len(subjects), dtype=np.int64)
    y[(subjects < 2) & (np.arange(len(subjects)) % 2 == 0)] = 1  # 20 windows, subjects 0 and 1
    data = SimpleNamespace(
        split=SimpleNamespace(train=np.arange(len(y))),
        data=SimpleNamespace(y=y, subjects=subjects),
        class_names=["walk", "rare"],
    )
    with pytest.raises(UserError) as raised:
        select_module.make_folds(data, 3, seed=0)
    message = str(raised.value)
    assert "selection.folds=3" in message
    assert "the 2 training subjects" in message and "class rare (20 windows" in message
    assert "at most 2" in message
    assert len(select_module.make_folds(data, 2, seed=0)) == 2


def test_a_grid_may_score_by_any_single_number_metric():
    cfg = compose([*KFOLD, "selection.grid={optimizer.lr:[0.1]}", "selection.metric=weighted_f1"])
    assert selection_from_config(cfg, Choices()).metric == "weighted_f1"


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
    # A fitted model leaves no checkpoint of its final training: the completed run must still not
    # pass for one stopped during its selection (trainer.resume=last would pick it).
    assert not rundir.stopped_in_selection(run_dir) and rundir.resume_command(run_dir) is None
    assert run_dir.resolve() not in rundir.checkpointed_runs(tmp_path)


def stop_at(n: int, monkeypatch, after: bool = False) -> list[int]:
    """``select.score_fold`` stopped by Ctrl-C at its ``n``-th call (before it trains, or
    ``after`` it trained, before its score is recorded); the calls are counted."""
    real = select_module.score_fold
    calls: list[int] = []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == n and not after:
            raise KeyboardInterrupt
        entry = real(*args, **kwargs)
        if len(calls) == n:
            raise KeyboardInterrupt
        return entry

    monkeypatch.setattr(select_module, "score_fold", stopping)
    return calls


def recording_resumes(monkeypatch) -> list[object]:
    """``select.score_fold`` counted, with the fold checkpoint each call resumes (None: none)."""
    real = select_module.score_fold
    resumes: list[object] = []

    def recording(candidate, data, fold, metric, checkpoints, resume, *args, **kwargs):
        resumes.append(resume)
        return real(candidate, data, fold, metric, checkpoints, resume, *args, **kwargs)

    monkeypatch.setattr(select_module, "score_fold", recording)
    return resumes


TWO_LRS = "selection.grid={optimizer.lr:[0.0,0.01]}"


def test_a_stopped_selection_keeps_its_fold_scores_and_resumes_after_them(
    cli, tmp_path, monkeypatch
):
    # Under paths.output_dir, so that trainer.resume=last finds it.
    run_dir = tmp_path / "outputs" / "run"
    stop_at(3, monkeypatch)
    code, err = cli(*KFOLD, TWO_LRS, f"hydra.run.dir={run_dir}")
    assert code == 130, err
    status = rundir.read_status(run_dir)
    assert status["status"] == "interrupted"
    # Stopped before the final training's first checkpoint, it is resumable all the same.
    assert status["resume_command"] == f"har-bench trainer.resume={run_dir.resolve()}"
    assert f"Resume with:\n  {status['resume_command']}" in err
    saved = read(rundir.selection_dir(run_dir), rundir.SELECTION_SCORES)
    assert sorted(saved["entries"]) == ["0/0", "0/1"]

    calls = recording_resumes(monkeypatch)
    code, err = cli(*KFOLD, TWO_LRS, "trainer.resume=last")
    assert code == 0, err
    assert len(calls) == 6 - 2  # the two recorded folds are not trained again
    selection = read(run_dir, rundir.SPLIT_REPORT)["selection"]
    assert selection["candidates"][0]["scores"][:2] == [
        saved["entries"]["0/0"]["score"],
        saved["entries"]["0/1"]["score"],
    ]
    assert read(run_dir, rundir.METRICS)["status"] == "completed"


def test_a_stopped_selection_is_found_and_resumable(tmp_path):
    selecting = tmp_path / "selecting"
    (rundir.selection_dir(selecting)).mkdir(parents=True)
    (rundir.selection_dir(selecting) / rundir.SELECTION_SCORES).write_text("{}")
    finished = tmp_path / "finished"
    rundir.selection_dir(finished).mkdir(parents=True)
    rundir.last_checkpoint(finished).write_bytes(b"")
    empty = tmp_path / "empty"
    rundir.checkpoint_dir(empty).mkdir(parents=True)
    assert sorted(rundir.checkpointed_runs(tmp_path)) == sorted(
        [selecting.resolve(), finished.resolve()]
    )
    assert rundir.resume_command(selecting) is not None
    assert rundir.resume_command(empty) is None


def test_a_resume_with_other_settings_scores_the_folds_again(cli, tmp_path, monkeypatch):
    """trainer.resume accepts more epochs (trainer.max_epochs); a fold scored with fewer must
    not be reused for the candidate it no longer is."""
    run_dir = tmp_path / "run"
    stop_at(3, monkeypatch)
    code, err = cli(*KFOLD, TWO_LRS, f"hydra.run.dir={run_dir}")
    assert code == 130, err

    calls = recording_resumes(monkeypatch)
    code, err = cli(f"trainer.resume={run_dir}", "trainer.max_epochs=2")
    assert code == 0, err
    assert len(calls) == 6
    scores = read(rundir.selection_dir(run_dir), rundir.SELECTION_SCORES)
    assert [e["epochs"] for e in scores["entries"].values()] == [2] * 6


def test_fold_checkpoints_of_other_folds_are_not_resumed(cli, tmp_path, monkeypatch):
    """A stopped fold's checkpoint trained on its fold's training cases; when the folds come out
    differently on resume, those may be held out now: it is removed, never resumed."""
    run_dir = tmp_path / "run"
    # Stopped after the third fold trained (its checkpoint is kept) and before it is recorded.
    stop_at(3, monkeypatch, after=True)
    code, err = cli(*KFOLD, TWO_LRS, f"hydra.run.dir={run_dir}")
    assert code == 130, err
    stale = [p for p in rundir.selection_dir(run_dir).iterdir() if p.is_dir()]
    assert len(stale) == 1 and any(stale[0].rglob("*.pt"))

    make_folds = select_module.make_folds
    monkeypatch.setattr(  # other folds, as new data or another library version would draw
        select_module, "make_folds", lambda data, folds, seed: make_folds(data, folds, seed + 1)
    )
    resumes = recording_resumes(monkeypatch)
    code, err = cli(f"trainer.resume={run_dir}")
    assert code == 0, err
    assert len(resumes) == 6 and resumes == [None] * 6
    assert not stale[0].exists()


def test_a_final_checkpoint_of_another_chosen_candidate_is_refused(cli, tmp_path, monkeypatch):
    """Stopped in its final training, a run whose folds choose another candidate on resume
    would continue one candidate's model under the other's settings."""
    run_dir = tmp_path / "run"
    fit = run_module.fit

    def stop_after_fit(*args, **kwargs):
        fit(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "fit", stop_after_fit)
    code, err = cli(*KFOLD, LEARNS, TWO_LRS, f"hydra.run.dir={run_dir}")
    assert code == 130, err
    assert rundir.last_checkpoint(run_dir).is_file()
    assert read(run_dir, rundir.SPLIT_REPORT)["selection"]["chosen"]["index"] == 1

    # The folds come out otherwise on resume (scored again) and favour the first candidate.
    path = rundir.selection_dir(run_dir) / rundir.SELECTION_SCORES
    path.write_text(json.dumps(read(path.parent, path.name) | {"folds": [], "entries": {}}))

    def favour_the_first(candidate, *args, **kwargs):
        score = 1.0 if candidate.overrides["optimizer.lr"] == 0.0 else 0.5
        return {"overrides": dict(candidate.overrides), "score": score, "train_seconds": 0.0}

    monkeypatch.setattr(select_module, "score_fold", favour_the_first)
    monkeypatch.setattr(run_module, "fit", fit)
    code, err = cli(f"trainer.resume={run_dir}")
    assert_one_line_error(
        code, err, "optimizer.lr=0.01", "optimizer.lr=0.0", "trainer.overwrite=true"
    )


def test_each_fold_is_standardised_with_its_own_training_cases(cli, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    seen, folds = [], []
    standardise = prepare_module.standardise

    def recording_standardise(X, train, *args, **kwargs):
        seen.append(np.asarray(train).copy())
        return standardise(X, train, *args, **kwargs)

    real = select_module.score_fold

    def recording_score_fold(candidate, data, fold, *args, **kwargs):
        folds.append(fold)
        return real(candidate, data, fold, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "standardise", recording_standardise)
    monkeypatch.setattr(select_module, "score_fold", recording_score_fold)
    code, err = cli(
        *KFOLD,
        "selection.folds=2",
        "selection.grid={optimizer.lr:[0.01]}",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 0, err
    assert len(folds) == 2 and len(seen) == 3
    training = seen[0]  # the run's own: every training case
    for fold, train in zip(folds, seen[1:], strict=True):
        assert np.array_equal(train, fold.train)
        assert not np.isin(train, fold.held).any()
        assert np.isin(train, training).all()  # so no test case either
    assert sorted(np.concatenate([f.held for f in folds]).tolist()) == sorted(training.tolist())


def test_images_with_a_sequence_model_name_the_model_choice(tmp_path, monkeypatch, capsys):
    write_image_folder(tmp_path / "imgs", per_class=6)
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "dataset=image_folder",
        f"dataset.root={tmp_path / 'imgs'}",
        "dataset.size=8",
        "model=lite",
        "selection=kfold",
        "selection.folds=2",
        "selection.grid={optimizer.lr:[0.01]}",
    )
    assert_one_line_error(code, err, "model=lite takes sensor windows")


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
