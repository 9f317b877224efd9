"""The Makefile's install recipe, run through the shell against a stub Python.

A fresh machine has no torch, so `make test` / `make run` start with the line that installs
`TORCH_SPEC`; these tests run that line (not a copy of it) with a fake `.venv/bin/python` that
records its arguments instead of installing anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

STUB = """#!/bin/sh
# "import torch" fails: the venv is new. Everything else is recorded, one JSON list per call.
if [ "$1" = "-c" ]; then exit 1; fi
"{python}" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "{log}"
"""


def run_install(tmp_path: Path, torch_spec: str) -> list[list[str]]:
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    log = tmp_path / "calls.jsonl"
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STUB.format(python=shutil.which("python3") or "python3", log=log))
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.run(
        ["make", "--no-print-directory", ".venv/.installed", f"TORCH_SPEC={torch_spec}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A spec read as shell syntax would have created a file (`<3`, `>2`) or run something.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".venv",
        "Makefile",
        "calls.jsonl",
        "pyproject.toml",
    ]
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("spec", "torch_args"),
    [
        ("torch>=2.2,<3", ["torch>=2.2,<3"]),
        ("torch>2.1,!=2.3.0", ["torch>2.1,!=2.3.0"]),
        (
            "torch --index-url https://download.pytorch.org/whl/cpu",
            ["torch", "--index-url", "https://download.pytorch.org/whl/cpu"],
        ),
        ("torch==2.13.0 numpy<3", ["torch==2.13.0", "numpy<3"]),
        ("torch[opt-einsum]*", ["torch[opt-einsum]*"]),
    ],
)
def test_install_passes_torch_spec_to_pip_intact(
    tmp_path: Path, spec: str, torch_args: list[str]
) -> None:
    calls = run_install(tmp_path, spec)
    assert calls[0] == ["-m", "pip", "install", *torch_args]
    assert calls[1] == ["-m", "pip", "install", "-e", ".[dev]"]
    assert (tmp_path / ".venv" / ".installed").exists()
