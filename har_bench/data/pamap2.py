"""PAMAP2 Physical Activity Monitoring (Reiss & Stricker, ISWC 2012), windowed.

``Protocol/subject10N.dat``: 54 space-separated columns at 100 Hz: timestamp (s), activity id,
heart rate, then 17 columns for each IMU (hand, chest, ankle): temperature, 3D acceleration
(+-16 g), 3D acceleration (+-6 g), 3D gyroscope, 3D magnetometer, 4 orientation values
(documented as invalid). Activity 0 ("transient") is dropped: its samples are never inside a
window. NaNs (dropped wireless packets) are filled by linear interpolation within each subject's
recording. PAMAP2 defines no train/test split: the config defaults to ``split=group_kfold``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from har_bench.core.errors import UserError
from har_bench.data._io import (
    Layout,
    cache_key,
    check_choice,
    find_file,
    load_cache,
    read_table,
    resolve_root,
    save_cache,
)
from har_bench.data.base import HARData
from har_bench.data.windowing import Recording, WindowSpec, interpolate_nans

log = logging.getLogger(__name__)

DEFAULT_URL = (
    "https://archive.ics.uci.edu/static/public/231/pamap2+physical+activity+monitoring.zip"
)
MEMBER_ROOT = "PAMAP2_Dataset"
N_COLUMNS = 54
SAMPLING_RATE_HZ = 100.0
IMUS = ("hand", "chest", "ankle")
# Offsets inside an IMU's 17 columns.
SENSOR_COLUMNS = {"temperature": [0], "acc16": [1, 2, 3], "acc6": [4, 5, 6], "gyro": [7, 8, 9],
                  "mag": [10, 11, 12]}  # fmt: skip
ACTIVITIES = {
    1: "lying",
    2: "sitting",
    3: "standing",
    4: "walking",
    5: "running",
    6: "cycling",
    7: "Nordic walking",
    9: "watching TV",
    10: "computer work",
    11: "car driving",
    12: "ascending stairs",
    13: "descending stairs",
    16: "vacuum cleaning",
    17: "ironing",
    18: "folding laundry",
    19: "house cleaning",
    20: "playing soccer",
    24: "rope jumping",
}
# The 12 activities of the data-collection protocol (the Protocol/ folder).
PROTOCOL_ACTIVITIES = [1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24]
_CACHE_VERSION = "2"  # 2: inf refused at parse time
_HINT = (
    "dataset.root must be the PAMAP2_Dataset folder (with Protocol/), a folder containing it, "
    "or the official zip (or null to download it)"
)
LAYOUT = Layout("PAMAP2", MEMBER_ROOT, marker="Protocol/", archive_name="pamap2.zip", hint=_HINT)


def load_pamap2(
    root: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str],
    imus: list[str] | tuple[str, ...] = IMUS,
    sensors: list[str] | tuple[str, ...] = ("acc16", "gyro", "mag"),
    heart_rate: bool = False,
    activities: list[int] | None = None,
    window: int = 256,
    step: int = 128,
    resample_hz: float | None = None,
    max_gap_s: float = 1.0,
    url: str = DEFAULT_URL,
    sha256: str | None = None,
    cache: bool = True,
    progress: bool = True,
) -> HARData:
    """Load PAMAP2 ``Protocol/subject*.dat`` as windows ([N, channels, window]).

    Args:
        imus: any of ``hand``, ``chest``, ``ankle``; sensors: any of ``acc16``, ``acc6``,
            ``gyro``, ``mag``, ``temperature`` (channels ordered IMU-major as listed).
        heart_rate: add the heart-rate channel (sampled at ~9 Hz; interpolated).
        activities: activity ids to keep as classes (default: the 12 protocol activities);
            other ids are dropped like activity 0.
        window, step: in samples at 100 Hz, or at ``resample_hz`` (e.g. 33.3 for 3x fewer).
    """
    spec = WindowSpec.check(window, step, resample_hz, max_gap_s)
    imus = [check_choice("dataset.imus entry", str(i), IMUS) for i in imus]
    sensors = [check_choice("dataset.sensors entry", str(s), SENSOR_COLUMNS) for s in sensors]
    if not imus or not sensors:
        raise UserError("dataset.imus and dataset.sensors must each name at least one entry")
    ids = list(PROTOCOL_ACTIVITIES) if activities is None else [int(a) for a in activities]
    bad = [a for a in ids if a not in ACTIVITIES]
    if bad or not ids:
        raise UserError(
            f"dataset.activities has unknown ids {bad or ids}: expected ids from "
            f"{sorted(ACTIVITIES)}"
        )
    workdir = Path(data_dir).expanduser() / "pamap2"
    ds, _ = resolve_root(root, workdir, url, sha256, progress, LAYOUT)
    files = sorted(
        p for p in (ds / "Protocol").iterdir() if p.name.startswith("subject") and ".dat" in p.name
    )
    if not files:
        find_file(ds / "Protocol", "subject101.dat", "PAMAP2", _HINT)  # raises, naming the file

    columns: list[int] = [2] if heart_rate else []
    names: list[str] = ["heart_rate"] if heart_rate else []
    for imu in imus:
        base = 3 + 17 * IMUS.index(imu)
        for s in sensors:
            columns += [base + o for o in SENSOR_COLUMNS[s]]
            names += [f"{imu}_{s}"] if s == "temperature" else [f"{imu}_{s}_{a}" for a in "xyz"]

    cache_path = None
    if cache:
        key = cache_key(files, _CACHE_VERSION, columns)
        cache_path = workdir / "cache" / f"protocol-{key}.npz"
    arrays = load_cache(cache_path, ("signal", "time", "activity", "subject", "notes"))
    cache_hit = arrays is not None
    if arrays is None:
        signals, times, acts, subjects = [], [], [], []
        nan_filled = 0
        for p in files:
            raw = read_table(p, N_COLUMNS, allow_nan=True)  # NaN kept: dropped packets
            digits = "".join(ch for ch in p.name.split(".")[0] if ch.isdigit())
            sig = raw[:, columns].copy()
            nan_filled += interpolate_nans(sig)
            act = raw[:, 1]
            if np.isnan(act).any():
                raise UserError(f"{p}: the activity column has missing values")
            signals.append(sig.astype(np.float32))
            times.append(raw[:, 0])
            acts.append(act.astype(np.int64))
            subjects.append(np.full(len(raw), int(digits), np.int64))
        arrays = {
            "signal": np.concatenate(signals),
            "time": np.concatenate(times),
            "activity": np.concatenate(acts),
            "subject": np.concatenate(subjects),
            "notes": np.asarray(json.dumps({"nan_values_interpolated": nan_filled})),
        }
        if cache_path is not None and not save_cache(cache_path, arrays):
            cache_path = None
    notes = json.loads(str(arrays["notes"]))

    remap = np.full(max(ACTIVITIES) + 1, -1, np.int64)
    for k, a in enumerate(ids):
        remap[a] = k
    act = arrays["activity"]
    if act.min() < 0 or act.max() > max(ACTIVITIES):
        raise UserError(f"PAMAP2: activity ids outside 0..{max(ACTIVITIES)} in {ds / 'Protocol'}")
    label = remap[act]
    subject = arrays["subject"]
    bounds = np.flatnonzero(np.diff(subject)) + 1
    recs = [
        Recording(arrays["signal"][a:b], label[a:b], int(subject[a]), arrays["time"][a:b])
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(subject)], strict=True)
    ]
    w = spec.cut(recs, SAMPLING_RATE_HZ)
    dropped = int(np.count_nonzero(label < 0))
    info = {
        "source": str(ds),
        "cache": str(cache_path) if cache_path else None,
        "cache_hit": cache_hit,
        "activity_ids": ids,
        "samples_dropped_unlabelled": dropped,
        **notes,
    }
    data = w.to_data("pamap2", [ACTIVITIES[a] for a in ids], names, info=info)
    log.info(
        "PAMAP2: %d subjects, %d windows; %d samples of activity 0 / unselected activities "
        "dropped, %d NaN values interpolated",
        len(recs),
        len(w.y),
        dropped,
        notes["nan_values_interpolated"],
    )
    return data
