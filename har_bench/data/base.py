"""The dataset contract every loader produces, so models, splits and artifacts do not care
where the windows came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class HARData:
    """Windows of sensor data with labels and the subject each window came from.

    ``official_split`` holds "train"/"test" per window where the dataset defines an official
    split (UCI-HAR), else None.
    """

    name: str
    X: np.ndarray  # [N, C, T] float32 (sensor windows) or [N, C, H, W] (images)
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

    def __post_init__(self) -> None:
        n = len(self.X)
        if self.X.ndim not in (3, 4):
            raise ValueError(f"X must be [N, C, T] (or [N, C, H, W] images), got {self.X.shape}")
        if (self.recording is None) != (self.start is None):
            raise ValueError("recording and start must be given together (or neither)")
        for name in ("y", "subjects", "official_split", "recording", "start"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} entries, expected {n} (one per window)")
        if len(self.channel_names) != self.X.shape[1]:
            raise ValueError(
                f"{len(self.channel_names)} channel names for {self.X.shape[1]} channels"
            )
        if n and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must be in 0..{len(self.class_names) - 1}, got {self.y.min()}..{self.y.max()}"
            )

        if self.channel_groups is None:
            self.channel_groups = xyz_triples(self.channel_names)
        for group in self.channel_groups:
            if len(group) != 3 or not all(0 <= c < self.X.shape[1] for c in group):
                raise ValueError(
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
