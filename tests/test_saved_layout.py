"""Run directories saved before the package took its layered layout name the old modules in
their config's ``_target_``s (``har_bench.engine.Trainer``, ``har_bench.augment.Augment``, ...)
and lack the keys added since (``trainer.compile``). They must still resume, export and predict,
and compare as the same configuration as a new run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import SMALL, in_process_cli
from omegaconf import OmegaConf

from har_bench.config import ADDED_KEYS, MOVED_MODULES, compose_container, upgrade_targets
from har_bench.runs import rundir
from har_bench.runs.resume import SAME_RUN, config_differences


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def as_saved_before(run_dir: Path) -> str:
    """Rewrite the run's saved config as the earlier layout wrote it: the old module names, and
    none of the keys added since."""
    path = run_dir / rundir.SAVED_CONFIG
    config = OmegaConf.load(path)
    for key in ADDED_KEYS:
        group, _, name = key.partition(".")
        if group in config and name in config[group]:
            del config[group][name]
            if not config[group]:  # a group added since (selection) was absent altogether
                del config[group]
    text = OmegaConf.to_yaml(config)
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


def test_a_config_saved_without_the_keys_added_since_equals_a_new_one(tmp_path):
    """Runs saved before trainer.compile, dataset.nan_policy or the selection group existed
    are the same experiment as a new run of their settings (resume, skipped sweep jobs)."""
    new = compose_container(["dataset=synthetic"])
    run_dir = tmp_path / "run"
    (run_dir / rundir.HYDRA_DIR).mkdir(parents=True)
    (run_dir / rundir.SAVED_CONFIG).write_text(OmegaConf.to_yaml(new))
    as_saved_before(run_dir)
    old = rundir.saved_config(run_dir)
    old.pop("selection", None)  # the group did not exist
    assert "compile" not in old["trainer"]
    assert config_differences(old, new) == []
    assert config_differences(old, new, SAME_RUN) == []
    # A run that selects is another experiment than one saved before selection existed.
    kfold = compose_container(["dataset=synthetic", "selection=kfold"])
    assert any(d.startswith("selection.method") for d in config_differences(old, kfold))


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
    assert "compile:" not in text
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


def test_committed_records_of_earlier_runs_compare_equal_to_their_config_today():
    """The run records in docs/runs were saved by earlier versions: composed again from their
    own overrides, their configs must show no difference (else resume and compare split them).
    An ensemble's config is its first member's with the members listed: nothing to compose."""
    from har_bench.analysis.ensemble import is_ensemble
    from har_bench.config import compose
    from har_bench.runs.resume import config_differences

    records = sorted(
        path
        for path in (Path(__file__).parents[1] / "docs" / "runs").glob("**/.hydra/config.yaml")
        if not is_ensemble(path.parents[1])
    )
    if not records:
        pytest.skip("no committed run records")
    for path in records[:5]:
        run_dir = path.parents[1]
        saved = rundir.saved_config(run_dir)
        new = OmegaConf.to_container(compose(rundir.saved_overrides(run_dir)), resolve=False)
        assert config_differences(saved, new) == [], run_dir
