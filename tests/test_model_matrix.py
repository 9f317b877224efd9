"""Every model config on every shape of problem, end to end through the CLI.

The matrix is generated from ``configs/model/*.yaml``: a new model file is covered when it is
added. Each model runs at a small width (the keys of :data:`SMALL` that its config has; its
stages and their strides, which set the receptive field and the pooling, are kept) for one
epoch on tiny synthetic or UEA-format data:

* two classes (one score column per class) on one channel; many classes on many channels;
* a very short series (3 samples): the run completes (the model pads or its convolutions pad)
  or fails with one ``error:`` line naming the minimum length, as the model's config documents;
* unequal lengths (a UEA set, padded by the loader) with a class absent from the test part;
* export + predict for each exportable model (a torch module): ONNX Runtime's logits match
  torch's, and ``predict`` through ONNX gives torch's classes.

Every model config takes sensor windows [N, C, T] (``layout: 1d``): the image layout
(``model.layout=2d_image``) is chosen by the image presets, not by a model file, and is covered
by the image dataset tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import assert_one_line_error, in_process_cli
from fixtures_data import ts_text
from helpers import config_options

from har_bench import cli
from har_bench.config import compose
from har_bench.runs import rundir

pytestmark = pytest.mark.slow  # about a hundred one-epoch runs

MODELS = config_options("model")
# Width keys a model config may have -> the tiny value used here (a function of the config's
# own value for list-valued keys). Anything else keeps the config's value.
SMALL = {
    "stem_width": lambda v: 16,  # 16 x 4 / 64 = one channel per group for ResNeXt-50's 32x4d
    "layers": lambda v: [1] * len(v),  # one block per stage: the strides stay
    "channels": lambda v: [8] * len(v),
    "hidden": lambda v: 16,
    "hidden_size": lambda v: 8,
    "filters": lambda v: 8,
    "n_kernels": lambda v: 84,
    "n_jobs": lambda v: 1,
}
COMMON = [
    "augment=none",
    "trainer.max_epochs=1",
    "trainer.batch_size=16",
    # One thread: on a busy machine torch's threads wait for each other on these tiny batches.
    "trainer.num_threads=1",
    "trainer.progress=false",
    "efficiency.latency_repeats=1",
    "efficiency.latency_warmup=0",
]
SYNTHETIC = ["dataset=synthetic", "dataset.num_subjects=4", "dataset.window=32"]
CASES = {
    "two_classes_one_channel": [
        *SYNTHETIC,
        "dataset.num_classes=2",
        "dataset.num_channels=1",
        "dataset.windows_per_subject=12",
    ],
    "many_classes_many_channels": [
        *SYNTHETIC,
        "dataset.num_classes=7",
        "dataset.num_channels=9",
        "dataset.windows_per_subject=14",
    ],
    "very_short_series": ["dataset=uea", "dataset.name=Short"],
    "variable_length_class_absent_from_test": ["dataset=uea", "dataset.name=Ragged"],
}
SHORT = 3  # samples per series in the Short set
MIN_LENGTH = re.compile(r"at least (\d+) samples")
PARITY = 1e-4  # max |logit difference| between ONNX Runtime and torch on the CPU
_RUNS: dict[tuple[str, str], Path] = {}


def small_overrides(model: str) -> list[str]:
    node = compose([f"model={model}"]).model
    out = []
    for key, shrink in SMALL.items():
        if key in node:
            value = shrink(node[key])
            out.append(f"model.{key}={json.dumps(value).replace(' ', '')}")
    return out


def write_uea(folder: Path) -> None:
    """Short: 3-sample series, 3 classes. Ragged: 2 channels, lengths 10 to 30, 3 classes of
    which the test part has only two."""
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]

    def cases(n: int, channels: int, lengths, classes) -> list:
        out = []
        for i in range(n):
            k = classes[i % len(classes)]
            t = lengths[i % len(lengths)]
            signal = np.sin(np.arange(t) * (k + 1) / 3)
            out.append(
                ([list(signal + 0.3 * rng.standard_normal(t)) for _ in range(channels)], labels[k])
            )
        return out

    sets = {
        "Short": (cases(24, 1, [SHORT], [0, 1, 2]), cases(9, 1, [SHORT], [0, 1, 2]), True),
        "Ragged": (
            cases(24, 2, [10, 17, 23, 30], [0, 1, 2]),
            cases(8, 2, [12, 30, 21], [0, 1]),
            False,
        ),
    }
    for name, (train, test, equal) in sets.items():
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}_TRAIN.ts").write_text(ts_text(train, labels, equal=equal))
        (d / f"{name}_TEST.ts").write_text(ts_text(test, labels, equal=equal))


@pytest.fixture(scope="module")
def uea_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uea")
    write_uea(root)
    return root


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def train(main, tmp_path: Path, model: str, case: str, uea_root: Path) -> tuple[int, str, Path]:
    run_dir = tmp_path / f"{model}-{case}"
    args = [*COMMON, *CASES[case], f"model={model}", *small_overrides(model)]
    if "dataset=uea" in args:
        args += [f"dataset.root={uea_root}", "dataset.progress=false"]
    code, err = main(*args, f"hydra.run.dir={run_dir}")
    if code == 0:
        _RUNS[model, case] = run_dir
    return code, err, run_dir


def check_completed(code: int, err: str, run_dir: Path, num_classes: int) -> dict:
    assert code == 0, err
    metrics = json.loads((run_dir / rundir.METRICS).read_text())
    assert metrics["status"] == "completed"
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    confusion = pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0)
    assert confusion.shape == (num_classes, num_classes)
    return metrics


@pytest.mark.parametrize("model", MODELS)
def test_two_classes_one_channel(main, tmp_path, model, uea_root):
    code, err, run_dir = train(main, tmp_path, model, "two_classes_one_channel", uea_root)
    check_completed(code, err, run_dir, 2)


@pytest.mark.parametrize("model", MODELS)
def test_many_classes_many_channels(main, tmp_path, model, uea_root):
    code, err, run_dir = train(main, tmp_path, model, "many_classes_many_channels", uea_root)
    check_completed(code, err, run_dir, 7)


@pytest.mark.parametrize("model", MODELS)
def test_very_short_series_run_or_name_the_minimum_length(main, tmp_path, model, uea_root):
    code, err, run_dir = train(main, tmp_path, model, "very_short_series", uea_root)
    if code == 0:
        check_completed(code, err, run_dir, 3)
        return
    line = assert_one_line_error(code, err, "samples")
    found = MIN_LENGTH.search(line)
    assert found and int(found[1]) > SHORT, line


@pytest.mark.parametrize("model", MODELS)
def test_variable_length_with_a_class_absent_from_test(main, tmp_path, model, uea_root):
    code, err, run_dir = train(
        main, tmp_path, model, "variable_length_class_absent_from_test", uea_root
    )
    metrics = check_completed(code, err, run_dir, 3)
    confusion = pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0).to_numpy()
    assert confusion[2].sum() == 0 and confusion.sum() == 8  # class c: never in the test part
    assert np.isfinite(metrics["test"]["macro_f1"])


def exportable(model: str) -> bool:
    """A torch module (``model=minirocket`` is a scikit-learn estimator, fitted not trained)."""
    from torch import nn

    from har_bench.experiment.components import model_from_config

    cfg = compose([f"model={model}", *small_overrides(model)])
    return isinstance(model_from_config(cfg, 2, 2), nn.Module)


@pytest.mark.parametrize("model", MODELS)
def test_export_and_predict(main, tmp_path, model, uea_root, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from har_bench.deploy.export import export_run
    from har_bench.deploy.loaded import FinishedRun
    from har_bench.deploy.predict import predict

    case = "many_classes_many_channels"
    run_dir = _RUNS.get((model, case))
    if run_dir is None:
        code, err, run_dir = train(main, tmp_path, model, case, uea_root)
        check_completed(code, err, run_dir, 7)
    if not exportable(model):
        capsys.readouterr()
        code = cli.main(["export", str(run_dir)])
        assert_one_line_error(code, capsys.readouterr().err, "export")
        return
    report = export_run(run_dir, repeats=1, log=lambda msg: None)
    fp32 = report["forms"]["fp32"]
    assert fp32["max_abs_logit_diff"] <= PARITY and fp32["agreement"] == 1.0
    # A recording stitched from raw test windows, through ONNX Runtime and through torch.
    run = FinishedRun(run_dir)
    raw = run.data.data.X[run.data.split.test][:5]
    df = pd.DataFrame(np.concatenate([w.T for w in raw]), columns=run.data.data.channel_names)
    df.insert(0, "time", np.arange(len(df)) / run.preprocessing.sampling_rate_hz)
    path = tmp_path / "recording.csv"
    df.to_csv(path, index=False)
    onnx_table, _ = predict(run_dir, [path], onnx="fp32")
    torch_table, _ = predict(run_dir, [path])
    assert len(onnx_table) >= 5
    assert list(onnx_table["predicted"]) == list(torch_table["predicted"])
