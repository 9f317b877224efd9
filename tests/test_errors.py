"""Every bad input gets one ``error:`` line naming the value and what was expected, exit code 2,
no traceback, and nothing already written is lost.

Errors Hydra raises while composing the config are checked in a subprocess (no torch import,
well under a second each); errors raised inside a run go through ``cli.main`` in-process, which
is the same code path without paying for a Python start per case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SMALL, assert_one_line_error, in_process_cli
from fixtures_uci import write_uci_dataset, zip_dataset

from har_bench import cli
from har_bench.data.base import HARData
from har_bench.data.splits import Split
from har_bench.experiment.prepare import check_split_labels


def cli_subprocess(*args: str, cwd: Path) -> tuple[int, str]:
    p = subprocess.run(
        [sys.executable, "-m", "har_bench.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HAR_BENCH_DATA": str(cwd / "data")},
    )
    return p.returncode, p.stderr


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def only_run_dir(tmp_path: Path) -> Path:
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").glob("*/*/metrics.json")]
    return run_dir


# -- composition errors: before Hydra creates a run directory -----------------------------------


@pytest.mark.parametrize(
    "args,needles",
    [
        (
            ["model=resnet999"],
            ["model=resnet999 is unknown: expected one of", "resnet18", "did you mean"],
        ),
        (["dataset=uci"], ["dataset=uci is unknown: expected one of", "uci_har, "]),
        (["optimizer=adamx"], ["optimizer=adamx is unknown: expected one of adam, adamw, sgd"]),
        (
            ["trainer.max_epoch=3"],
            ["trainer.max_epoch is not a config key; did you mean trainer.max_epochs?"],
        ),
        (["model=resnet18", "model.stem_widht=8"], ["did you mean model.stem_width?"]),
        (["modle=resnet18"], ["modle is not a config key; did you mean model?"]),
        (
            ["experiment=cardinality_har", "hydra.sweeper.params.model.shape='32x4d'"],
            ["sweep that parameter as `-m model.shape=...`"],
        ),
        (
            ["experiment=cardinality_har", "hydra.sweeper.params.model.shap='32x4d'"],
            ["sweep that parameter as `-m model.shape=...`"],
        ),
        (["trainer.max_epochs='3"], ['cannot parse the override "trainer.max_epochs=\'3"']),
    ],
)
def test_config_errors_are_one_line(tmp_path, args, needles):
    code, err = cli_subprocess(*args, cwd=tmp_path)
    assert_one_line_error(code, err, *needles)
    assert "HYDRA_FULL_ERROR" not in err and "Config search path" not in err
    assert not (tmp_path / "outputs").exists()  # nothing was started


# -- errors inside a run: a failed run dir with the message and a traceback file -----------------


@pytest.fixture(scope="module")
def uci(tmp_path_factory):
    """A tiny UCI-HAR copy, a corrupt one, one with a test-only class, and a zip of it."""
    base = tmp_path_factory.mktemp("uci")
    good = write_uci_dataset(base / "good", n_train=24, n_test=12)
    bad = write_uci_dataset(base / "corrupt", n_train=24, n_test=12)
    f = bad.dataset_dir / "train" / "Inertial Signals" / "body_acc_x_train.txt"
    lines = f.read_text().splitlines()
    lines[4] = lines[4][: len(lines[4]) // 2]  # a truncated row
    f.write_text("\n".join(lines) + "\n")
    unseen = write_uci_dataset(base / "unseen", n_train=24, n_test=12)
    y = unseen.dataset_dir / "train" / "y_train.txt"
    y.write_text(y.read_text().replace("6\n", "5\n"))  # LAYING only in the test subjects
    return {
        "good": good.dataset_dir,
        "corrupt": bad.dataset_dir,
        "unseen": unseen.dataset_dir,
        "zip": zip_dataset(good.dataset_dir, base / "uci.zip"),
        "base": base,
    }


RUN_ERRORS = {
    "cardinality": (
        [*SMALL, "model=resnext50", "model.cardinality=0"],
        ["model.cardinality=0 is invalid", "expected an integer >= 1"],
    ),
    "base_width": ([*SMALL, "model=resnext50", "model.base_width=3"], ["base_width=3", "expected"]),
    "layers": ([*SMALL, "model.layers=[2,0]"], ["model.layers=[2, 0] is invalid", "expected"]),
    "accumulate": (
        [*SMALL, "trainer.accumulate_grad_batches=0"],
        ["trainer.accumulate_grad_batches=0 is invalid: expected an integer >= 1"],
    ),
    "negative lr": (
        [*SMALL, "optimizer.lr=-0.1"],
        ["optimizer.lr=-0.1 is invalid: expected a number >= 0"],
    ),
    "lr not a number": (
        [*SMALL, "optimizer.lr=1e-3x"],
        ["optimizer.lr='1e-3x' is invalid: expected a number"],
    ),
    "momentum": (
        [*SMALL, "optimizer=sgd", "optimizer.momentum=-1"],
        ["optimizer.momentum=-1 is invalid: expected a number >= 0"],
    ),
    "drop_last": (
        [*SMALL, "trainer.batch_size=100000", "trainer.drop_last=true"],
        ["trainer.batch_size=100000 is larger than the training set", "drop_last=true"],
    ),
    "cuda": (
        [*SMALL, "trainer.device=cuda"],
        ["trainer.device='cuda' but CUDA is not available"],
    ),
    "seed": ([*SMALL, "seed=abc"], ["seed='abc' is invalid: expected an integer >= 0"]),
    "refit not a bool": (
        [*SMALL, "trainer.refit=yes"],
        ["trainer.refit='yes' is invalid: expected true or false"],
    ),
    "latency warm-up": (
        [*SMALL, "efficiency.latency_warmup=-1"],
        ["efficiency.latency_warmup=-1 is invalid: expected an integer >= 0"],
    ),
    "unknown parameter": ([*SMALL, "+trainer.foo=1"], ["trainer.foo is not a parameter of"]),
    "patience without validation": (
        [*SMALL, "split.val_fraction=0", "trainer.patience=3"],
        ["trainer.patience=3 needs a validation part", "split.val_fraction=0.2"],
    ),
    "refit without validation": (
        [*SMALL, "split.val_fraction=0", "trainer.refit=true"],
        ["trainer.refit=true needs a validation part", "trainer.refit=false"],
    ),
    "split subjects": (
        [*SMALL, "split=subjects", "split.test_subjects=[99]"],
        ["split.test_subjects", "99"],
    ),
}


@pytest.mark.parametrize("case", list(RUN_ERRORS))
def test_bad_values_fail_the_run_with_one_line(main, tmp_path, case):
    if case == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    args, needles = RUN_ERRORS[case]
    assert_one_line_error(*main(*args), *needles)
    run_dir = only_run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"]
    assert "Traceback" in (run_dir / "error.txt").read_text()


@pytest.mark.parametrize(
    "root,needles",
    [
        (
            "/nonexistent/UCI",
            ["UCI-HAR root /nonexistent/UCI does not exist", "dataset.root must be"],
        ),
        ("{base}", ["looked for 'activity_labels.txt'", "dataset.root must be"]),
        ("{corrupt}", ["body_acc_x_train.txt, line 5", "expected 128 values"]),
        ("{unseen}", ["test labels ['LAYING'] never occur in the training part"]),
    ],
)
def test_bad_dataset_root(main, uci, root, needles):
    root = root.format(base=uci["base"], corrupt=uci["corrupt"], unseen=uci["unseen"])
    args = [f"dataset.root={root}", "split.val_fraction=0.5", *SMALL[1:]]
    assert_one_line_error(*main(*args), *needles)


def test_checksum_mismatch_caches_nothing(main, uci, tmp_path):
    args = [f"dataset.url=file://{uci['zip']}", "dataset.sha256=" + "0" * 64, *SMALL[1:]]
    line = assert_one_line_error(*main(*args), "checksum mismatch", "expected sha256 0000")
    assert "nothing was cached" in line
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]


def test_missing_mandatory_value(main, tmp_path):
    if not (cli.config_dir() / "dataset" / "recordings.yaml").is_file():
        pytest.skip("no dataset=recordings")
    assert_one_line_error(*main("dataset=recordings"), "dataset.path is required")


def test_window_longer_than_recordings(main, tmp_path):
    if not (cli.config_dir() / "dataset" / "recordings.yaml").is_file():
        pytest.skip("no dataset=recordings")
    rows = ["subject,label,time,ax,ay,az"]
    for s in range(1, 7):
        rows += [f"{s},{'walk' if t < 40 else 'sit'},{t / 50},0.1,0.2,0.3" for t in range(80)]
    (tmp_path / "rec.csv").write_text("\n".join(rows) + "\n")
    args = [
        "dataset=recordings",
        f"dataset.path={tmp_path / 'rec.csv'}",
        "dataset.channels=[ax,ay,az]",
        "dataset.window=512",
        *SMALL[1:],
    ]
    assert_one_line_error(*main(*args), "512")


def test_diverged_run_is_not_a_traceback(main, tmp_path):
    code, err = main(*SMALL, "optimizer=sgd", "optimizer.lr=1e30")
    assert code == 1 and "Traceback" not in err
    assert "training diverged" in err and "lower optimizer.lr" in err
    run_dir = only_run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    # The first update blows the weights up, so the second step's loss is the first non-finite.
    assert metrics["diverged"]["epoch"] == 1 and metrics["diverged"]["step"] == 1
    assert "trainer.precision=32" in metrics["hint"]


# -- the split checks run.py adds --------------------------------------------------------------


def har_data(y, subjects, split):
    n = len(y)
    return HARData(
        name="t",
        X=np.zeros((n, 1, 8), np.float32),
        y=np.asarray(y),
        subjects=np.asarray(subjects),
        class_names=["a", "b", "c"],
        channel_names=["x"],
        official_split=np.asarray(split),
    )


def test_split_without_windows_or_with_unseen_test_labels():
    data = har_data([0, 1, 2, 0], [1, 1, 2, 2], ["train", "train", "test", "test"])
    with pytest.raises(ValueError, match=r"the test part has no windows \(train/val/test = 2/0/0"):
        check_split_labels(data, Split(train=np.array([0, 1]), val=np.array([]), test=np.array([])))
    with pytest.raises(ValueError, match="the train part has no windows"):
        check_split_labels(data, Split(train=np.array([]), val=np.array([]), test=np.array([2])))
    with pytest.raises(ValueError, match=r"test labels \['c'\] never occur in the training part"):
        check_split_labels(
            data, Split(train=np.array([0, 1]), val=np.array([]), test=np.array([2, 3]))
        )
    check_split_labels(data, Split(train=np.array([0, 1, 2]), val=np.array([]), test=np.array([3])))


def test_as_user_error_classifies_bad_input_and_bugs():
    from hydra.errors import InstantiationException
    from omegaconf import OmegaConf

    from har_bench.config import as_user_error
    from har_bench.core.errors import UserError

    mine = UserError("model.width=0 is invalid")
    assert as_user_error(mine) is mine
    # A library's missing file or bad value is a bug unless the code that knew it was input
    # raised it as a UserError.
    assert as_user_error(FileNotFoundError("no such file: x.csv")) is None
    assert as_user_error(ValueError("shape mismatch")) is None
    from omegaconf.errors import InterpolationKeyError

    with pytest.raises(InterpolationKeyError) as info:
        OmegaConf.to_container(OmegaConf.create({"a": "${nowhere}"}), resolve=True)
    converted = as_user_error(info.value)
    assert converted is not None and "nowhere" in str(converted) and "\n" not in str(converted)
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = UserError("cardinality=3 does not divide 64")
    assert str(as_user_error(wrapped)) == "cardinality=3 does not divide 64"
    wrapped.__cause__ = ValueError("could not broadcast")
    assert as_user_error(wrapped) is None
    assert as_user_error(RuntimeError("shape mismatch")) is None
    assert as_user_error(KeyError("x")) is None
