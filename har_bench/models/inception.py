"""The Inception family of deep time-series classifiers, on [N, C, T] windows.

* :class:`InceptionTime`: Ismail Fawaz et al. (2020), "InceptionTime: Finding AlexNet for time
  series classification": Inception modules (a 1x1 bottleneck, three parallel convolutions with
  kernels kernel_size // 1, 2, 4 and a max-pool + 1x1 branch, each with ``nb_filters`` filters),
  a residual shortcut every three modules, global average pooling. One network (the published
  InceptionTime ensembles five of them).
* :class:`LITE`: Ismail-Fawaz et al. (2023), "LITE: Light Inception with boosTing tEchniques for
  time series classification": one multiplexing layer (three parallel convolutions, and the
  hand-crafted filters of :class:`HandCraftedFilters`), then two dilated depthwise separable
  convolutions, global average pooling.

The authors' Keras code uses even kernels (40, 20, 10) with "same" padding, which pads one
sample more on the right than on the left; here every even kernel is made odd by one tap less
(39, 19, 9, as the widely used PyTorch port in tsai does), so the padding is symmetric and any
series length (one sample included) keeps its length through every layer. The hand-crafted
filters keep their published even lengths, padded as Keras pads them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from har_bench.core.errors import UserError, check_int
from har_bench.models.resnet import init_weights


def odd_kernels(kernel_size: int, count: int) -> tuple[int, ...]:
    """``kernel_size // 2**i`` for ``i < count``, each even size one less (at least 1).
    ``kernel_size`` is checked by the caller: a derived size must not be named in an error."""
    sizes = (kernel_size // 2**i for i in range(count))
    return tuple(max(1, k - 1 if k % 2 == 0 else k) for k in sizes)


def conv_bn(cin: int, cout: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    """A bias-free "same" convolution and its BatchNorm, as one foldable pair."""
    return nn.Sequential(
        nn.Conv1d(
            cin,
            cout,
            kernel_size,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm1d(cout),
    )


class InceptionModule(nn.Module):
    """Bottleneck, three convolutions and a max-pool branch, concatenated, BatchNorm, ReLU.

    The published BatchNorm over the concatenation is one BatchNorm per branch here (BatchNorm
    is per channel, so the two are the same), so that each folds into its convolution on export.
    """

    def __init__(
        self, cin: int, nb_filters: int, kernel_sizes: tuple[int, ...], bottleneck: int
    ) -> None:
        super().__init__()
        # As in the authors' code: no bottleneck on a single channel.
        use_bottleneck = bottleneck > 0 and cin > 1
        self.bottleneck = nn.Conv1d(cin, bottleneck, 1, bias=False) if use_bottleneck else None
        width = bottleneck if use_bottleneck else cin
        self.convs = nn.ModuleList(conv_bn(width, nb_filters, k) for k in kernel_sizes)
        # The max-pool branch reads the module's input, not the bottleneck's output.
        self.pool = nn.Sequential(
            nn.MaxPool1d(3, stride=1, padding=1), *conv_bn(cin, nb_filters, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x if self.bottleneck is None else self.bottleneck(x)
        return F.relu(torch.cat([*(conv(z) for conv in self.convs), self.pool(x)], dim=1))


class InceptionTime(nn.Module):
    """One InceptionTime network: ``depth`` Inception modules, a residual shortcut (1x1
    convolution + BatchNorm) every three, global average pooling and a linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        nb_filters: int = 32,
        depth: int = 6,
        kernel_size: int = 40,
        bottleneck: int = 32,
        use_residual: bool = True,
    ) -> None:
        super().__init__()
        check_int("model.nb_filters", nb_filters)
        check_int("model.depth", depth)
        check_int("model.bottleneck", bottleneck, minimum=0)
        if not isinstance(use_residual, bool):
            raise UserError(
                f"model.use_residual={use_residual!r} is invalid: expected true or false"
            )
        self.kernel_sizes = odd_kernels(check_int("model.kernel_size", kernel_size), 3)
        width = 4 * nb_filters
        self.blocks = nn.ModuleList(
            InceptionModule(
                in_channels if d == 0 else width, nb_filters, self.kernel_sizes, bottleneck
            )
            for d in range(depth)
        )
        self.use_residual = use_residual
        # Shortcut i adds the input of module 3i to the output of module 3i + 2.
        n_shortcuts = depth // 3 if use_residual else 0
        self.shortcuts = nn.ModuleList(
            conv_bn(in_channels if i == 0 else width, width, 1) for i in range(n_shortcuts)
        )
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        for d, block in enumerate(self.blocks):
            x = block(x)
            if d % 3 == 2 and d // 3 < len(self.shortcuts):
                x = F.relu(x + self.shortcuts[d // 3](residual))
                residual = x
        return self.fc(x.mean(dim=-1))


def hand_crafted_filters(sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64)) -> list[np.ndarray]:
    """The fixed filters of Ismail-Fawaz et al. (2022), "Deep learning for time series
    classification using new hand-crafted convolution filters", in the authors' order:
    increasing-trend detectors (-1, 1, -1, ...) of every size, decreasing-trend detectors
    (1, -1, 1, ...) of every size, then peak detectors of 1.5 x every size but the first
    (a negative, a doubled positive and a negative parabola-shaped lobe)."""
    out = []
    for k in sizes:
        out.append(np.where(np.arange(k) % 2 == 0, -1.0, 1.0))
    for k in sizes:
        out.append(np.where(np.arange(k) % 2 == 0, 1.0, -1.0))
    for k in sizes[1:]:
        q = k // 4
        left = np.linspace(0, 1, q + 1)[1:] ** 2
        right = left[::-1]
        out.append(np.concatenate([-left, -right, 2 * left, 2 * right, -left, -right]))
    return out


class HandCraftedFilters(nn.Module):
    """:func:`hand_crafted_filters` as fixed (untrained) convolutions, then ReLU.

    Each filter has the same taps on every input channel (the authors' Conv1D over all
    channels), and is padded as Keras pads "same" for an even length: one sample more on the
    right.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.sizes = []
        for i, taps in enumerate(hand_crafted_filters()):
            weight = torch.tensor(taps, dtype=torch.float32).expand(1, in_channels, -1).clone()
            # A constant of the architecture, rebuilt from the code: not part of the state dict.
            self.register_buffer(f"filter{i}", weight, persistent=False)
            self.sizes.append(len(taps))

    @property
    def out_channels(self) -> int:
        return len(self.sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, k in enumerate(self.sizes):
            padded = F.pad(x, ((k - 1) // 2, k // 2))
            outs.append(F.conv1d(padded, getattr(self, f"filter{i}")))
        return F.relu(torch.cat(outs, dim=1))


class SeparableConv(nn.Sequential):
    """A dilated depthwise convolution, a pointwise one, BatchNorm and ReLU (Keras'
    SeparableConv1D without bias, as in LITE's two last layers)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int) -> None:
        super().__init__(
            nn.Conv1d(
                cin,
                cin,
                kernel_size,
                padding=dilation * (kernel_size - 1) // 2,
                dilation=dilation,
                groups=cin,
                bias=False,
            ),
            nn.Conv1d(cin, cout, 1, bias=False),
            nn.BatchNorm1d(cout),
            nn.ReLU(inplace=True),
        )


class LITE(nn.Module):
    """LITE: a multiplexing layer (three convolutions of kernels kernel_size // 1, 2, 4 with
    ``nb_filters`` each, and the hand-crafted filters), BatchNorm + ReLU, two depthwise separable
    convolutions (kernels kernel_size // 2, 4; dilations 2, 4), global average pooling."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        nb_filters: int = 32,
        kernel_size: int = 40,
        use_custom_filters: bool = True,
        use_dilation: bool = True,
        use_multiplexing: bool = True,
    ) -> None:
        super().__init__()
        check_int("model.nb_filters", nb_filters)
        for name, value in (
            ("use_custom_filters", use_custom_filters),
            ("use_dilation", use_dilation),
            ("use_multiplexing", use_multiplexing),
        ):
            if not isinstance(value, bool):
                raise UserError(f"model.{name}={value!r} is invalid: expected true or false")
        # >= 2: the separable convolutions' kernels derive from kernel_size // 2.
        kernel_size = check_int("model.kernel_size", kernel_size, minimum=2)
        # Without multiplexing: one convolution of the largest kernel, with all the filters.
        n_convs, filters = (3, nb_filters) if use_multiplexing else (1, 3 * nb_filters)
        self.kernel_sizes = odd_kernels(kernel_size, n_convs)
        self.convs = nn.ModuleList(conv_bn(in_channels, filters, k) for k in self.kernel_sizes)
        width = n_convs * filters
        self.custom = None
        if use_custom_filters:
            custom = HandCraftedFilters(in_channels)
            # Their BatchNorm: the published one over the concatenation, per branch.
            self.custom = nn.Sequential(custom, nn.BatchNorm1d(custom.out_channels))
            width += custom.out_channels
        self.separable = nn.Sequential(
            *(
                SeparableConv(
                    width if i == 0 else nb_filters,
                    nb_filters,
                    k,
                    2 ** (i + 1) if use_dilation else 1,
                )
                for i, k in enumerate(odd_kernels(kernel_size // 2, 2))
            )
        )
        self.fc = nn.Linear(nb_filters, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [conv(x) for conv in self.convs]
        if self.custom is not None:
            branches.append(self.custom(x))
        h = F.relu(torch.cat(branches, dim=1))
        return self.fc(self.separable(h).mean(dim=-1))
