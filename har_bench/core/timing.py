"""Latencies: of one call, of a model at batch size 1, and of several calls measured alternately.

On a shared machine the load changes from second to second; timing A for a minute and then B
for a minute compares two different machines. Here each repeat calls every candidate once, in
an order rotated per repeat, so every candidate sees the same conditions and their ratio holds
even when the absolute figures drift."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

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


def latency_ms(call: Callable[[], object], repeats: int = 50, warmup: int = 5) -> dict[str, float]:
    """Wall time of ``call()`` in milliseconds, p50 and p95 over ``repeats`` after ``warmup``."""
    timed = alternating_latency({"call": call}, repeats, warmup)["call"]
    return {"p50": timed["p50"], "p95": timed["p95"], "repeats": repeats}


def measure_latency(
    model: Any, sample: Any, device: Any, repeats: int = 50, warmup: int = 5
) -> dict[str, float]:
    """Single-sample inference latency of a torch ``model`` in milliseconds (p50, p95) at batch
    size 1, fp32, on ``device``."""
    import torch  # only here: the rest of this module is torch-free

    model.eval().to(device)
    x = sample[:1].to(device)

    def forward() -> None:
        with torch.inference_mode():
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return latency_ms(forward, repeats, warmup)
