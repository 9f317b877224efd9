from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import REPO
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from har_bench.cli import config_dir

# Tests must never download or write into the user's cache.
os.environ["HAR_BENCH_DATA"] = str(REPO / ".pytest_cache" / "har_bench_data")


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose the real configs with overrides, as the CLI would (paths point into tmp)."""

    def _compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                config_name="config",
                overrides=[
                    f"paths.output_dir={tmp_path / 'outputs'}",
                    f"paths.data_dir={tmp_path / 'data'}",
                    *overrides,
                ],
                return_hydra_config=return_hydra_config,
            )
        with open_dict(cfg):
            cfg.trainer.progress = False
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
