"""Dataset/split configs: defaults, overrides, and the split report in the run directory."""

from __future__ import annotations

import json

import pytest
from fixtures_data import write_wisdm_2019
from helpers import config_options
from hydra.utils import instantiate

from har_bench.experiment.run import run


@pytest.mark.parametrize(
    ("dataset", "split"),
    [
        ("uci_har", "official"),
        ("uea", "official"),
        ("hapt", "official"),
        ("cifar10", "official"),
        ("wisdm", "group_kfold"),
        ("pamap2", "group_kfold"),
        ("recordings", "group_kfold"),
        ("image_folder", "group_kfold"),
    ],
)
def test_default_split_per_dataset(compose_cfg, dataset, split):
    cfg = compose_cfg(f"dataset={dataset}", return_hydra_config=True)
    assert cfg.hydra.runtime.choices.split == split
    assert cfg.dataset._target_.startswith("har_bench.data.")
    # The command line still wins over a dataset's default.
    override = compose_cfg(f"dataset={dataset}", "split=loso", return_hydra_config=True)
    assert override.hydra.runtime.choices.split == "loso"


def test_every_split_option_composes(compose_cfg):
    assert {"official", "subjects", "loso", "group_kfold", "random"} <= set(config_options("split"))
    cfg = compose_cfg("split=subjects", "split.test_subjects=[1,2]")
    assert list(cfg.split.test_subjects) == [1, 2]


def test_wisdm_config_instantiates_on_fixture(compose_cfg, tmp_path):
    ds = write_wisdm_2019(tmp_path / "src", subjects=(1600, 1601, 1602, 1603, 1604), n=40)
    cfg = compose_cfg(
        "dataset=wisdm", f"dataset.root={ds}", "dataset.window=10", "dataset.step=5",
        "split.fold=4",
    )  # fmt: skip
    data = instantiate(cfg.dataset)
    split = instantiate(cfg.split)(data)
    assert len(split.subjects(data)["test"]) == 1 and split.info["fold"] == 4


@pytest.mark.slow
def test_random_split_without_opt_in_fails_the_run(compose_cfg, tmp_path):
    cfg = compose_cfg("dataset=synthetic", "split=random", "trainer=debug")
    with pytest.raises(ValueError, match="allow_leakage"):
        run(cfg, tmp_path / "run")


@pytest.mark.slow
def test_run_writes_split_report_and_records_allowed_leakage(compose_cfg, tmp_path):
    small = [
        "model=resnet18",
        "model.stem_width=8",
        "trainer=debug",
        "efficiency.latency_repeats=2",
    ]
    run(compose_cfg("dataset=synthetic", *small), tmp_path / "clean")
    report = json.loads((tmp_path / "clean" / "split_report.json").read_text())
    assert report["clean"] and report["kind"] == "official"
    run(
        compose_cfg("dataset=synthetic", "split=random", "split.allow_leakage=true", *small),
        tmp_path / "leaky",
    )
    leaky = json.loads((tmp_path / "leaky" / "split_report.json").read_text())
    assert not leaky["clean"] and leaky["leakage_allowed"] and leaky["kind"] == "random"
    metrics = json.loads((tmp_path / "leaky" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
