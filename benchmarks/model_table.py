"""Params and FLOPs per sample of every model preset on UCI-HAR windows (9 x 128, 6 classes).

    python benchmarks/model_table.py [--layout 1d] [--channels 9] [--length 128]

Counts only (no timing), so the numbers are exact and the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

from har_bench.config import compose, config_dir
from har_bench.experiment.components import model_from_config
from har_bench.models import RESNEXT50_SHAPES, model_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layout", default="1d", choices=["1d", "2d_sensor"])
    ap.add_argument("--channels", type=int, default=9)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--classes", type=int, default=6)
    args = ap.parse_args()
    presets = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
    rows = [(name, []) for name in presets]
    rows += [("resnext50", [f"model.shape={s}"]) for s in RESNEXT50_SHAPES]
    x = torch.randn(1, args.channels, args.length)
    if args.layout == "2d_sensor":  # [N, 1, T, C]
        x = x.transpose(1, 2).unsqueeze(1)
    print(
        f"| preset | overrides | params | MFLOPs / sample | size MB |  (layout {args.layout}, "
        f"input {args.channels} x {args.length})"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for name, extra in rows:
        cfg = compose([f"model={name}", *extra])
        if "layout" in cfg.model:
            cfg.model.layout = args.layout
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = model_from_config(cfg, args.channels, args.classes)
        if not isinstance(model, nn.Module):  # MiniRocket: fitted, not a network of weights
            print(f"| {name} | {' '.join(extra)} | (fitted, not a network) | | |")
            continue
        s = model_summary(model, x)
        print(
            f"| {name} | {' '.join(extra)} | {s['params']:,} | "
            f"{s['flops_per_sample'] / 1e6:,.1f} | {s['size_mb']:.1f} |"
        )


if __name__ == "__main__":
    main()
