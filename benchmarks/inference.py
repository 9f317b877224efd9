"""Inference on the CPU: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, batch 1 and
batch 256, for resnext_har, resnet18 and resnext50 in the 1d layout on UCI-HAR-shaped windows
(9 x 128, 6 classes).

    python benchmarks/inference.py [--threads 1] [--repeats 200] [--models resnext_har resnet18]

Each model's three forms are timed alternately in one process (har_bench.core.timing), so
their ratios hold on a loaded machine; the models are built from their presets with random
weights (latency does not depend on the values), exported as ``har-bench export`` does (BatchNorm
folded) and quantised with the same static int8 path, calibrated on 256 random windows.
Needs the export extra: pip install 'har-bench[export]'.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from har_bench.config import config_dir
from har_bench.core.timing import alternating_latency
from har_bench.deploy import onnx_model
from har_bench.experiment.components import model_from_config
from har_bench.models.compress import fold_batchnorm

MODELS = ("resnext_har", "resnet18", "resnext50")
CHANNELS, LENGTH, CLASSES = 9, 128, 6
BATCH = 256


def build(name: str) -> torch.nn.Module:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}", "model.layout=1d"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_from_config(cfg, CHANNELS, CLASSES).eval()


def bench(name: str, repeats: int, threads: int, tmp: Path) -> list[dict]:
    torch.manual_seed(0)
    model = build(name)
    x1 = torch.randn(1, CHANNELS, LENGTH)
    xb = torch.randn(BATCH, CHANNELS, LENGTH)
    fp32 = onnx_model.export_onnx(fold_batchnorm(model), x1, tmp / f"{name}.onnx")
    calibration = np.random.default_rng(0).standard_normal((256, CHANNELS, LENGTH), np.float32)
    int8 = tmp / f"{name}_int8.onnx"
    onnx_model.quantize_int8(fp32, int8, calibration)
    sessions = {
        "ort_fp32": onnx_model.session(fp32, threads),
        "ort_int8": onnx_model.session(int8, threads),
    }

    def calls(x: torch.Tensor) -> dict:
        def eager() -> object:
            with torch.inference_mode():
                return model(x)

        feed = {onnx_model.INPUT_NAME: x.numpy()}
        return {"eager": eager} | {k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}

    one = alternating_latency(calls(x1), repeats, warmup=10)
    many = alternating_latency(calls(xb), max(5, repeats // 20), warmup=2)
    sizes = {"eager": None, "ort_fp32": fp32.stat().st_size, "ort_int8": int8.stat().st_size}
    return [
        {
            "model": name,
            "form": form,
            "p50": one[form]["p50"],
            "p95": one[form]["p95"],
            "ratio1": one[form]["p50"] / one["eager"]["p50"],
            "sps": BATCH / (many[form]["p50"] / 1000),
            "ratioB": many["eager"]["p50"] / many[form]["p50"],
            "size": sizes[form],
        }
        for form in ("eager", "ort_fp32", "ort_int8")
    ]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    onnx_model.require_onnx()
    torch.set_num_threads(args.threads)
    versions = onnx_model.versions()
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, onnxruntime "
        f"{versions['onnxruntime']}, {args.threads} thread(s) for torch and ORT, input "
        f"{CHANNELS} x {LENGTH}, batch-1 repeats {args.repeats}"
    )
    print()
    print(
        "| model | form | file KB | batch 1 p50 ms | p95 ms | p50 / eager | "
        f"windows/s at {BATCH} | speed-up at {BATCH} |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for r in bench(name, args.repeats, args.threads, Path(tmp)):
                size = "" if r["size"] is None else f"{r['size'] / 1024:,.0f}"
                print(
                    f"| {r['model']} | {r['form']} | {size} | {r['p50']:.3f} | {r['p95']:.3f} | "
                    f"{r['ratio1']:.2f} | {r['sps']:,.0f} | {r['ratioB']:.2f}× |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
