"""Shared test helpers (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

from har_bench.config import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def config_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
