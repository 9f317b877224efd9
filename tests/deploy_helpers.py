"""A small trained run for the export and predict tests, trained once per test session."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra

from har_bench import cli

TRAIN = [
    "dataset=synthetic",
    "model=resnext_har",
    "augment=none",
    "trainer.max_epochs=4",
    "trainer.batch_size=32",
    "trainer.progress=false",
    "efficiency.latency_repeats=2",
]
_RUNS: dict[str, Path] = {}


def trained_run() -> Path:
    """The run dir of a finished synthetic resnext_har run (3 channels x 64 samples at 50 Hz,
    4 classes), shared by every test module of the session."""
    if "synthetic" in _RUNS:
        return _RUNS["synthetic"]
    run_dir = Path(tempfile.mkdtemp(prefix="har_bench_deploy_")) / "run"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    GlobalHydra.instance().clear()
    try:
        code = cli.main([*TRAIN, f"hydra.run.dir={run_dir}"])
    finally:
        GlobalHydra.instance().clear()
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)
    assert code == 0, f"training the fixture run failed ({code})"
    _RUNS["synthetic"] = run_dir
    return run_dir
