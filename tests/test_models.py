import pytest
import torch
from helpers import config_options

from har_bench.core.errors import UserError
from har_bench.experiment.components import model_from_config
from har_bench.models import (
    CNN,
    LSTM,
    RESNEXT50_SHAPES,
    DeepConvLSTM,
    ResNet,
    count_flops,
    parse_shape,
)

# torchvision's published parameter counts (ImageNet, 3 input channels, 1000 classes).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnext50": 25_028_904,
    "resnext101": 88_791_336,
}


RESNET_PRESETS = [n for n in config_options("model") if n.startswith(("resnet", "resnext", "wide"))]


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_image_layout_matches_torchvision_param_counts(compose_cfg, name):
    cfg = compose_cfg(f"model={name}", "model.layout=2d_image")
    model = model_from_config(cfg, in_channels=3, num_classes=1000)
    assert count(model) == TORCHVISION_PARAMS[name]


def test_wide_resnet50_matches_torchvision():
    model = ResNet(3, 1000, "bottleneck", [3, 4, 6, 3], base_width=128, layout="2d_image")
    assert count(model) == 68_883_240


# Models fitted outside the training loop (scikit-learn style) are tested in test_rocket.py.
FITTED = ("minirocket",)


@pytest.mark.parametrize("name", [n for n in config_options("model") if n not in FITTED])
def test_every_model_config_forward_backward_1d(compose_cfg, name):
    # ResNet presets at a 16-wide stem: same depth, blocks and groups, 1/16 of the weights,
    # so the test checks structure rather than waiting on 60M-parameter inits.
    thin = ["model.stem_width=16"] if name in RESNET_PRESETS else []
    cfg = compose_cfg(f"model={name}", *thin)
    model = model_from_config(cfg, in_channels=9, num_classes=6)
    out = model(torch.randn(2, 9, 128))
    assert out.shape == (2, 6)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("layout,shape", [("2d_sensor", (2, 9, 64)), ("2d_image", (2, 3, 32, 32))])
def test_other_layouts_forward_backward(layout, shape):
    model = ResNet(
        shape[1],
        5,
        "bottleneck",
        [1, 1, 1, 1],
        cardinality=4,
        base_width=16,
        layout=layout,
        stem_width=16,
    )
    out = model(torch.randn(*shape))
    assert out.shape == (2, 5)
    out.sum().backward()


def test_2d_sensor_keeps_one_column_per_sensor_channel():
    model = ResNet(9, 6, "basic", [1, 1, 1, 1], layout="2d_sensor", stem_width=8)
    # Head over stage-4 width x sensor channels, as in the PAMAP2 article.
    assert model.fc.in_features == 8 * 8 * 9
    x = torch.randn(2, 9, 64)
    assert model.forward_features(x).shape == (2, 8 * 8 * 9)


def test_grouped_conv_is_one_grouped_layer():
    model = ResNet(9, 6, "bottleneck", [1, 1, 1, 1], cardinality=32, base_width=4)
    conv = model.layer1[0].conv2
    assert conv.groups == 32 and conv.in_channels == 128
    dw = ResNet(9, 6, "bottleneck", [1, 1, 1, 1], cardinality=32, base_width=4, depthwise=True)
    assert dw.layer1[0].conv2.groups == dw.layer1[0].conv2.in_channels == 128


def test_zero_init_residual_starts_blocks_as_identity():
    model = ResNet(9, 6, "bottleneck", [1, 1], zero_init_residual=True, stem_width=16)
    assert torch.all(model.layer1[0].bn3.weight == 0)
    plain = ResNet(9, 6, "bottleneck", [1, 1], stem_width=16)
    assert torch.all(plain.layer1[0].bn3.weight == 1)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"layout": "3d"}, "model.layout='3d'"),
        ({"block": "fancy"}, "model.block='fancy'"),
        ({"cardinality": 0}, "model.cardinality=0"),
        ({"stem_width": 16, "base_width": 6}, "base_width=6 gives 1.5 channels per group"),
        ({"layers": []}, "model.layers=[]"),
        ({"kernel_size": 4}, "model.kernel_size=4"),
        ({"dropout": 1.5}, "model.dropout=1.5"),
        ({"block": "basic", "cardinality": 32}, "cardinality=32"),
    ],
)
def test_invalid_model_settings_name_the_value(kwargs, needle):
    args = {"block": "bottleneck", "layers": [1, 1, 1, 1]} | kwargs
    with pytest.raises(ValueError) as err:
        ResNet(9, 6, **args)
    assert needle in str(err.value)


def test_more_torchvision_counts():
    assert count(ResNet(3, 1000, "bottleneck", [3, 8, 36, 3], layout="2d_image")) == 60_192_808


def test_resnet50_image_flops_match_published_4_1_gmacs():
    model = ResNet(3, 1000, "bottleneck", [3, 4, 6, 3], layout="2d_image")
    macs = count_flops(model, torch.randn(1, 3, 224, 224)) / 2
    assert macs == pytest.approx(4.1e9, rel=0.03)


@pytest.mark.parametrize("layout", ["1d", "2d_sensor", "2d_image"])
@pytest.mark.parametrize("name", RESNET_PRESETS)
def test_every_preset_in_every_layout_trains_a_step(compose_cfg, name, layout):
    cfg = compose_cfg(f"model={name}", f"model.layout={layout}", "model.stem_width=16")
    channels = 3 if layout == "2d_image" else 6
    model = model_from_config(cfg, in_channels=channels, num_classes=4)
    x = torch.randn(2, 3, 32, 32) if layout == "2d_image" else torch.randn(2, 6, 64)
    out = model(x)
    assert out.shape == (2, 4)
    out.sum().backward()


# FLOP ratios do not depend on the image size, so 2d_image is checked at 64x64.
@pytest.mark.parametrize("layout,shape", [("1d", (1, 9, 128)), ("2d_image", (1, 3, 64, 64))])
def test_complexity_matched_shapes_have_matched_flops(compose_cfg, layout, shape):
    flops = {}
    for name in RESNEXT50_SHAPES:
        cfg = compose_cfg("model=resnext50", f"model.shape={name}", f"model.layout={layout}")
        model = model_from_config(cfg, in_channels=shape[1], num_classes=6)
        assert (model.groups, model.base_width) == RESNEXT50_SHAPES[name]
        flops[name] = count_flops(model, torch.randn(*shape))
    ref = flops["1x64d"]
    for name, f in flops.items():
        assert f == pytest.approx(ref, rel=0.05), name


def test_unmatched_kernel_warns_that_shapes_are_not_matched():
    with pytest.warns(UserWarning, match="complexity-matched for 9-tap"):
        ResNet(9, 6, layers=[1, 1, 1, 1], shape="8x14d", kernel_size=3)


def test_bad_shape_names_the_value():
    with pytest.raises(ValueError, match="model.shape='8x14'"):
        parse_shape("8x14")


def test_recurrent_flops_are_counted():
    lstm = LSTM(9, 6, hidden_size=32, num_layers=2)
    per_step = 4 * 32 * (9 + 32) + 4 * 32 * (32 + 32)  # weight multiply-adds of both layers
    expected = 2 * (per_step * 128 + 32 * 6)
    assert count_flops(lstm, torch.randn(1, 9, 128)) == expected


@pytest.mark.parametrize("cls", [CNN, LSTM, DeepConvLSTM])
def test_baselines_take_any_window_length(cls):
    model = cls(3, 5)
    for t in (32, 100):
        assert model(torch.randn(2, 3, t)).shape == (2, 5)


def test_deepconvlstm_too_short_window_is_a_clear_error():
    with pytest.raises(UserError, match="at least 17 samples"):
        DeepConvLSTM(3, 5)(torch.randn(2, 3, 16))


@pytest.mark.parametrize("t", [1, 2, 3, 5, 8, 13, 64])
def test_cnn_pooling_is_adaptive_max_pooling(t):
    from har_bench.models.baselines import BinnedMaxPool1d

    x = torch.randn(2, 3, t)
    torch.testing.assert_close(BinnedMaxPool1d(4)(x), torch.nn.AdaptiveMaxPool1d(4)(x))
