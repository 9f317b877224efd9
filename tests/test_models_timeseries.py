"""InceptionTime, LITE and the PatchTST-style transformer: shapes at any length, parameter
counts against the papers' architectures, FLOPs, a CLI run each and ONNX parity."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error, in_process_cli

from har_bench.core.errors import UserError
from har_bench.experiment.components import model_from_config
from har_bench.models import LITE, InceptionTime, PatchTST, count_flops
from har_bench.models.inception import hand_crafted_filters
from har_bench.runs import rundir

CLASSES = {"inception_time": InceptionTime, "lite": LITE, "patchtst": PatchTST}
# Small widths for the runs through the CLI (same layers and kernels as the defaults).
TINY = {
    "inception_time": ["model.nb_filters=4", "model.bottleneck=4"],
    "lite": ["model.nb_filters=4"],
    "patchtst": ["model.d_model=16", "model.n_heads=2", "model.d_ff=32"],
}
PARITY = 1e-4  # max |logit difference| between ONNX Runtime and torch on the CPU


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def inception_params(c: int, classes: int, kernels, f: int = 32, b: int = 32, depth: int = 6):
    """InceptionTime's weights, written out: per module a bottleneck (none on one channel),
    three convolutions, the pool branch's 1x1 and BatchNorm over 4f channels; shortcuts every
    three modules; the classifier (``classes=0``: none, as the papers count)."""
    total, cin = 0, c
    for d in range(depth):
        width = b if cin > 1 else cin
        total += (cin * b if cin > 1 else 0) + width * f * sum(kernels) + cin * f + 2 * 4 * f
        if d % 3 == 2:
            res_in = c if d == 2 else 4 * f
            total += res_in * 4 * f + 2 * 4 * f
        cin = 4 * f
    return total + (4 * f * classes + classes if classes else 0)


def lite_params(c: int, classes: int, kernels, sep_kernels, f: int = 32, custom: int = 17):
    """LITE's weights: the multiplexing convolutions and their BatchNorm (with the custom
    filters' channels, whose taps are fixed), two separable convolutions with BatchNorm."""
    width = 3 * f + custom
    total = c * f * sum(kernels) + 2 * width
    total += width * sep_kernels[0] + width * f + 2 * f
    total += f * sep_kernels[1] + f * f + 2 * f
    return total + (f * classes + classes if classes else 0)


def test_param_count_formulas_give_the_published_counts():
    # The papers' counts (univariate, without the classifier) use the authors' even kernels.
    assert inception_params(1, 0, (40, 20, 10)) == 420_192
    assert lite_params(1, 0, (40, 20, 10), (20, 10)) == 9_814


@pytest.mark.parametrize("c", [1, 9])
def test_inception_time_param_count(c):
    assert count(InceptionTime(c, 6)) == inception_params(c, 6, (39, 19, 9))


@pytest.mark.parametrize("c", [1, 9])
def test_lite_param_count_and_fixed_filters(c):
    model = LITE(c, 6)
    assert count(model) == lite_params(c, 6, (39, 19, 9), (19, 9))
    assert count(LITE(c, 6, use_custom_filters=False)) == lite_params(
        c, 6, (39, 19, 9), (19, 9), custom=0
    )
    # The hand-crafted taps are constants: neither trained nor saved.
    assert not any("filter" in k for k in model.state_dict())


def test_hand_crafted_filters_detect_trends_and_peaks():
    filters = hand_crafted_filters()
    assert [len(f) for f in filters] == [2, 4, 8, 16, 32, 64] * 2 + [6, 12, 24, 48, 96]
    ramp = torch.arange(200.0)
    for taps in filters[:6]:  # increasing detectors respond to a rising series
        assert float(torch.tensor(taps, dtype=torch.float32) @ ramp[: len(taps)]) > 0
    for taps in filters[6:12]:
        assert float(torch.tensor(taps, dtype=torch.float32) @ ramp[: len(taps)]) < 0
    for taps in filters[12:]:  # zero-mean peak detectors: no response to a constant
        assert abs(taps.sum()) < 1e-9 and taps.max() == 2.0


def test_patchtst_param_count():
    d, ff, layers, c, classes = 128, 256, 3, 9, 6
    layer = 3 * d * d + 3 * d + d * d + d + d * ff + ff + ff * d + d + 2 * 2 * d
    expected = 16 * d + d + layers * layer + c * d * classes + classes
    assert count(PatchTST(c, classes)) == expected


def test_patchtst_flops_include_attention():
    model = PatchTST(9, 6)
    tokens, d, ff = 16, 128, 256  # 128 samples: 16 patches of 16 every 8, the last padded
    per_layer = 2 * tokens * (4 * d * d + 2 * d * ff) + 2 * 2 * tokens * tokens * d
    expected = 9 * (2 * tokens * 16 * d + 3 * per_layer) + 2 * 9 * d * 6
    assert count_flops(model, torch.randn(1, 9, 128)) == expected
    # The fused eval-mode transformer path is back on afterwards.
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("channels", [1, 3, 9])
def test_any_length_and_channel_count(name, channels):
    model = CLASSES[name](channels, 5)
    for t in (1, 7, 128):
        out = model(torch.randn(2, channels, t))
        assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_config_builds_the_published_defaults(compose_cfg, name):
    model = model_from_config(compose_cfg(f"model={name}"), in_channels=9, num_classes=6)
    assert type(model) is CLASSES[name]
    assert count(model) == count(CLASSES[name](9, 6))


@pytest.mark.parametrize(
    "cls,kwargs,needle",
    [
        (InceptionTime, {"use_residual": "yes"}, "model.use_residual='yes'"),
        (InceptionTime, {"kernel_size": 0}, "model.kernel_size=0"),
        (InceptionTime, {"bottleneck": -1}, "model.bottleneck=-1"),
        (
            InceptionTime,
            {"kernel_size": -3},
            "model.kernel_size=-3 is invalid: expected an integer >= 1",
        ),
        (LITE, {"use_dilation": 1}, "model.use_dilation=1"),
        # LITE's separable kernels derive from kernel_size // 2: the error names the typed value.
        (LITE, {"kernel_size": 1}, "model.kernel_size=1 is invalid: expected an integer >= 2"),
        (LITE, {"kernel_size": 0}, "model.kernel_size=0 is invalid: expected an integer >= 2"),
        (LITE, {"kernel_size": -3}, "model.kernel_size=-3 is invalid: expected an integer >= 2"),
        (LITE, {"kernel_size": 2.5}, "model.kernel_size=2.5 is invalid: expected an integer >= 2"),
        (PatchTST, {"d_model": 100, "n_heads": 16}, "model.d_model=100"),
        (PatchTST, {"dropout": 1.0}, "model.dropout=1.0"),
        (PatchTST, {"patch_len": 0}, "model.patch_len=0"),
    ],
)
def test_invalid_settings_name_the_value(cls, kwargs, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        cls(9, 6, **kwargs)


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def train_tiny(main, tmp_path, name: str):
    run_dir = tmp_path / name
    code, err = main(
        f"model={name}",
        *TINY[name],
        "dataset=synthetic",
        "dataset.num_subjects=4",
        "dataset.windows_per_subject=12",
        "dataset.window=32",
        "augment=none",
        "trainer.max_epochs=1",
        "trainer.batch_size=16",
        "trainer.progress=false",
        "efficiency.latency_repeats=1",
        "efficiency.latency_warmup=0",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 0, err
    return run_dir


@pytest.mark.parametrize("name, smallest", [("lite", 2), ("inception_time", 1)])
def test_too_small_kernel_through_the_cli_names_the_typed_key(main, name, smallest):
    code, err = main(f"model={name}", f"model.kernel_size={smallest - 1}", "dataset=synthetic")
    assert_one_line_error(
        code, err, f"model.kernel_size={smallest - 1} is invalid: expected an integer >= {smallest}"
    )


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_one_epoch_through_the_cli(main, tmp_path, name):
    run_dir = train_tiny(main, tmp_path, name)
    assert json.loads((run_dir / rundir.METRICS).read_text())["status"] == "completed"
    summary = json.loads((run_dir / rundir.MODEL_SUMMARY).read_text())
    assert summary["architecture"] == CLASSES[name].__name__
    assert summary["params"] > 0 and summary["flops_per_sample"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_export_matches_torch(main, tmp_path, name):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from har_bench.deploy import onnx_model
    from har_bench.deploy.export import export_run

    report = export_run(train_tiny(main, tmp_path, name), repeats=1, log=lambda msg: None)
    fp32 = report["forms"]["fp32"]
    assert fp32["max_abs_logit_diff"] <= PARITY and fp32["agreement"] == 1.0
    # Series shorter than a kernel or a patch: the padding exports too.
    model = CLASSES[name](3, 4).eval()
    for t in (1, 7):
        x = torch.randn(5, 3, t)
        path = onnx_model.export_onnx(model, x, tmp_path / f"{name}_{t}.onnx")
        with torch.no_grad():
            expected = model(x).numpy()
        got = onnx_model.ort_logits(onnx_model.session(path), x)
        assert abs(got - expected).max() <= PARITY
