"""The baselines HAR articles compare ResNet/ResNeXt against, on [N, C, T] windows.

* :class:`CNN`: Ronao & Cho (2016), "Human activity recognition with smartphone sensors using
  deep learning neural networks": stacked conv (1x9 kernels) + max-pool (1x3) layers and a
  fully connected layer before the softmax.
* :class:`LSTM`: the stacked 2-layer LSTM of the widely copied "LSTMs for HAR" notebook
  (32 hidden units, last time step to a linear classifier).
* :class:`DeepConvLSTM`: Ordóñez & Roggen (2016): four (5, 1) convolutions with 64 filters
  along time on each sensor channel, then two LSTM layers of 128 units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from har_bench.core.errors import UserError, check_int, is_number
from har_bench.models.resnet import init_weights


def _probability(name: str, value: float) -> float:
    if not is_number(value) or not 0.0 <= value < 1.0:
        raise UserError(f"model.{name}={value!r} is invalid: expected a probability in [0, 1)")
    return float(value)


class BinnedMaxPool1d(nn.Module):
    """``nn.AdaptiveMaxPool1d(bins)`` (the same bins, the same values) written as slices and
    maxima, which ONNX export takes: the exporter has no adaptive max pooling."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, n = x.shape[-1], self.bins
        # PyTorch's bin i: [floor(i t / n), ceil((i + 1) t / n)).
        edges = [(i * t // n, -(-(i + 1) * t // n)) for i in range(n)]
        return torch.stack([x[..., a:b].amax(-1) for a, b in edges], dim=-1)


class CNN(nn.Module):
    """Conv -> ReLU -> max-pool blocks, then a hidden fully connected layer (Ronao & Cho)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (96, 192, 192),
        kernel_size: int = 9,
        pool_size: int = 3,
        hidden: int = 1000,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not channels:
            raise UserError("model.channels=[] is invalid: expected at least one conv layer")
        for c in channels:
            check_int("model.channels", c)
        check_int("model.kernel_size", kernel_size)
        check_int("model.pool_size", pool_size)
        check_int("model.hidden", hidden)
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in channels:
            layers += [
                nn.Conv1d(cin, cout, kernel_size, padding=kernel_size // 2),
                nn.BatchNorm1d(cout),
                nn.ReLU(inplace=True),
                # ceil_mode keeps short windows from pooling down to zero length
                nn.MaxPool1d(pool_size, ceil_mode=True),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        # Pool the remaining time steps to a fixed size so any window length works.
        self.pool = BinnedMaxPool1d(4)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(_probability("dropout", dropout)),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class LSTM(nn.Module):
    """Stacked LSTM over time; the last step's hidden state feeds a linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_size: int = 32,
        num_layers: int = 2,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("model.hidden_size", hidden_size)
        check_int("model.num_layers", num_layers)
        self.lstm = nn.LSTM(
            in_channels,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=_probability("dropout", dropout) if num_layers > 1 else 0.0,
        )
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.transpose(1, 2))  # [N, C, T] -> [N, T, C]
        return self.fc(out[:, -1])


class DeepConvLSTM(nn.Module):
    """Ordóñez & Roggen (2016): per-channel temporal convolutions, then a 2-layer LSTM.

    The convolutions are (k, 1) over an [N, 1, T, C] view without padding, so each sensor
    channel is filtered separately; their outputs are concatenated per time step for the LSTM.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        filters: int = 64,
        kernel_size: int = 5,
        conv_layers: int = 4,
        hidden_size: int = 128,
        lstm_layers: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        for name, v in (
            ("filters", filters),
            ("kernel_size", kernel_size),
            ("conv_layers", conv_layers),
            ("hidden_size", hidden_size),
            ("lstm_layers", lstm_layers),
        ):
            check_int(f"model.{name}", v)
        self.shrink = conv_layers * (kernel_size - 1)  # time steps lost to valid convolutions
        convs: list[nn.Module] = []
        cin = 1
        for _ in range(conv_layers):
            convs += [nn.Conv2d(cin, filters, (kernel_size, 1)), nn.ReLU(inplace=True)]
            cin = filters
        self.convs = nn.Sequential(*convs)
        p = _probability("dropout", dropout)
        self.dropout = nn.Dropout(p)
        self.lstm = nn.LSTM(
            filters * in_channels,
            hidden_size,
            lstm_layers,
            batch_first=True,
            dropout=p if lstm_layers > 1 else 0.0,
        )
        self.fc = nn.Linear(hidden_size, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] <= self.shrink:
            raise UserError(
                f"DeepConvLSTM needs windows of at least {self.shrink + 1} samples "
                f"(conv_layers x (kernel_size - 1) + 1, its unpadded convolutions); got "
                f"{x.shape[-1]}"
            )
        h = self.convs(x.transpose(1, 2).unsqueeze(1))  # [N, F, T', C]
        h = h.permute(0, 2, 1, 3).flatten(2)  # [N, T', F*C]
        out, _ = self.lstm(self.dropout(h))
        return self.fc(self.dropout(out[:, -1]))
