from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import REPO
from omegaconf import DictConfig, open_dict

from har_bench.config import compose

# Tests must never download or write into the user's cache.
os.environ["HAR_BENCH_DATA"] = str(REPO / ".pytest_cache" / "har_bench_data")


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """A Hydra job run in-process points the root logger at the streams of its test (closed
    after it) at level INFO; restore it so a later test's log records do not fail on them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        # pytest's own capture handlers change per test phase; they are pytest's to remove
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


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
