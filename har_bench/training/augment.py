"""Per-batch augmentation of sensor windows on the training device.

Every transform works on a whole batch [B, C, T] at once (no per-sample Python loop) and draws
from its own seeded generator, whose state is part of the resumable training state. Windows
arrive standardised per channel; the rotation works on the physical signal (it undoes the
standardisation, rotates each declared x/y/z triple and standardises again), so a rotated
accelerometer keeps its norm.

Mixup and CutMix (along time) change the targets as well: they return soft targets
[B, K], which :func:`torch.nn.functional.cross_entropy` takes like class indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from scipy.special import betaincinv

from har_bench.core.errors import UserError


def _check(name: str, value: float, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise UserError(f"augment.{name}={value!r} is invalid: expected a number >= 0")
    if upper is not None and value > upper:
        raise UserError(f"augment.{name}={value!r} is invalid: expected a number <= {upper}")
    return float(value)


def random_rotations(n: int, max_degrees: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` rotation matrices [n, 3, 3] about uniformly random axes by angles uniform in
    ±``max_degrees`` (Rodrigues' formula)."""
    axis = torch.randn(n, 3, generator=generator)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp_min(1e-12)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    k = torch.zeros(n, 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    sin, cos = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return torch.eye(3).expand(n, 3, 3) + sin * k + (1 - cos) * (k @ k)


def smooth_curves(
    n: int, channels: int, length: int, knots: int, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Random smooth curves around 1 [n, channels, length]: ``knots`` N(1, sigma) points joined
    by linear interpolation (the random curves of magnitude and time warping)."""
    points = 1 + sigma * torch.randn(n, channels, knots, generator=generator)
    return F.interpolate(points, size=length, mode="linear", align_corners=True)


def resample_along_time(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x`` [B, C, T] read at fractional sample ``positions`` [B, T'] by linear interpolation."""
    t = x.shape[-1]
    positions = positions.clamp(0, t - 1)
    lo = positions.floor().long().clamp(max=t - 1)
    hi = (lo + 1).clamp(max=t - 1)
    frac = (positions - lo).unsqueeze(1)
    idx_lo = lo.unsqueeze(1).expand(-1, x.shape[1], -1)
    idx_hi = hi.unsqueeze(1).expand(-1, x.shape[1], -1)
    return torch.gather(x, 2, idx_lo) * (1 - frac) + torch.gather(x, 2, idx_hi) * frac


# The transforms in the order they are applied; mixup/CutMix come last.
TRANSFORMS = (
    "rotation",
    "scale",
    "magnitude_warp",
    "time_warp",
    "shift",
    "crop",
    "channel_dropout",
    "jitter",
    "mixup",
    "cutmix",
)


@dataclass
class Augment:
    """A batch transform for the training loop; each magnitude 0 switches its transform off.

    Args:
        p: probability that each transform is applied to a given window.
        jitter: std of additive Gaussian noise (in standardised units).
        scale: std of a per-window, per-channel gain around 1.
        magnitude_warp: std of a smooth random gain curve around 1 (4 knots).
        time_warp: std of the local speed of a smooth random time axis (4 knots).
        shift: largest circular shift, as a fraction of the window.
        crop: largest share of the window cut away before the rest is stretched back.
        channel_dropout: probability that a whole channel is zeroed.
        rotation: largest angle (degrees) of a random 3-D rotation applied to every x/y/z
            triple of a window alike (one device orientation); needs ``channel_groups``.
        mixup: alpha of the Beta distribution of mixup's weight (0 = off).
        cutmix: alpha for CutMix along time (a stretch of another window is pasted in).
        seed: seed of the augmentation's generator (the run's seed is added).
    """

    p: float = 0.5
    jitter: float = 0.0
    scale: float = 0.0
    magnitude_warp: float = 0.0
    time_warp: float = 0.0
    shift: float = 0.0
    crop: float = 0.0
    channel_dropout: float = 0.0
    rotation: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    seed: int = 0
    num_classes: int = 0
    channel_groups: list[list[int]] = field(default_factory=list)
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.p = _check("p", self.p, upper=1)
        for name in ("jitter", "scale", "magnitude_warp", "time_warp", "mixup", "cutmix"):
            setattr(self, name, _check(name, getattr(self, name)))
        for name in ("shift", "crop", "channel_dropout"):
            setattr(self, name, _check(name, getattr(self, name), upper=0.9))
        self.rotation = _check("rotation", self.rotation, upper=180)
        self.generator = torch.Generator().manual_seed(int(self.seed))

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in TRANSFORMS)

    def bind(
        self,
        num_classes: int,
        channel_groups: Sequence[Sequence[int]],
        mean: torch.Tensor | None,
        std: torch.Tensor | None,
        seed: int,
    ) -> Augment:
        """This augmentation for one dataset: its classes, its x/y/z triples, the per-channel
        mean/std the windows were standardised with, and the run's seed."""
        self.num_classes = int(num_classes)
        self.channel_groups = [list(g) for g in channel_groups]
        self.mean = None if mean is None else torch.as_tensor(mean).reshape(1, -1, 1).float()
        self.std = None if std is None else torch.as_tensor(std).reshape(1, -1, 1).float()
        self.generator.manual_seed(int(self.seed) + int(seed))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def _mask(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < self.p

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented windows and their targets: the class indices ``y``, or soft targets
        [B, num_classes] when mixup/CutMix are on."""
        if x.ndim != 3:
            raise UserError(f"augment works on sensor windows [B, C, T], got {tuple(x.shape)}")
        # Random numbers come from the CPU generator (the same on every device), then move.
        dev = x.device
        x = self._geometric(x)
        n, c, t = x.shape
        if self.scale > 0:
            gain = 1 + self.scale * torch.randn(n, c, 1, generator=self.generator)
            x = torch.where(self._mask(n)[:, None, None].to(dev), x * gain.to(dev), x)
        if self.magnitude_warp > 0:
            curve = smooth_curves(n, c, t, 4, self.magnitude_warp, self.generator)
            x = torch.where(self._mask(n)[:, None, None].to(dev), x * curve.to(dev), x)
        if self.time_warp > 0:
            speed = smooth_curves(n, 1, t, 4, self.time_warp, self.generator)[:, 0].clamp_min(0.1)
            pos = torch.cumsum(speed, 1) - speed[:, :1]
            pos = pos / pos[:, -1:] * (t - 1)
            warped = resample_along_time(x, pos.to(dev))
            x = torch.where(self._mask(n)[:, None, None].to(dev), warped, x)
        if self.shift > 0:
            limit = max(1, int(self.shift * t))
            s = torch.randint(-limit, limit + 1, (n,), generator=self.generator)
            s = torch.where(self._mask(n), s, 0)
            idx = (torch.arange(t)[None] - s[:, None]) % t
            x = torch.gather(x, 2, idx.to(dev)[:, None, :].expand(-1, c, -1))
        if self.crop > 0:
            keep = 1 - self.crop * torch.rand(n, generator=self.generator)
            start = (1 - keep) * torch.rand(n, generator=self.generator) * (t - 1)
            pos = start[:, None] + torch.linspace(0, 1, t)[None] * keep[:, None] * (t - 1)
            cropped = resample_along_time(x, pos.to(dev))
            x = torch.where(self._mask(n)[:, None, None].to(dev), cropped, x)
        if self.channel_dropout > 0:
            drop = torch.rand(n, c, 1, generator=self.generator) < self.channel_dropout
            drop &= self._mask(n)[:, None, None]
            x = x.masked_fill(drop.to(dev), 0.0)
        if self.jitter > 0:
            noise = self.jitter * torch.randn(x.shape, generator=self.generator)
            x = torch.where(self._mask(n)[:, None, None].to(dev), x + noise.to(dev), x)
        return self._mix(x, y)

    def _geometric(self, x: torch.Tensor) -> torch.Tensor:
        if self.rotation <= 0 or not self.channel_groups:
            return x
        if self.mean is None or self.std is None:
            raise ValueError("augment.rotation needs the standardisation mean/std (see bind())")
        dev = x.device
        mean, std = self.mean.to(dev), self.std.to(dev)
        rot = random_rotations(len(x), self.rotation, self.generator)
        rot = torch.where(self._mask(len(x))[:, None, None], rot, torch.eye(3)).to(dev)
        raw = x * std + mean
        out = raw.clone()
        for group in self.channel_groups:
            out[:, group] = torch.bmm(rot, raw[:, group])
        return (out - mean) / std

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup or CutMix (one per batch when both are on): windows and soft targets [B, K].
        Without either, the class indices are returned unchanged."""
        if self.mixup <= 0 and self.cutmix <= 0:
            return x, y
        n, t = len(x), x.shape[-1]
        target = F.one_hot(y, self.num_classes).float()
        partner = torch.randperm(n, generator=self.generator).to(x.device)
        use_cutmix = self.cutmix > 0 and (
            self.mixup <= 0 or bool(torch.rand(1, generator=self.generator) < 0.5)
        )
        alpha = self.cutmix if use_cutmix else self.mixup
        # Beta(alpha, alpha) by its inverse CDF, so the draw comes from this generator too.
        u = float(torch.rand(1, generator=self.generator))
        lam = float(betaincinv(alpha, alpha, u))
        if use_cutmix:
            width = int(round((1 - lam) * t))
            start = int(torch.randint(0, t - width + 1, (1,), generator=self.generator))
            x = x.clone()
            x[..., start : start + width] = x[partner, :, start : start + width]
            lam = 1 - width / t
        else:
            x = lam * x + (1 - lam) * x[partner]
        return x, lam * target + (1 - lam) * target[partner]
