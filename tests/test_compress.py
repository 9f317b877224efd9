"""BatchNorm folding and structured pruning of the residual branches (no ONNX needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from har_bench.core.errors import UserError
from har_bench.models import CNN, ResNet
from har_bench.models.compress import (
    count_batchnorms,
    filter_scores,
    fold_batchnorm,
    keep_per_group,
    prune_residual_channels,
)
from har_bench.models.resnet import BasicBlock, Bottleneck
from har_bench.models.summary import model_summary


def trained_like(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine terms, as after training (fresh ones are 0/1)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


MODELS = {
    # 4 groups of 16, 32, 64, 128 channels: 25% is a whole number of channels per group.
    "resnext_1d": lambda: ResNet(9, 6, layers=[1, 1, 1, 1], cardinality=4, base_width=16),
    "resnext_2d_sensor": lambda: ResNet(
        9, 6, layers=[1, 1], cardinality=4, base_width=16, layout="2d_sensor"
    ),
    "resnet18": lambda: ResNet(9, 6, block="basic", layers=[2, 2, 2, 2], stem_width=16),
    "depthwise": lambda: ResNet(9, 6, layers=[1, 1], cardinality=4, base_width=16, depthwise=True),
}


@pytest.mark.parametrize("name", [*MODELS, "cnn"])
def test_folding_removes_every_batchnorm_and_keeps_the_output(name):
    model = trained_like(CNN(9, 6) if name == "cnn" else MODELS[name]())
    x = torch.randn(4, 9, 128)
    folded = fold_batchnorm(model)
    assert count_batchnorms(model) > 0 and count_batchnorms(folded) == 0
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)
    assert count_batchnorms(model) > 0  # the original is untouched


@pytest.mark.parametrize("name", ["resnext_1d", "resnext_2d_sensor", "resnet18"])
def test_pruning_removes_the_stated_fraction_keeps_groups_and_runs(name):
    model = trained_like(MODELS[name]())
    pruned, result = prune_residual_channels(model, 0.25)
    assert result.pruned_fraction == pytest.approx(0.25)
    blocks = [m for m in pruned.modules() if isinstance(m, Bottleneck | BasicBlock)]
    originals = [m for m in model.modules() if isinstance(m, Bottleneck | BasicBlock)]
    for new, old in zip(blocks, originals, strict=True):
        assert new.conv2.groups == old.conv2.groups  # cardinality kept
        assert new.conv1.out_channels == round(0.75 * old.conv1.out_channels)
        if isinstance(new, Bottleneck):
            assert new.conv2.out_channels == round(0.75 * old.conv2.out_channels)
        # The residual width (and so the shortcut) is untouched.
        last = new.conv3 if isinstance(new, Bottleneck) else new.conv2
        assert (
            last.out_channels
            == (old.conv3 if isinstance(old, Bottleneck) else old.conv2).out_channels
        )
    x = torch.randn(3, 9, 128)
    assert pruned(x).shape == (3, 6)
    before, after = model_summary(model, x), model_summary(pruned, x)
    assert after["params"] < before["params"]
    assert after["flops_per_sample"] < before["flops_per_sample"]
    assert all(b.groups_after == b.groups_before for b in result.blocks)


def test_pruning_keeps_the_largest_filters_of_each_group():
    """L1 ranking inside each group: the channels whose (BN-scaled) filters are smallest go."""
    model = trained_like(ResNet(3, 2, layers=[1], cardinality=2, base_width=32, stem_width=16))
    block = model.layer1[0]
    with torch.no_grad():
        block.bn1.weight.fill_(1.0)
        block.bn1.running_var.fill_(1.0 - block.bn1.eps)
        norms = torch.arange(1, 17, dtype=torch.float32)  # 2 groups of 8 channels
        block.conv1.weight.copy_(norms.view(-1, 1, 1) / block.conv1.weight.shape[1])
    pruned, _ = prune_residual_channels(model, 0.5)
    kept = pruned.layer1[0].conv1.weight.detach().flatten(1).sum(1)
    assert torch.allclose(kept, torch.tensor([5.0, 6, 7, 8, 13, 14, 15, 16]))


def test_pruned_grouped_conv_computes_what_the_kept_channels_computed():
    """The surgery on a grouped conv: with the pruned inputs zeroed, the original block's kept
    channels equal the pruned block's, through conv2 and conv3."""
    model = trained_like(ResNet(3, 2, layers=[1], cardinality=4, base_width=16, stem_width=16))
    block = model.layer1[0]
    keep1 = keep_per_group(filter_scores(block.conv1, block.bn1), 4, 3)
    keep2 = keep_per_group(filter_scores(block.conv2, block.bn2), 4, 3)
    pruned, _ = prune_residual_channels(model, 0.25)
    new = pruned.layer1[0]
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        mid = block.relu(block.bn1(block.conv1(x)))
        masked = torch.zeros_like(mid)
        masked[:, keep1] = mid[:, keep1]
        inner = torch.relu(block.bn2(block.conv2(masked)))
        out_old = block.bn2(block.conv2(masked))[:, keep2]
        inner_masked = torch.zeros_like(inner)
        inner_masked[:, keep2] = inner[:, keep2]
        end_old = block.bn3(block.conv3(inner_masked))
        mid_new = new.relu(new.bn1(new.conv1(x)))
        out_new = new.bn2(new.conv2(mid_new))
        end_new = new.bn3(new.conv3(torch.relu(out_new)))
    assert torch.allclose(mid_new, mid[:, keep1], atol=1e-5)
    assert torch.allclose(out_new, out_old, atol=1e-5)
    assert torch.allclose(end_new, end_old, atol=1e-5)


def test_pruning_a_model_without_residual_blocks_is_a_user_error():
    with pytest.raises(UserError, match="residual blocks"):
        prune_residual_channels(CNN(3, 2), 0.2)
    with pytest.raises(UserError, match="--prune 1.5"):
        prune_residual_channels(MODELS["resnext_1d"](), 1.5)


def test_depthwise_pruning_keeps_the_convolution_depthwise():
    pruned, result = prune_residual_channels(trained_like(MODELS["depthwise"]()), 0.25)
    for m in pruned.modules():
        if isinstance(m, Bottleneck):
            assert m.conv2.groups == m.conv2.in_channels == m.conv2.out_channels
    assert result.pruned_fraction == pytest.approx(0.25)
    assert pruned(torch.randn(2, 9, 64)).shape == (2, 6)
