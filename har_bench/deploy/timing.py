"""Latencies of several ways to run one model, measured alternately in one process.

On a shared machine the load changes from second to second; timing A for a minute and then B
for a minute compares two different machines. Here each repeat calls every candidate once, in
an order rotated per repeat, so every candidate sees the same conditions and their ratio holds
even when the absolute figures drift. (metrics.latency_ms times one callable on its own.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np


def alternating_latency(
    calls: Mapping[str, Callable[[], object]], repeats: int = 50, warmup: int = 5
) -> dict[str, dict[str, float]]:
    """p50/p95/mean wall time in ms of each call, over ``repeats`` interleaved rounds."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {
        name: {
            "p50": float(np.percentile(t, 50)),
            "p95": float(np.percentile(t, 95)),
            "mean": float(np.mean(t)),
            "repeats": repeats,
        }
        for name, t in times.items()
    }
