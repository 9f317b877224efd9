"""ONNX files of a model and ONNX Runtime sessions over them: export, inference, int8.

Export is torch's (``torch.onnx.export``, the torch.export-based exporter, which needs
onnxscript), with a dynamic batch axis. Quantisation is ONNX Runtime's
(``onnxruntime.quantization``): the int8 file is then the very file a device runs, calibrated
on the run's training windows, and ORT's CPU kernels (QLinearConv, MatMulInteger) run it. PyTorch's
own post-training quantisation produces a torch model whose int8 operators do not carry over
to ONNX cleanly, so it would not measure what a device gets.

Needs the optional ``export`` extra: ``pip install 'har-bench[export]'``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from har_bench.core.errors import MissingExtraError, UserError
from har_bench.core.fs import atomic_write

# ONNX opset of every exported file: 18 is the first with the reductions-as-inputs form torch's
# exporter writes, and ONNX Runtime's quantiser and CPU kernels cover it fully.
OPSET = 18
INPUT_NAME = "windows"
OUTPUT_NAME = "logits"
# ONNX ops that only dynamic quantisation handles (weights int8, activations at run time).
DYNAMIC_ONLY_OPS = ("LSTM", "GRU", "RNN")
EXTRA_HINT = "pip install 'har-bench[export]' (onnx, onnxruntime, onnxscript)"


class ExportError(UserError):
    """torch's exporter cannot translate the model (an operator ONNX lacks)."""


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def require_onnx() -> None:
    """Fail in one line, naming the extra, when the ONNX packages are missing."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(f"{', '.join(missing)} not installed: {EXTRA_HINT}")


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch's exporter and the onnxscript optimiser it calls print and log their progress and
    warn about optional torchvision ops and their own deprecations; none of it is about the
    model, and a caller whose root logger is at INFO (a notebook, a Hydra job) would see it."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(model: nn.Module, sample: torch.Tensor, path: Path, opset: int = OPSET) -> Path:
    """Write ``model`` (eval mode) as an ONNX file with a dynamic batch axis.

    ``sample`` is one or more input windows; the export traces a batch of two, since
    torch.export specialises a batch of one to the constant 1.
    """
    model = model.eval()
    example = sample[:1].expand(2, *sample.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                external_data=False,
                optimize=True,
            )
    except Exception as e:  # torch's exporter raises its own types, with pages of detail
        raise ExportError(
            f"torch.onnx cannot export {type(model).__name__} (opset {opset}): {_root_cause(e)}"
        ) from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: program.save(str(tmp)))
    return path


def opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def op_types(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sorted({n.op_type for n in model.graph.node})


def session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session, all graph optimisations on, ``threads`` intra-op threads
    (default: torch's, so the two are timed on the same cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(sess: Any, X: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Logits for every window of ``X`` [N, ...], in batches."""
    X = X.numpy() if isinstance(X, torch.Tensor) else X
    X = np.ascontiguousarray(X, dtype=np.float32)
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: X[i : i + batch_size]})[0] for i in range(0, len(X), batch_size)]
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Post-training static int8 quantisation of an ONNX file, calibrated on ``calibration``
    windows (already standardised); recurrent ops, which static quantisation leaves in float,
    are then quantised dynamically. Returns what was done, for the report.

    QDQ format, weights int8 per output channel, activations uint8 with min/max ranges: ORT's
    recommended form for x86 CPUs (it fuses the QDQ pairs into QLinearConv at load). The
    convolutions reading the input stay float.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)

    class Windows(CalibrationDataReader):  # ORT asks for one input dict at a time
        def __init__(self) -> None:
            self.batches = iter(
                [calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_ops = [op for op in op_types(fp32_path) if op in DYNAMIC_ONLY_OPS]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        static = Path(tmp) / "static.onnx"
        # ORT's recommended first step: shape inference and graph optimisations, so the
        # quantiser sees the graph ORT will run.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        # The stem reads the standardised sensor signal itself: quantising its input costs
        # the most accuracy for the fewest weights, so it stays float (as is usual for a
        # network's first layer).
        stem = input_convs(pre)
        quantize_static(
            str(pre),
            str(static),
            Windows(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=stem,
        )
        final = static
        if dynamic_ops:
            final = Path(tmp) / "dynamic.onnx"
            quantize_dynamic(
                str(static),
                str(final),
                op_types_to_quantize=dynamic_ops,
                weight_type=QuantType.QInt8,
            )
        data = final.read_bytes()
    atomic_write(out_path, lambda p: Path(p).write_bytes(data))
    return {
        "quantiser": "onnxruntime.quantization",
        "method": "static" + (f" + dynamic ({', '.join(dynamic_ops)})" if dynamic_ops else ""),
        "format": "QDQ",
        "weights": "int8, per output channel",
        "activations": "uint8, MinMax ranges",
        "calibration_windows": int(len(calibration)),
        "calibration_source": "training windows",
        "kept_float": stem,
    }


def input_convs(path: Path) -> list[str]:
    """Names of the convolutions that read the graph's input directly."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inputs = {i.name for i in model.graph.input}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs]


def file_size(path: Path) -> int:
    return os.path.getsize(path)
