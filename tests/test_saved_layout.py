"""Run directories saved before the package took its layered layout name the old modules in
their config's ``_target_``s (``har_bench.engine.Trainer``, ``har_bench.augment.Augment``, ...).
They must still resume, export and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import SMALL, in_process_cli

from har_bench.config import MOVED_MODULES, upgrade_targets
from har_bench.runs import rundir


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def as_saved_before(run_dir: Path) -> str:
    """Rewrite the run's saved config with the module names the earlier layout wrote."""
    path = run_dir / rundir.SAVED_CONFIG
    text = path.read_text()
    for old, new in MOVED_MODULES.items():
        text = text.replace(f"_target_: {new}.", f"_target_: {old}.")
    path.write_text(text)
    return text


def test_old_targets_are_upgraded_and_new_ones_kept():
    saved = {
        "trainer": {"_target_": "har_bench.engine.Trainer", "max_epochs": 3},
        "augment": {"_target_": "har_bench.augment.Augment"},
        "scheduler": {"_target_": "har_bench.schedules.StepSchedule"},
        "model": {"_target_": "har_bench.models.ResNet", "layers": [{"_target_": "x.y"}]},
    }
    up = upgrade_targets(saved)
    assert up["trainer"] == {"_target_": "har_bench.training.engine.Trainer", "max_epochs": 3}
    assert up["augment"]["_target_"] == "har_bench.training.augment.Augment"
    assert up["scheduler"]["_target_"] == "har_bench.training.schedules.StepSchedule"
    assert up["model"] == saved["model"]  # unmoved modules are left alone


@pytest.mark.slow
def test_a_run_saved_by_the_earlier_layout_resumes_exports_and_predicts(main, tmp_path):
    pytest.importorskip("onnxruntime")
    from har_bench.deploy.export import export_run
    from har_bench.deploy.predict import predict

    code, err = main(*SMALL, "trainer.max_epochs=2", "scheduler=none")
    assert code == 0, err
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").glob("*/*/metrics.json")]
    text = as_saved_before(run_dir)
    assert "_target_: har_bench.engine.Trainer" in text  # the test really writes old names
    metrics = json.loads((run_dir / rundir.METRICS).read_text())
    metrics.update(status="interrupted", error="interrupted by SIGINT")
    (run_dir / rundir.METRICS).write_text(json.dumps(metrics))

    code, err = main(f"trainer.resume={run_dir}", "trainer.max_epochs=3")
    assert code == 0, err
    metrics = json.loads((run_dir / rundir.METRICS).read_text())
    assert metrics["status"] == "completed" and metrics["resumed_from_epoch"] == 2

    as_saved_before(run_dir)
    report = export_run(run_dir, repeats=2, log=lambda m: None)
    assert report["forms"]["fp32"]["max_abs_logit_diff"] <= 1e-4

    from har_bench.deploy.loaded import FinishedRun

    run = FinishedRun(run_dir)
    raw = run.data.data.X[run.data.split.test][:4]
    df = pd.DataFrame(np.concatenate([w.T for w in raw]), columns=run.data.data.channel_names)
    df.insert(0, "time", np.arange(len(df)) / 50.0)
    df.to_csv(tmp_path / "rec.csv", index=False)
    table, _ = predict(run_dir, [tmp_path / "rec.csv"])
    assert len(table) > 0 and table["predicted"].isin(run.data.class_names).all()
