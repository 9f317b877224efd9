"""har-bench export on a trained synthetic run: ONNX parity, int8, pruning, the report, and
predict through ONNX Runtime. Skipped without the ``export`` extra."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error
from deploy_helpers import trained_run

pytestmark = pytest.mark.slow  # trains and exports a run (about a minute on 2 cores)

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from har_bench import cli  # noqa: E402
from har_bench.deploy import onnx_model  # noqa: E402
from har_bench.deploy.export import export_run  # noqa: E402
from har_bench.deploy.predict import predict  # noqa: E402
from har_bench.runs import rundir  # noqa: E402

PARITY = 1e-4  # max |Δlogit| between ONNX Runtime and PyTorch on the CPU
# int8 on the synthetic run (180 test windows, a barely trained model whose logits sit close
# together): predictions may move by a few windows.
INT8_ACCURACY_DELTA_POINTS = 5.0
PRUNE = 0.25


@pytest.fixture(scope="module")
def exported() -> tuple[Path, dict]:
    run_dir = trained_run()
    report = export_run(
        run_dir, quantize="int8", prune=PRUNE, finetune_epochs=1, repeats=3, log=lambda m: None
    )
    return run_dir, report


def run_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(list(args))
    return code, err.getvalue()


def test_onnx_matches_pytorch_on_the_test_windows(exported):
    run_dir, report = exported
    fp32 = report["forms"]["fp32"]
    assert fp32["max_abs_logit_diff"] <= PARITY
    assert fp32["agreement"] == 1.0
    assert fp32["accuracy"] == report["forms"]["eager"]["accuracy"]
    path = rundir.onnx_file(run_dir, "fp32")
    model = onnx.load(str(path))
    assert onnx_model.opset_of(path) == onnx_model.OPSET == report["opset"]
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    # The batch axis is dynamic: one window and seven give logits of their own size.
    sess = onnx_model.session(path)
    shape = report["input"]["shape"][1:]
    for n in (1, 7):
        assert onnx_model.ort_logits(sess, np.zeros((n, *shape), np.float32)).shape == (n, 4)


def test_int8_is_smaller_and_close_in_accuracy(exported):
    run_dir, report = exported
    int8, fp32 = report["forms"]["int8"], report["forms"]["fp32"]
    assert int8["size_bytes"] < 0.5 * fp32["size_bytes"]
    assert abs(report["summary"]["int8_accuracy_delta_points"]) <= INT8_ACCURACY_DELTA_POINTS
    assert int8["method"] == "static" and int8["calibration_windows"] > 0
    ops = onnx_model.op_types(rundir.onnx_file(run_dir, "int8"))
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_pruned_model_is_smaller_keeps_its_groups_and_runs(exported):
    run_dir, report = exported
    pruned, eager = report["forms"]["pruned"], report["forms"]["eager"]
    info = report["forms"]["pruned_eager"]["pruning"]
    assert info["ratio"] == PRUNE and info["groups_kept"]
    assert 0.15 <= info["pruned_fraction"] <= PRUNE  # rounded per group of the grouped conv
    assert pruned["params"] < eager["params"]
    assert pruned["flops_per_sample"] < eager["flops_per_sample"]
    assert pruned["max_abs_logit_diff"] <= PARITY  # the pruned ONNX file is its model
    assert report["forms"]["pruned_eager"]["finetune"]["epochs"] == 1
    groups = {
        a.i
        for n in onnx.load(str(rundir.onnx_file(run_dir, "pruned"))).graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "group"
    }
    assert 16 in groups  # resnext_har's cardinality
    assert rundir.onnx_file(run_dir, "pruned_int8").is_file()


def test_report_has_latencies_targets_and_machine(exported):
    run_dir, report = exported
    saved = rundir.read_json(rundir.export_dir(run_dir) / rundir.EXPORT_REPORT)
    assert saved["forms"].keys() == report["forms"].keys()
    for form in saved["forms"].values():
        assert form["latency_ms_bs1"]["p50"] > 0 and form["samples_per_second"] > 0
    keys = {t["key"] for t in saved["targets"]}
    assert {"parity_max_abs_logit", "int8_size_ratio", "pruned_flops_reduction"} <= keys
    assert saved["machine"]["onnxruntime"] and saved["batchnorm_folded"]


def test_predict_through_onnx_runtime_agrees_with_torch(exported, tmp_path):
    run_dir, _ = exported
    import pandas as pd

    from har_bench.deploy.loaded import FinishedRun

    run = FinishedRun(run_dir)
    raw = run.data.data.X[run.data.split.test][:6]
    df = pd.DataFrame(np.concatenate([w.T for w in raw]), columns=run.data.data.channel_names)
    df.insert(0, "time", np.arange(len(df)) / 50.0)
    path = tmp_path / "rec.csv"
    df.to_csv(path, index=False)
    torch_table, _ = predict(run_dir, [path])
    for form in ("fp32", "pruned"):
        ort_table, summary = predict(run_dir, [path], onnx=form)
        assert "onnxruntime" in summary["runtime"]
        if form == "fp32":
            assert list(ort_table["predicted"]) == list(torch_table["predicted"])
            probs = ort_table.filter(like="p_").to_numpy()
            assert np.allclose(probs, torch_table.filter(like="p_").to_numpy(), atol=1e-4)


def test_cli_errors_are_one_line(exported, tmp_path):
    run_dir, _ = exported
    copy = tmp_path / "unfinished"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    rundir.write_status(copy, "interrupted")
    assert_one_line_error(
        *run_cli("export", str(copy)),
        "no finished model",
        "the run was interrupted; resume it: har-bench trainer.resume=",
    )
    assert_one_line_error(
        *run_cli("export", str(run_dir), "--finetune-epochs", "2"), "--prune RATIO too"
    )
    assert_one_line_error(*run_cli("export", str(run_dir), "--prune", "1.5"), "--prune 1.5")
    rec = tmp_path / "r.csv"
    rec.write_text("time,ch0,ch1,ch2\n0,0,0,0\n")
    code, err = run_cli("predict", str(copy), "-i", str(rec), "--onnx")
    assert_one_line_error(code, err, "no finished model")
    shutil.rmtree(copy)
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    assert_one_line_error(
        *run_cli("predict", str(copy), "-i", str(rec), "--onnx", "int8"),
        "har-bench export",
        "--quantize int8",
    )


def test_recurrent_ops_are_quantised_dynamically(tmp_path):
    """Static quantisation leaves LSTM in float; the dynamic pass then quantises it."""
    import torch

    from har_bench.models import LSTM

    model = LSTM(3, 4).eval()
    x = torch.randn(8, 3, 32)
    fp32 = onnx_model.export_onnx(model, x, tmp_path / "lstm.onnx")
    assert "LSTM" in onnx_model.op_types(fp32)
    info = onnx_model.quantize_int8(fp32, tmp_path / "lstm_int8.onnx", x.numpy())
    assert info["method"] == "static + dynamic (LSTM)"
    assert "DynamicQuantizeLSTM" in onnx_model.op_types(tmp_path / "lstm_int8.onnx")
    out = onnx_model.ort_logits(onnx_model.session(tmp_path / "lstm_int8.onnx"), x.numpy())
    assert out.shape == (8, 4)


def test_a_model_torch_cannot_export_is_one_line(tmp_path):
    import torch
    from torch import nn

    class AdaptiveMax(nn.Sequential):  # 6 samples in 4 bins: the exporter has no such pooling
        pass

    model = AdaptiveMax(nn.AdaptiveMaxPool1d(4), nn.Flatten()).eval()
    with pytest.raises(onnx_model.ExportError, match="cannot export AdaptiveMax"):
        onnx_model.export_onnx(model, torch.randn(2, 3, 6), tmp_path / "m.onnx")


def test_export_logs_nothing_when_the_caller_logs_at_info(tmp_path, caplog):
    """A notebook or a Hydra job logs at INFO: the exporter's and its optimiser's progress
    records must not reach it (they are not about the model)."""
    import logging

    import torch

    caplog.set_level(logging.INFO)
    model = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 3, padding=1), torch.nn.Flatten())
    onnx_model.export_onnx(model, torch.randn(1, 3, 8), tmp_path / "m.onnx")
    noise = [r.name for r in caplog.records if r.name.split(".")[0] in {"onnxscript", "onnx_ir"}]
    assert noise == []
    assert not [r for r in caplog.records if r.name.startswith("torch.onnx")]
