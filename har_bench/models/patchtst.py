"""A PatchTST-style transformer encoder for classification, on [N, C, T] windows.

Nie et al. (2023), "A Time Series is Worth 64 Words: Long-term Forecasting with Transformers":
every channel is cut into overlapping patches (length ``patch_len``, step ``stride``) that are
embedded linearly and encoded as a sequence of tokens by a transformer shared by all channels
(channel independence). Differences from the published forecasting model, for classification
of windows of any length:

* the encoder is ``torch.nn.TransformerEncoder`` (post-norm, GELU): LayerNorm where PatchTST
  uses BatchNorm, plain attention where it adds the previous layer's attention scores
  (residual attention), and dropout on the attention weights too;
* the positions are sinusoidal, not a learned table, since the number of patches follows the
  series length;
* the head averages each channel's tokens and classifies the concatenated channels (the
  published flatten head's size depends on the series length);
* the per-window normalisation of each channel (RevIN) is off by default (``revin``): for
  activity windows a channel's mean (gravity's direction) and scale are part of the signal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from har_bench.core.errors import UserError, check_int, is_number


def patch_count(length: int, patch_len: int, stride: int) -> int:
    """Patches over a series of ``length`` samples: PatchTST's end padding by ``stride``
    (repeating the last sample), then as many patches as it takes to cover it, at least one."""
    return max(0, -(-(length + stride - patch_len) // stride)) + 1


class PatchTST(nn.Module):
    """Channel-independent patch embedding, a transformer encoder, mean pooling, linear head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_len: int = 16,
        stride: int = 8,
        d_model: int = 128,
        n_layers: int = 3,
        n_heads: int = 16,
        d_ff: int = 256,
        dropout: float = 0.2,
        revin: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("patch_len", patch_len),
            ("stride", stride),
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("d_ff", d_ff),
        ):
            check_int(f"model.{name}", value)
        if d_model % n_heads or d_model % 2:
            raise UserError(
                f"model.d_model={d_model} is invalid: expected an even multiple of "
                f"model.n_heads={n_heads}"
            )
        if not is_number(dropout) or not 0.0 <= dropout < 1.0:
            raise UserError(
                f"model.dropout={dropout!r} is invalid: expected a probability in [0, 1)"
            )
        if not isinstance(revin, bool):
            raise UserError(f"model.revin={revin!r} is invalid: expected true or false")
        self.patch_len, self.stride, self.d_model, self.revin = patch_len, stride, d_model, revin
        # A linear map of each patch, written as a strided convolution over one channel.
        self.embed = nn.Conv1d(1, d_model, patch_len, stride=stride)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels * d_model, num_classes)
        )

    def positions(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """Sinusoidal encodings of ``n`` positions, [n, d_model] (sin and cos interleaved)."""
        pos = torch.arange(n, dtype=like.dtype, device=like.device)[:, None]
        freq = torch.exp(
            torch.arange(0, self.d_model, 2, dtype=like.dtype, device=like.device)
            * (-math.log(10000.0) / self.d_model)
        )
        return torch.stack([torch.sin(pos * freq), torch.cos(pos * freq)], dim=-1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t = x.shape
        if self.revin:
            x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(
                x.var(-1, keepdim=True, unbiased=False) + 1e-5
            )
        patches = patch_count(t, self.patch_len, self.stride)
        end = self.patch_len + (patches - 1) * self.stride
        x = F.pad(x, (0, end - t), mode="replicate")
        z = self.embed(x.reshape(n * c, 1, end)).transpose(1, 2)  # [N*C, patches, d_model]
        z = self.encoder(self.dropout(z + self.positions(patches, z)))
        return self.head(z.mean(dim=1).reshape(n, c, self.d_model))
