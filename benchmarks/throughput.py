"""Where training time goes: per preset, the training step's windows/s and GFLOP/s against the
matmul peak measured in the same process, inference windows/s, and a per-step breakdown.

    python benchmarks/throughput.py [--presets default uci_har_best] [--steps 60]
                                    [--device cpu] [--threads N] [--json PATH]
                                    [--levers trainer.compile=true +optimizer.fused=true]

Each preset is composed as a run would compose it (its model, batch size and recipe: sensor
augmentation, label smoothing, moving average of the weights) and trained by the real
``Trainer.fit`` for two epochs of ``--steps`` optimizer steps on UCI-HAR windows (the real ones
under ``--data``, else random windows of the same shape; the speed does not depend on the
values); the second epoch is timed. The achieved rate counts forward + backward as 3 x the
forward FLOPs (torch.utils.flop_counter). The peak is a large matmul on the same threads in the
precision the training step runs in (``trainer.precision``: fp32, or bf16 / fp16 for mixed
precision), so a mixed-precision row is measured against what its units can do; the fp32 share
is printed beside it.
The breakdown comes from ``torch.profiler`` over one more epoch, using the step's own labels
(augment, forward, backward, host_sync, optimizer, ema) and the epoch end's (ema_batchnorm,
evaluate). Each ``--levers`` override is measured on and off side by side: the configurations
take turns for ``--rounds`` rounds and each keeps its best round, so a lever's ratio holds on a
machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from har_bench.config import compose
from har_bench.experiment.components import from_config
from har_bench.experiment.spec import Choices
from har_bench.models.summary import model_summary
from har_bench.runs.artifacts import host_info
from har_bench.training.engine import precision_name

# name -> (model, overrides): the presets a user runs, with their own batch and recipe.
PRESETS: dict[str, tuple[str, list[str]]] = {
    "default": ("resnext_har_3stage", []),
    "uci_har_best": ("resnext_har_3stage", ["experiment=uci_har_best"]),
    "resnext_har_s2": ("resnext_har_s2", ["model=resnext_har_s2"]),
    "resnext_har": ("resnext_har", ["model=resnext_har"]),
    "resnet18": ("resnet18", ["model=resnet18", "model.layout=1d"]),
    "cnn": ("cnn", ["model=cnn"]),
    "lite": ("lite", ["model=lite"]),
    "inception_time": ("inception_time", ["model=inception_time"]),
    "patchtst": ("patchtst", ["model=patchtst"]),
}
LABELS = (
    "augment",
    "forward",
    "backward",
    "host_sync",
    "optimizer",
    "ema",
    "ema_batchnorm",
    "evaluate",
)
CHANNELS, LENGTH, CLASSES = 9, 128, 6
PEAK_NAMES = {"32": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "UCI_HAR"


def matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 2.0
) -> float:
    """GFLOP/s of an n x n matmul in ``dtype``, the best of repeated timings over ``seconds``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def windows(data_root: Path | None, n: int) -> tuple[torch.Tensor, torch.Tensor, list, Any]:
    """``n`` training windows, labels, channel groups and per-channel (mean, std)."""
    if data_root is not None and data_root.is_dir():
        from har_bench.data.uci_har import load_uci_har

        data = load_uci_har(root=data_root, data_dir=data_root, progress=False)
        idx = torch.arange(n) % len(data.X)
        X = torch.from_numpy(data.X)[idx]
        y = torch.from_numpy(data.y.astype("int64"))[idx]
        groups = data.channel_groups or []
    else:
        X, y = torch.randn(n, CHANNELS, LENGTH), torch.randint(0, CLASSES, (n,))
        groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    mean, std = X.mean(dim=(0, 2)), X.std(dim=(0, 2))
    X = (X - mean[:, None]) / std[:, None]
    return X.contiguous(), y, groups, (mean.numpy(), std.numpy())


def bench(
    name: str, overrides: list[str], args: argparse.Namespace, peaks: dict[str, float]
) -> dict:
    model_name, preset = PRESETS[name]
    cfg = compose([*preset, *overrides, f"trainer.device={args.device}"])
    experiment = from_config(cfg, Choices(model=model_name))
    training = experiment.training
    trainer = dataclasses.replace(training.trainer, max_epochs=2, progress=False, patience=None)
    n = trainer.batch_size * trainer.accumulate_grad_batches * args.steps
    X, y, groups, (mean, std) = windows(args.data, n)
    X_val, y_val = X[: trainer.eval_batch_size * 2], y[: trainer.eval_batch_size * 2]
    torch.manual_seed(0)
    model = experiment.make_model(CHANNELS, CLASSES)
    flops = model_summary(model, X[:1])["flops_per_sample"]

    def fit(epochs: int) -> Any:
        augment = training.augment
        if augment is not None:
            augment = augment.bind(CLASSES, groups, mean, std, experiment.seed)
        return dataclasses.replace(trainer, max_epochs=epochs).fit(
            model,
            X,
            y,
            X_val,
            y_val,
            training.optimizer_factory,
            scheduler_factory=training.scheduler_factory,
            seed=experiment.seed,
            augment=augment,
        )

    history = fit(2).history
    train_sps = history[-1]["samples_per_second"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fit(1)
        profiled = time.perf_counter() - t0
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key in LABELS}
    breakdown = {k: totals.get(k, 0.0) / profiled for k in LABELS}
    breakdown["other"] = max(0.0, 1 - sum(breakdown.values()))
    model.eval()
    trainer.predict(model, X[: trainer.eval_batch_size])
    t0 = time.perf_counter()
    trainer.predict(model, X)
    infer_sps = len(X) / (time.perf_counter() - t0)
    gflops = 3 * flops * train_sps / 1e9
    precision = precision_name(trainer.amp_dtype)
    if precision not in peaks:
        peaks[precision] = matmul_peak(trainer.device, trainer.amp_dtype)
    return {
        "preset": name,
        "model": model_name,
        "batch": trainer.batch_size * trainer.accumulate_grad_batches,
        "mflops_per_window": flops / 1e6,
        "train_windows_per_s": train_sps,
        "train_gflops": gflops,
        "precision": precision,
        "share_of_peak": gflops / peaks[precision],
        "share_of_fp32_peak": gflops / peaks["32"],
        "inference_windows_per_s": infer_sps,
        "breakdown": breakdown,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["default", "uci_har_best"], choices=PRESETS)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per timed epoch")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--data", type=Path, default=DATA, help="UCI-HAR folder (random if absent)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--levers", nargs="*", default=[], help="overrides measured on and off")
    p.add_argument("--rounds", type=int, default=1, help="turns per configuration (best kept)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every preset")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peaks = {"32": matmul_peak(device)}  # GFLOP/s by trainer.precision; others when first used
    configs = [(name, lever) for name in args.presets for lever in ["", *args.levers]]
    best: dict[tuple[str, str], dict] = {}
    for _ in range(args.rounds):
        for name, lever in configs:
            row = bench(name, [*args.overrides, *([lever] if lever else [])], args, peaks)
            row["lever"] = lever or "-"
            if (name, lever) not in best or row["train_windows_per_s"] > best[(name, lever)][
                "train_windows_per_s"
            ]:
                best[(name, lever)] = row
    rows = [best[c] for c in configs]
    host = host_info()
    print(
        f"{host['processor']}, torch {host['torch']}, {host['torch_threads']} threads, "
        f"{args.device}; matmul peak GFLOP/s: "
        + ", ".join(f"{PEAK_NAMES[k]} {v:.0f}" for k, v in peaks.items())
    )
    print(
        "| preset | lever | model | batch | precision | MFLOPs/window | train windows/s | GFLOP/s "
        "| of its precision's peak | of fp32 peak | inference windows/s |"
    )
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['preset']} | {r['lever']} | {r['model']} | {r['batch']} | {r['precision']} "
            f"| {r['mflops_per_window']:.1f} "
            f"| {r['train_windows_per_s']:.0f} | {r['train_gflops']:.1f} "
            f"| {100 * r['share_of_peak']:.0f}% | {100 * r['share_of_fp32_peak']:.0f}% "
            f"| {r['inference_windows_per_s']:.0f} |"
        )
    print("\nshare of a training epoch's wall time (torch.profiler, CPU):")
    print("| preset | lever | " + " | ".join((*LABELS, "other")) + " |")
    print("| --- | --- |" + " ---: |" * (len(LABELS) + 1))
    for r in rows:
        shares = " | ".join(f"{100 * r['breakdown'][k]:.0f}%" for k in (*LABELS, "other"))
        print(f"| {r['preset']} | {r['lever']} | {shares} |")
    if args.json is not None:
        out = {"host": host, "device": args.device, "peak_gflops": peaks, "rows": rows}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
