"""Running ``har-bench`` in-process for tests of its error and resume paths."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra

from har_bench import cli

SMALL = [
    "dataset=synthetic",
    "model=resnet18",
    "model.stem_width=8",
    "trainer.max_epochs=1",
    "trainer.progress=false",
    "efficiency.latency_repeats=1",
]


def in_process_cli(tmp_path: Path, monkeypatch, capsys) -> Callable[..., tuple[int, str]]:
    """``har-bench ARGS`` in this process, returning (exit code, stderr): the CLI's own code
    path without a Python start (and torch import) per call. Hydra reconfigures logging and
    reads sys.argv; both are put back after each call."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HAR_BENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(sys, "argv", ["har-bench"])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def main(*args: str) -> tuple[int, str]:
        GlobalHydra.instance().clear()
        capsys.readouterr()
        try:
            code = cli.main([*args, f"paths.output_dir={tmp_path / 'outputs'}"])
        except SystemExit as e:
            code = e.code
        finally:
            GlobalHydra.instance().clear()
            for h in root.handlers[:]:
                if h not in handlers:
                    root.removeHandler(h)
                    h.close()
            root.handlers[:] = handlers
            root.setLevel(level)
        return code, capsys.readouterr().err

    return main


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2, exactly one ``error:`` line holding every needle, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
