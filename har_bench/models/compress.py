"""Smaller models for deployment: BatchNorm folded into convolutions, and structured pruning of
the residual branches' inner channels.

Folding uses torch's own ``fuse_conv_bn_eval``; only *which* BatchNorm follows which convolution
is found here, from the module tree (torch has no generic pass that works on the 2d_sensor
layout, whose forward branches on the input's rank and so cannot be traced by torch.fx).

Pruning follows Li et al. 2017 ("Pruning Filters for Efficient ConvNets"): channels are ranked
by the L1 norm of their filter, here with the following BatchNorm's scale folded in, so that a
filter's norm measures what the channel actually passes on. Only the channels *inside* a
residual branch are removed (a Bottleneck's two inner widths, a BasicBlock's middle one); the
block's input and output width, and with them the shortcut, stay as they are. A grouped
convolution loses the same number of channels in every group, so its cardinality is kept.
torch.nn.utils.prune only masks weights (the model keeps its size); the physically smaller
convolutions are built here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from har_bench.core.errors import UserError
from har_bench.models.resnet import BasicBlock, Bottleneck

_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


# -- BatchNorm folding -------------------------------------------------------------------------


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv attribute, BN attribute) of every convolution directly followed by a
    BatchNorm: ``conv<k>``/``bn<k>`` siblings (the torchvision naming our ResNet keeps) and a
    convolution followed by a BatchNorm inside an ``nn.Sequential``."""
    pairs = []
    for parent in model.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names[:-1], names[1:], strict=True):
                if isinstance(children[a], _CONVS) and isinstance(children[b], _NORMS):
                    pairs.append((parent, a, b))
            continue
        for name, child in children.items():
            if not (name.startswith("conv") and isinstance(child, _CONVS)):
                continue
            bn_name = "bn" + name[len("conv") :]
            if isinstance(children.get(bn_name), _NORMS):
                pairs.append((parent, name, bn_name))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that follows a convolution folded
    into it (the BN becomes ``nn.Identity``); ``model`` itself is left unchanged."""
    folded = copy.deepcopy(model).eval()
    for parent, conv_name, bn_name in conv_bn_pairs(folded):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if not bn.track_running_stats or bn.running_var is None:
            continue  # batch statistics at inference: nothing fixed to fold
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())
    return folded


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _NORMS) for m in model.modules())


# -- structured pruning ------------------------------------------------------------------------


@dataclass
class BlockPruning:
    """One residual block's inner widths before and after, and the groups of its kxk conv."""

    name: str
    before: list[int]  # inner widths: [conv1 out, conv2 out] (Bottleneck) or [conv1 out]
    after: list[int]
    groups_before: int
    groups_after: int


@dataclass
class PruningResult:
    ratio: float
    blocks: list[BlockPruning] = field(default_factory=list)

    @property
    def channels_before(self) -> int:
        return sum(sum(b.before) for b in self.blocks)

    @property
    def channels_after(self) -> int:
        return sum(sum(b.after) for b in self.blocks)

    @property
    def pruned_fraction(self) -> float:
        return 1 - self.channels_after / max(self.channels_before, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "inner_channels_before": self.channels_before,
            "inner_channels_after": self.channels_after,
            "pruned_fraction": self.pruned_fraction,
            "groups_kept": all(b.groups_after == b.groups_before for b in self.blocks),
            "blocks": [vars(b) for b in self.blocks],
        }


def check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
        raise UserError(f"--prune {ratio!r} is invalid: expected a fraction of channels in (0, 1)")
    return float(ratio)


def filter_scores(conv: nn.Module, bn: nn.Module) -> torch.Tensor:
    """L1 norm per output channel of the filter with the BatchNorm's scale folded in."""
    w = conv.weight.detach().flatten(1).abs().sum(1)
    scale = bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps)
    return w * scale


def keep_per_group(scores: torch.Tensor, groups: int, keep: int) -> torch.Tensor:
    """Indices (sorted) of the ``keep`` highest-scoring channels of each of ``groups`` equal
    consecutive groups."""
    per_group = scores.numel() // groups
    top = scores.view(groups, per_group).topk(keep, dim=1).indices.sort(dim=1).values
    offsets = torch.arange(groups, device=scores.device).unsqueeze(1) * per_group
    return (top + offsets).flatten()


def pruned_count(width: int, ratio: float) -> int:
    """Channels of a group of ``width`` kept at ``ratio`` (at least one)."""
    return max(1, min(width, round(width * (1 - ratio))))


def prune_residual_channels(model: nn.Module, ratio: float) -> tuple[nn.Module, PruningResult]:
    """A copy of ``model`` with ``ratio`` of every residual branch's inner channels removed
    (rounded per group of the grouped convolution); ``model`` itself is left unchanged.

    Raises a :class:`UserError` when the model has no ResNet residual block.
    """
    ratio = check_ratio(ratio)
    pruned = copy.deepcopy(model).eval()
    result = PruningResult(ratio)
    for name, block in pruned.named_modules():
        if isinstance(block, Bottleneck):
            result.blocks.append(_prune_bottleneck(name, block, ratio))
        elif isinstance(block, BasicBlock):
            result.blocks.append(_prune_basic(name, block, ratio))
    if not result.blocks:
        raise UserError(
            f"--prune works on the residual blocks of the ResNet family; "
            f"{type(model).__name__} has none"
        )
    return pruned, result


def _prune_bottleneck(name: str, block: Bottleneck, ratio: float) -> BlockPruning:
    conv2 = block.conv2
    groups, width = conv2.groups, conv2.in_channels
    if groups == width:  # depthwise: one channel per group, so whole groups go
        keep1 = filter_scores(block.conv1, block.bn1).topk(pruned_count(width, ratio)).indices
        keep1 = keep1.sort().values
        keep2, new_groups = keep1, len(keep1)
        weight2 = conv2.weight.detach()[keep2]
    else:
        k = pruned_count(width // groups, ratio)
        keep1 = keep_per_group(filter_scores(block.conv1, block.bn1), groups, k)
        keep2 = keep_per_group(filter_scores(conv2, block.bn2), groups, k)
        new_groups = groups
        # Output channel o of group g reads only group g's inputs: take, per group, the kept
        # outputs and their group's kept inputs (relative to the group's first channel).
        per_group = width // groups
        w = conv2.weight.detach()
        weight2 = torch.cat(
            [
                w[keep2[g * k : (g + 1) * k]][:, keep1[g * k : (g + 1) * k] - g * per_group]
                for g in range(groups)
            ]
        )
    before = [block.conv1.out_channels, conv2.out_channels]
    block.conv1 = _conv_like(block.conv1, out_idx=keep1)
    block.bn1 = _norm_like(block.bn1, keep1)
    block.conv2 = _conv_like(conv2, weight=weight2, groups=new_groups)
    block.bn2 = _norm_like(block.bn2, keep2)
    block.conv3 = _conv_like(block.conv3, in_idx=keep2)
    return BlockPruning(name, before, [len(keep1), len(keep2)], groups, new_groups)


def _prune_basic(name: str, block: BasicBlock, ratio: float) -> BlockPruning:
    width = block.conv1.out_channels
    keep = filter_scores(block.conv1, block.bn1).topk(pruned_count(width, ratio)).indices
    keep = keep.sort().values
    block.conv1 = _conv_like(block.conv1, out_idx=keep)
    block.bn1 = _norm_like(block.bn1, keep)
    block.conv2 = _conv_like(block.conv2, in_idx=keep)
    return BlockPruning(name, [width], [len(keep)], 1, 1)


def _conv_like(
    conv: nn.Module,
    out_idx: torch.Tensor | None = None,
    in_idx: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    groups: int | None = None,
) -> nn.Module:
    """A convolution of ``conv``'s kind and geometry holding a subset of its weights."""
    w = conv.weight.detach() if weight is None else weight
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    groups = conv.groups if groups is None else groups
    bias = conv.bias
    new = type(conv)(
        w.shape[1] * groups,
        w.shape[0],
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=groups,
        bias=bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias.detach() if out_idx is None else bias.detach()[out_idx])
    return new.train(conv.training)


def _norm_like(bn: nn.Module, idx: torch.Tensor) -> nn.Module:
    new = type(bn)(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(bn, name)
            if src is not None:
                getattr(new, name).copy_(src.detach()[idx])
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)
