from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import REPO
from omegaconf import DictConfig, open_dict

from har_bench.config import compose

# Tests must never download or write into the user's cache.
os.environ["HAR_BENCH_DATA"] = str(REPO / ".pytest_cache" / "har_bench_data")


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose the real configs with overrides, as the CLI would (paths point into tmp)."""

    def _compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
        cfg = compose(
            [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'data'}"]
            + list(overrides),
            return_hydra_config=return_hydra_config,
        )
        with open_dict(cfg):
            cfg.trainer.progress = False
        return cfg

    yield _compose
