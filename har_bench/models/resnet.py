"""One ResNet family for sensor windows and images.

The shape follows torchvision's ``models/resnet.py``: a single :class:`ResNet` whose bottleneck
takes ``cardinality`` (groups) and ``base_width`` (width per group) covers ResNet, ResNeXt and
wide variants. What differs between the source articles is only *how a convolution is laid out*,
so that is one small :class:`_Layout` object and every block is built through it:

* ``1d``: sensor channels are input channels, convolution over time; input [N, C, T].
* ``2d_sensor``: the PAMAP2 article's design; input viewed as [N, 1, T, C] with (k, 1) kernels
  and strides along time only, so each sensor axis keeps its own column until the head.
* ``2d_image``: ordinary k x k convolutions on [N, 3, H, W] with the ImageNet stem.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from har_bench.core.errors import UserError, check_int, is_number

LAYOUTS = ("1d", "2d_sensor", "2d_image")
BLOCKS = ("basic", "bottleneck")

# The ResNeXt paper's complexity-matched points for ResNeXt-50 (Xie et al. 2017, Table 2):
# cardinality C and width per group d chosen so that FLOPs and params stay ~constant.
RESNEXT50_SHAPES = {
    "1x64d": (1, 64),
    "2x40d": (2, 40),
    "4x24d": (4, 24),
    "8x14d": (8, 14),
    "32x4d": (32, 4),
}
# Kernel taps of the grouped convolution for which that matching holds: a 3x3 conv has 9.
_MATCHED_TAPS = 9


def parse_shape(shape: str) -> tuple[int, int]:
    """``"8x14d"`` -> (cardinality 8, base_width 14)."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*d\s*", str(shape))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserError(
            f"model.shape={shape!r} is invalid: expected '<cardinality>x<width>d', e.g. one of "
            f"{', '.join(RESNEXT50_SHAPES)}"
        )
    return int(m.group(1)), int(m.group(2))


def default_kernel_size(layout: str) -> int:
    """Block kernel when ``kernel_size`` is null.

    9 in the 1d layout, so a 1-D conv has the taps (and weights) of the 3x3 conv it stands in
    for; this keeps the image networks' parameter balance, and with it the ResNeXt paper's
    complexity matching across cardinalities. 3 in the 2-D layouts: 3x3 for images, (3, 1)
    along time for 2d_sensor as in the PAMAP2 article.
    """
    return 9 if layout == "1d" else 3


@dataclass(frozen=True)
class _Layout:
    name: str

    @property
    def two_d(self) -> bool:
        return self.name != "1d"

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Module:
        pad = kernel // 2
        if self.name == "1d":
            return nn.Conv1d(cin, cout, kernel, stride, pad, groups=groups, bias=False)
        if self.name == "2d_sensor":
            return nn.Conv2d(
                cin, cout, (kernel, 1), (stride, 1), (pad, 0), groups=groups, bias=False
            )
        return nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False)

    def norm(self, channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels) if self.two_d else nn.BatchNorm1d(channels)

    def max_pool(self) -> nn.Module:
        if self.name == "1d":
            return nn.MaxPool1d(3, 2, 1)
        if self.name == "2d_sensor":
            return nn.MaxPool2d((3, 1), (2, 1), (1, 0))
        return nn.MaxPool2d(3, 2, 1)

    def global_pool(self, sensor_channels: int) -> nn.Module:
        if self.name == "1d":
            return nn.AdaptiveAvgPool1d(1)
        if self.name == "2d_sensor":
            # Pool time away but keep one column per sensor axis (the PAMAP2 design).
            return nn.AdaptiveAvgPool2d((1, sensor_channels))
        return nn.AdaptiveAvgPool2d(1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        layout: _Layout,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        kernel_size: int = 3,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64 or depthwise:
            raise UserError(
                f"the basic block (resnet18/34) takes cardinality=1 and base_width=64, got "
                f"cardinality={groups}, base_width={base_width}, depthwise={depthwise}; "
                "use block=bottleneck for ResNeXt/wide/depthwise variants"
            )
        self.conv1 = layout.conv(inplanes, planes, kernel_size, stride)
        self.bn1 = layout.norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = layout.conv(planes, planes, kernel_size)
        self.bn2 = layout.norm(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> grouped kxk -> 1x1 expand; stride on the kxk conv (ResNet v1.5)."""

    expansion = 4

    def __init__(
        self,
        layout: _Layout,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        kernel_size: int = 3,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        width = bottleneck_width(planes, groups, base_width)
        # Depthwise = one channel per group: the far end of the grouped-conv axis.
        conv_groups = width if depthwise else groups
        self.conv1 = layout.conv(inplanes, width, 1)
        self.bn1 = layout.norm(width)
        self.conv2 = layout.conv(width, width, kernel_size, stride, groups=conv_groups)
        self.bn2 = layout.norm(width)
        self.conv3 = layout.conv(width, planes * self.expansion, 1)
        self.bn3 = layout.norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def bottleneck_width(planes: int, cardinality: int, base_width: int) -> int:
    """Channels of the grouped conv: ``cardinality`` groups of ``planes*base_width/64`` each."""
    per_group = planes * base_width / 64
    if per_group < 1 or per_group != int(per_group):
        raise UserError(
            f"model.base_width={base_width} gives {per_group:g} channels per group at a stage of "
            f"{planes} planes; expected a whole number >= 1 (planes*base_width divisible by 64)"
        )
    return int(per_group) * cardinality


class ResNet(nn.Module):
    """ResNet / ResNeXt / wide ResNet for sensor windows ([N, C, T]) or images ([N, 3, H, W]).

    Args:
        in_channels: sensor channels (1d, 2d_sensor) or image channels (2d_image).
        num_classes: size of the classifier output.
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50 and up, ResNeXt).
        layers: blocks per stage, e.g. (3, 4, 6, 3); the stage i has ``stem_width * 2**i`` planes.
        cardinality: groups of the bottleneck's kxk conv (ResNeXt's C).
        base_width: channels per group at the first stage (ResNeXt's d, 64 for ResNet).
        shape: ``"<C>x<d>d"`` (e.g. ``"8x14d"``) sets cardinality and base_width in one value, so
            one sweep override walks the ResNeXt paper's complexity-matched table.
        layout: ``1d``, ``2d_sensor`` or ``2d_image`` (see module docstring).
        stem_width: channels of the stem and planes of the first stage.
        kernel_size: kernel of the blocks' kxk convolution (along time for sensor layouts);
            None = :func:`default_kernel_size` of the layout.
        stem_kernel_size / stem_stride / stem_pool: the stem; the ImageNet stem is 7 / 2 / True.
        depthwise: groups = width in every kxk conv (depthwise convolution).
        zero_init_residual: zero the last BN of each residual branch so blocks start as identity.
        dropout: dropout before the classifier.
        sensor_channels: columns kept by the 2d_sensor head; defaults to ``in_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        cardinality: int = 1,
        base_width: int = 64,
        layout: str = "1d",
        stem_width: int = 64,
        kernel_size: int | None = None,
        stem_kernel_size: int = 7,
        stem_stride: int = 2,
        stem_pool: bool = True,
        depthwise: bool = False,
        zero_init_residual: bool = False,
        dropout: float = 0.0,
        sensor_channels: int | None = None,
        shape: str | None = None,
    ) -> None:
        super().__init__()
        if shape is not None:
            cardinality, base_width = parse_shape(shape)
        if kernel_size is None:
            kernel_size = default_kernel_size(layout)
        _validate(
            in_channels=in_channels,
            num_classes=num_classes,
            block=block,
            layers=layers,
            cardinality=cardinality,
            base_width=base_width,
            layout=layout,
            stem_width=stem_width,
            kernel_size=kernel_size,
            stem_kernel_size=stem_kernel_size,
            stem_stride=stem_stride,
            dropout=dropout,
        )
        if shape is not None and block == "bottleneck" and not depthwise:
            taps = (
                kernel_size
                if layout == "1d"
                else (kernel_size if layout == "2d_sensor" else kernel_size**2)
            )
            if taps != _MATCHED_TAPS:
                warnings.warn(
                    f"model.shape={shape}: the ResNeXt table is complexity-matched for 9-tap "
                    f"grouped convolutions (3x3, or kernel_size=9 in 1d); with {taps} taps the "
                    "FLOPs of the shapes differ",
                    stacklevel=2,
                )
        self.layout = _Layout(layout)
        # The architecture as built (after shape/kernel defaults): what a pretrained file must
        # match, and how har_bench.experiment.pretrained finds torchvision's file for this network.
        self.arch = {
            "in_channels": in_channels,
            "block": block,
            "layers": [int(b) for b in layers],
            "cardinality": cardinality,
            "base_width": base_width,
            "layout": layout,
            "stem_width": stem_width,
            "kernel_size": kernel_size,
            "stem_kernel_size": stem_kernel_size,
            "stem_stride": stem_stride,
            "stem_pool": bool(stem_pool),
            "depthwise": bool(depthwise),
        }
        block_cls = BasicBlock if block == "basic" else Bottleneck
        self.groups = cardinality
        self.base_width = base_width
        self.kernel_size = kernel_size
        self.depthwise = depthwise
        # In 2d_sensor mode the network sees a one-channel image whose columns are the sensors.
        stem_in = 1 if layout == "2d_sensor" else in_channels
        self.sensor_channels = sensor_channels or in_channels

        self.inplanes = stem_width
        self.conv1 = self.layout.conv(stem_in, stem_width, stem_kernel_size, stem_stride)
        self.bn1 = self.layout.norm(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = self.layout.max_pool() if stem_pool else nn.Identity()
        stages = []
        for i, blocks in enumerate(layers):
            stages.append(
                self._make_layer(block_cls, stem_width * 2**i, blocks, stride=1 if i == 0 else 2)
            )
        # Named layer1..layerN as in torchvision, so state dicts line up.
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(stages)
        self.avgpool = self.layout.global_pool(self.sensor_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        features = self.inplanes * (self.sensor_channels if layout == "2d_sensor" else 1)
        self.num_features = features
        self.fc = nn.Linear(features, num_classes)
        init_weights(self, zero_init_residual)

    def _make_layer(
        self, block_cls: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        out = planes * block_cls.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                self.layout.conv(self.inplanes, out, 1, stride), self.layout.norm(out)
            )
        layers = [
            block_cls(
                self.layout,
                self.inplanes,
                planes,
                stride,
                downsample,
                self.groups,
                self.base_width,
                self.kernel_size,
                self.depthwise,
            )
        ]
        self.inplanes = out
        for _ in range(1, blocks):
            layers.append(
                block_cls(
                    self.layout,
                    self.inplanes,
                    planes,
                    groups=self.groups,
                    base_width=self.base_width,
                    kernel_size=self.kernel_size,
                    depthwise=self.depthwise,
                )
            )
        return nn.Sequential(*layers)

    # The classifier, re-created when pretrained weights are for other classes.
    head_name = "fc"

    @property
    def takes_images(self) -> bool:
        """Images [N, 3, H, W] in (the 2d_image layout), not sensor windows; see
        :func:`takes_images`."""
        return self.layout.name == "2d_image"

    @property
    def stage_names(self) -> list[str]:
        """``layer1`` .. ``layerN``: the residual stages, input side first."""
        return [f"layer{i + 1}" for i in range(self.num_stages)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout.name == "2d_sensor" and x.dim() == 3:  # [N, C, T] -> [N, 1, T, C]
            x = x.transpose(1, 2).unsqueeze(1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))


def takes_images(model: object) -> bool:
    """Whether ``model`` takes images [N, 3, H, W]. A model that does says so with a true
    ``takes_images`` attribute (the ResNet family in the 2d_image layout); every other one, the
    sequence models included, takes sensor windows [N, C, T] and needs no declaration."""
    return bool(getattr(model, "takes_images", False))


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """Kaiming fan-out for convolutions, unit BN; optionally zero the last BN of each branch."""
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def _validate(**kw: object) -> None:
    def bad(name: str, expected: str) -> UserError:
        return UserError(f"model.{name}={kw[name]!r} is invalid: expected {expected}")

    if kw["layout"] not in LAYOUTS:
        raise bad("layout", f"one of {', '.join(LAYOUTS)}")
    if kw["block"] not in BLOCKS:
        raise bad("block", f"one of {', '.join(BLOCKS)}")
    for name in ("in_channels", "num_classes", "cardinality", "base_width", "stem_width"):
        check_int(f"model.{name}", kw[name])
    for name in ("kernel_size", "stem_kernel_size"):
        v = kw[name]
        if not isinstance(v, int) or v < 1 or v % 2 == 0:
            raise bad(name, "an odd integer >= 1 (so padding keeps the length)")
    if not isinstance(kw["stem_stride"], int) or kw["stem_stride"] < 1:
        raise bad("stem_stride", "an integer >= 1")
    layers = kw["layers"]
    if (
        isinstance(layers, str)
        or not isinstance(layers, Sequence)
        or len(layers) < 1
        or not all(isinstance(b, int) and b >= 1 for b in layers)
    ):
        raise bad("layers", "a non-empty list of integers >= 1, e.g. [3, 4, 6, 3]")
    if not is_number(kw["dropout"]) or not 0.0 <= kw["dropout"] < 1.0:  # type: ignore[operator]
        raise bad("dropout", "a probability in [0, 1)")
