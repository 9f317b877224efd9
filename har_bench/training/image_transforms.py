"""Images from their stored uint8 form to the network's input, per batch on the device.

Images stay uint8 at their stored size in memory (CIFAR-10: 184 MB rather than 36 GB as float32
at 224 x 224); each batch is resized, cropped and normalised where the network runs.

* :class:`ImageInput`, the deterministic path (evaluation, and training without augmentation):
  resize (aspect kept) to cover ``size / crop_ratio``, cut out the centre ``size``, normalise.
* :class:`ImageAugment` (``augment=image``), the training path: random resized crop,
  horizontal flip and light colour jitter, then the same normalisation. Like the sensor
  :class:`~har_bench.training.augment.Augment` it draws from its own seeded CPU generator, whose
  state is part of the resumable training state, so a batch is transformed alike on any device.

Resizing is ``torch.nn.functional.interpolate`` (bilinear, antialiased as torchvision's
``Resize``), so nothing here needs torchvision. The colour operations follow torchvision's
``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation`` formulas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from har_bench.core.errors import UserError

# The statistics torchvision's ImageNet weights were trained with (RGB, [0, 1] units).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma, torchvision's rgb_to_grayscale weights.
_LUMA = (0.299, 0.587, 0.114)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Float images [B, C, H, W] resized to ``size`` (bilinear; antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def cover_size(height: int, width: int, box: Sequence[int]) -> tuple[int, int]:
    """The (height, width) an image of ``height`` x ``width`` is resized to, aspect kept, so
    that it just covers ``box``: torchvision's ``Resize(int)`` when image or box is square."""
    scale = max(box[0] / height, box[1] / width)
    return max(round(height * scale), box[0]), max(round(width * scale), box[1])


def centre_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre ``size`` of [B, C, H, W] (torchvision's rounding of the offsets)."""
    h, w = x.shape[-2:]
    top = int(round((h - size[0]) / 2.0))
    left = int(round((w - size[1]) / 2.0))
    return x[..., top : top + size[0], left : left + size[1]]


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma [B, 1, H, W] of RGB images [B, 3, H, W]."""
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


@dataclass
class ImageInput:
    """Stored uint8 images [B, C, H, W] -> the network's float input [B, C, *size].

    Args:
        size: (height, width) the network sees.
        mean, std: per-channel normalisation in [0, 1] units.
        crop_ratio: the evaluation crop: resize to cover ``size / crop_ratio``, keep the centre
            ``size`` (0.875 = ImageNet's 224 of 256; 1.0 = a plain resize of a square image).
        normalisation: where ``mean``/``std`` came from (``imagenet``, ``train``, ``dataset``,
            or the pretrained run's), recorded in the run.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_ratio: float = 1.0
    normalisation: str = "train"
    _stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise UserError(f"image normalisation: mean={self.mean} std={self.std} (std > 0)")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic path: resize to cover, centre crop, normalise."""
        return self.normalise(self.geometry(x))

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Resize (aspect kept) to cover ``size / crop_ratio``, then cut out the centre
        ``size``: torchvision's ``Resize(256)`` + ``CenterCrop(224)`` for 224 and 0.875."""
        x = x.float()
        box = [round(s / self.crop_ratio) for s in self.size]
        return centre_crop(resize(x, cover_size(*x.shape[-2:], box)), self.size)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in uint8 units [0, 255] -> standardised per channel."""
        if x.device not in self._stats:
            shape = (1, -1, 1, 1)
            self._stats[x.device] = (
                torch.tensor(self.mean, device=x.device).reshape(shape) * 255,
                torch.tensor(self.std, device=x.device).reshape(shape) * 255,
            )
        mean, std = self._stats[x.device]
        return (x - mean) / std

    def describe(self) -> dict[str, Any]:
        """What the run records about its input (model_summary.json ``input``)."""
        return {
            "size": list(self.size),
            "crop_ratio": self.crop_ratio,
            "mean": list(self.mean),
            "std": list(self.std),
            "normalisation": self.normalisation,
            "stored_as": "uint8",
        }


def _pair(name: str, value: Sequence[float], low: float, high: float | None) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        a, b = math.nan, math.nan
    if not (low < a <= b and (high is None or b <= high)):
        bound = f"<= {high}" if high is not None else ""
        raise UserError(
            f"augment.{name}={list(value) if isinstance(value, Sequence) else value!r} is "
            f"invalid: expected [min, max] with {low} < min <= max {bound}".rstrip()
        )
    return a, b


def _amount(name: str, value: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise UserError(f"augment.{name}={value!r} is invalid: expected a number in [0, {high}]")
    return float(value)


def random_resized_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """[n, 4] crop boxes (top, left, height, width) drawn as torchvision's RandomResizedCrop
    draws them (area share in ``scale``, log-uniform aspect in ``ratio``, 10 tries, then a
    centre crop of the nearest allowed aspect), for a whole batch at once."""
    tries = 10
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=generator))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.float().argmax(1, keepdim=True)
    h = h.gather(1, first)[:, 0].long()
    w = w.gather(1, first)[:, 0].long()
    found = ok.any(1)
    # The fallback: the whole image, narrowed to the nearest allowed aspect.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fh, fw = round(width / ratio[0]), width
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fh, fw = height, width
    h = torch.where(found, h, fh)
    w = torch.where(found, w, fw)
    u_top, u_left = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    top = torch.where(found, (u_top * (height - h + 1)).long(), (height - fh) // 2)
    left = torch.where(found, (u_left * (width - w + 1)).long(), (width - fw) // 2)
    return torch.stack([top, left, h, w], 1)


@dataclass
class ImageAugment:
    """The training-time image transform (``augment=image``).

    Args:
        crop: random resized crop (else the evaluation geometry).
        scale: range of the crop's share of the image area.
        ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
        flip: probability of a horizontal flip.
        brightness, contrast, saturation: colour jitter: each factor uniform in
            [1 - x, 1 + x], applied in this fixed order (0 = off). No hue jitter: it needs an
            HSV round trip, and "light" jitter leaves hue alone.
        seed: seed of the augmentation's generator (the run's seed is added).
    """

    crop: bool = True
    scale: Sequence[float] = (0.08, 1.0)
    ratio: Sequence[float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    seed: int = 0
    image_input: ImageInput | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.crop = bool(self.crop)
        self.scale = _pair("scale", self.scale, 0.0, 1.0)
        self.ratio = _pair("ratio", self.ratio, 0.0, None)
        self.flip = _amount("flip", self.flip, 1.0)
        for name in ("brightness", "contrast", "saturation"):
            setattr(self, name, _amount(name, getattr(self, name), 0.99))
        self.generator = torch.Generator().manual_seed(int(self.seed))

    @property
    def enabled(self) -> bool:
        return self.crop or any(
            getattr(self, name) > 0 for name in ("flip", "brightness", "contrast", "saturation")
        )

    def bind(self, image_input: ImageInput, seed: int) -> ImageAugment:
        """This augmentation for one dataset's input (size, normalisation) and run seed."""
        self.image_input = image_input
        self.generator.manual_seed(int(self.seed) + int(seed))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored uint8 images [B, C, H, W] -> augmented, normalised network input; labels
        unchanged."""
        if self.image_input is None:
            raise ValueError("ImageAugment needs the run's ImageInput (see bind())")
        if x.ndim != 4:
            raise UserError(f"augment=image works on images [B, C, H, W], got {tuple(x.shape)}")
        n, dev = len(x), x.device
        out = self._geometry(x)
        if self.flip > 0:
            flip = (torch.rand(n, generator=self.generator) < self.flip).to(dev)
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        out = self._colour(out / 255.0) * 255.0
        return self.image_input.normalise(out), y

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        assert self.image_input is not None
        size = self.image_input.size
        if not self.crop:
            return self.image_input.geometry(x)
        boxes = random_resized_boxes(
            len(x),
            x.shape[-2],
            x.shape[-1],
            self.scale,
            self.ratio,
            self.generator,  # type: ignore[arg-type]
        ).tolist()
        # Every image has its own box, so no single interpolate call covers the batch; per
        # image it is torchvision's own crop + antialiased resize, a small cost next to the net.
        return torch.cat(
            [
                resize(x[i : i + 1, :, top : top + h, left : left + w].float(), size)
                for i, (top, left, h, w) in enumerate(boxes)
            ]
        )

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation jitter on [0, 1] images."""
        n, dev = len(x), x.device

        def factors(amount: float) -> torch.Tensor:
            u = torch.rand(n, generator=self.generator)
            return (1 - amount + 2 * amount * u).to(dev).reshape(n, 1, 1, 1)

        if self.brightness > 0:
            x = (x * factors(self.brightness)).clamp(0, 1)
        if self.contrast > 0 and x.shape[1] == 3:
            f = factors(self.contrast)
            mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (f * x + (1 - f) * mean).clamp(0, 1)
        if self.saturation > 0 and x.shape[1] == 3:
            f = factors(self.saturation)
            x = (f * x + (1 - f) * grayscale(x)).clamp(0, 1)
        return x
