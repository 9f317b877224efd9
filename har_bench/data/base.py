"""The dataset contract every loader produces, so models, splits and artifacts do not care
where the windows came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from har_bench.core.errors import UserError


@dataclass(frozen=True)
class ImageSpec:
    """How stored images become the network's input; the run applies it per batch, on the
    training device, so the images stay uint8 at their stored size in memory.

    Args:
        size: (height, width) the network sees.
        crop_ratio: evaluation geometry: the image is resized (aspect kept) to cover
            ``size / crop_ratio``, then its centre ``size`` is cut out (ImageNet's 224 of 256 is
            0.875; 1.0 = a plain resize of a square image).
        mean, std: fixed per-channel normalisation in [0, 1] units; None = chosen by the run
            (ImageNet's with pretrained weights, else the training images').
    """

    size: tuple[int, int]
    crop_ratio: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size
        ):
            raise UserError(
                f"dataset.size={list(size)!r} is invalid: expected an integer or [height, width]"
            )
        object.__setattr__(self, "size", size)
        if isinstance(self.crop_ratio, bool) or not (
            isinstance(self.crop_ratio, int | float) and 0 < self.crop_ratio <= 1
        ):
            raise UserError(
                f"dataset.crop_ratio={self.crop_ratio!r} is invalid: expected a number in (0, 1]"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if (self.mean is None) != (self.std is None):
            raise UserError("dataset.mean and dataset.std must be given together (or neither)")
        if self.std is not None and min(self.std) <= 0:
            raise UserError(f"dataset.std={list(self.std)} is invalid: expected values > 0")


def image_spec(
    size: int | Sequence[int],
    crop_ratio: float = 1.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageSpec:
    """An :class:`ImageSpec` from config values (``size`` an int for a square)."""
    if isinstance(size, int) and not isinstance(size, bool):
        hw: tuple[int, ...] = (size, size)
    elif isinstance(size, Sequence) and not isinstance(size, str):
        hw = tuple(size)
    else:
        raise UserError(f"dataset.size={size!r} is invalid: expected an integer or [height, width]")
    return ImageSpec(
        hw,  # type: ignore[arg-type]
        crop_ratio,
        None if mean is None else tuple(mean),
        None if std is None else tuple(std),
    )


@dataclass
class HARData:
    """Windows of sensor data with labels and the subject each window came from.

    ``official_split`` holds "train"/"test" per window where the dataset defines an official
    split (UCI-HAR), else None. Images are uint8 [N, C, H, W] at their stored size, with
    ``image`` saying how they become the network's input.
    """

    name: str
    X: np.ndarray  # [N, C, T] float32 (sensor windows) or [N, C, H, W] uint8 (images)
    y: np.ndarray  # [N] int64 in 0..K-1
    subjects: np.ndarray  # [N] int64
    class_names: list[str]
    channel_names: list[str]
    official_split: np.ndarray | None = None  # [N] "train" | "test"
    sampling_rate_hz: float | None = None
    recording: np.ndarray | None = None  # [N] int64, optional recording/session id
    start: np.ndarray | None = None  # [N] int64 sample index of the window start, optional
    info: dict = field(default_factory=dict)  # loader notes (e.g. skipped lines, cache path)
    # x/y/z triples of one sensor (channel indices), which a rotation must turn together;
    # None = found from the channel names (see xyz_triples).
    channel_groups: list[list[int]] | None = None
    # Images only: size, evaluation crop and normalisation of the network's input.
    image: ImageSpec | None = None

    def __post_init__(self) -> None:
        n = len(self.X)
        if self.X.ndim not in (3, 4):
            raise UserError(f"X must be [N, C, T] (or [N, C, H, W] images), got {self.X.shape}")
        if self.image is not None:
            if self.X.ndim != 4 or self.X.dtype != np.uint8:
                raise UserError(
                    f"images must be uint8 [N, C, H, W], got {self.X.dtype} {self.X.shape}"
                )
            for name in ("mean", "std"):
                value = getattr(self.image, name)
                if value is not None and len(value) != self.X.shape[1]:
                    raise UserError(
                        f"dataset.{name} has {len(value)} values for {self.X.shape[1]} channels"
                    )
        if (self.recording is None) != (self.start is None):
            raise UserError("recording and start must be given together (or neither)")
        for name in ("y", "subjects", "official_split", "recording", "start"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise UserError(f"{name} has {len(arr)} entries, expected {n} (one per window)")
        if len(self.channel_names) != self.X.shape[1]:
            raise UserError(
                f"{len(self.channel_names)} channel names for {self.X.shape[1]} channels"
            )
        # Every loader names the file and line of a non-finite sample; this catches what reaches
        # the contract another way (a stale cache, a Python caller's arrays).
        if self.X.dtype.kind == "f" and not np.isfinite(self.X).all():
            i, c = np.argwhere(~np.isfinite(self.X))[0][:2]
            raise UserError(
                f"dataset {self.name}: window {i}, channel {self.channel_names[c]!r} holds a "
                f"non-finite value ({self.X[i, c][~np.isfinite(self.X[i, c])][0]})"
            )
        if n and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
            raise UserError(
                f"labels must be in 0..{len(self.class_names) - 1}, got {self.y.min()}..{self.y.max()}"
            )

        if self.channel_groups is None:
            self.channel_groups = xyz_triples(self.channel_names)
        for group in self.channel_groups:
            if len(group) != 3 or not all(0 <= c < self.X.shape[1] for c in group):
                raise UserError(
                    f"channel_groups entry {group} is invalid: expected 3 channel indices "
                    f"below {self.X.shape[1]}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_channels(self) -> int:
        return int(self.X.shape[1])

    @property
    def window_length(self) -> int:
        return int(self.X.shape[2])


def xyz_triples(channel_names: list[str]) -> list[list[int]]:
    """Channels named ``<sensor>_x``, ``<sensor>_y``, ``<sensor>_z`` (or ``x/y/z`` endings after
    any separator), as index triples in x, y, z order; a sensor missing an axis is skipped."""
    axes: dict[str, dict[str, int]] = {}
    for i, name in enumerate(channel_names):
        low = name.lower()
        if len(low) >= 2 and low[-1] in "xyz" and low[-2] in "_-. ":
            axes.setdefault(low[:-2], {})[low[-1]] = i
    return [[a["x"], a["y"], a["z"]] for a in axes.values() if len(a) == 3]
