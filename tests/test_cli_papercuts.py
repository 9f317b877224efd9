"""Small things a new user meets first: a pipe closed early, Hydra's own flag errors, the
"did you mean" hints, the log line of an image dataset, and the verbs in --help."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, in_process_cli
from deploy_helpers import trained_run
from test_image_transforms import write_cifar

from har_bench import cli
from har_bench.data.images import load_cifar10
from har_bench.data.splits import official_split
from har_bench.experiment.prepare import prepare_data


def _closed_stdout(*args: str, cwd: Path) -> tuple[int, str]:
    """``har-bench ARGS | head -0``: the reader of stdout is gone before anything is written."""
    p = subprocess.Popen(
        [sys.executable, "-m", "har_bench.cli", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HAR_BENCH_DATA": str(cwd / "data")},
    )
    p.stdout.close()
    err = p.stderr.read()
    return p.wait(timeout=300), err


def test_help_into_a_closed_pipe_is_quiet(tmp_path):
    code, err = _closed_stdout("--help", cwd=tmp_path)
    assert code == cli.EXIT_BROKEN_PIPE and err == "", err


@pytest.mark.slow
def test_predict_into_a_closed_pipe_is_quiet(tmp_path):
    import numpy as np
    import pandas as pd

    run_dir = trained_run()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(640, 3)), columns=["ch0", "ch1", "ch2"])
    frame.insert(0, "time", np.arange(len(frame)) / 50.0)
    frame.to_csv(tmp_path / "rec.csv", index=False)
    code, err = _closed_stdout("predict", str(run_dir), "--input", "rec.csv", cwd=tmp_path)
    assert code == cli.EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize(
    "args, needles",
    [
        # A sweep's --cfg: Hydra's own check, a plain ValueError.
        (["-m", "--cfg", "hydra", "dataset=synthetic"], ["Only one of --run, --multirun"]),
        # Case alone: the option is there.
        (["dataset=UCI_HAR"], ["did you mean dataset=uci_har?"]),
        # No sibling is close: the keys that are there, not a path matching on its prefix.
        (["-m", "dataset=synthetic", "model.groups=4,8"], ["model has:", "cardinality"]),
    ],
)
def test_config_mistakes_are_one_helpful_line(tmp_path, monkeypatch, capsys, args, needles):
    code, err = in_process_cli(tmp_path, monkeypatch, capsys)(*args)
    line = assert_one_line_error(code, err, *needles)
    assert "dropout" not in line or "model has:" in line, line


def test_image_dataset_is_logged_as_images(tmp_path, caplog):
    write_cifar(tmp_path, 4)
    data = load_cifar10(tmp_path, tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="har_bench"):
        prepare_data(lambda: data, lambda d: official_split(d), "official", tmp_path)
    line = next(r.getMessage() for r in caplog.records if "dataset" in r.getMessage())
    assert "24 images, 3 x 32 x 32 stored" in line and "samples" not in line, line


def test_help_names_every_verb(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["har-bench"])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for verb in cli.VERBS:
        assert f"har-bench {verb} " in out, verb


def test_nothing_shown_to_users_names_an_issue_number():
    """Users know no issue tracker: messages, docs and configs speak of what a thing is."""
    import re

    from helpers import REPO

    pattern = re.compile(r"\bissues? ?#?\d+", re.IGNORECASE)
    files = [
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
        *(REPO / "har_bench").rglob("*.py"),
        *(REPO / "configs").rglob("*.yaml"),
    ]
    found = [
        f"{path.relative_to(REPO)}: {m[0]}"
        for path in files
        for m in pattern.finditer(path.read_text(encoding="utf-8"))
    ]
    assert found == []
