"""har-bench: config-driven ResNet/ResNeXt experiments for human-activity recognition.

From Python: ``har_bench.train(overrides)``, ``har_bench.load_run(path)``,
``har_bench.compare(paths)`` (:mod:`har_bench.api`). They are imported on first use, so
``import har_bench`` (and the ``har-bench`` command's start) does not load torch or Hydra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from har_bench.api import Run, UserError, compare, load_run, train

__version__ = "0.1.0"
__all__ = ["Run", "UserError", "__version__", "compare", "load_run", "train"]
_API = ("Run", "UserError", "compare", "load_run", "train")


def __getattr__(name: str) -> Any:
    if name in _API:
        from har_bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'har_bench' has no attribute {name!r}")
