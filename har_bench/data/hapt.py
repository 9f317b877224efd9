"""HAPT: Smartphone-Based Recognition of Human Activities and Postural Transitions
(Reyes-Ortiz et al., Neurocomputing 2016), raw signals, windowed.

``RawData/acc_expNN_userMM.txt`` and ``gyro_expNN_userMM.txt``: 3 columns at 50 Hz per
experiment; ``RawData/labels.txt``: ``experiment user activity start end`` (1-based, inclusive
sample indices). Activities 1-6 are the basic ones of UCI-HAR, 7-12 the postural transitions;
samples outside any labelled segment are never inside a window. The official split is the
subject split of HAPT's Train/Test folders (the UCI-HAR one): read from
``Test/subject_id_test.txt`` when present, else the 9 documented test volunteers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from har_bench.core.errors import MissingInputError, UserError
from har_bench.data._io import (
    Layout,
    check_choice,
    find_file,
    read_table,
    resolve_root,
    strip_compression,
)
from har_bench.data.base import HARData
from har_bench.data.windowing import Recording, WindowSpec, channel_names

DEFAULT_URL = (
    "https://archive.ics.uci.edu/static/public/341/"
    "smartphone+based+recognition+of+human+activities+and+postural+transitions.zip"
)
SAMPLING_RATE_HZ = 50.0
ACTIVITIES = [
    "WALKING",
    "WALKING_UPSTAIRS",
    "WALKING_DOWNSTAIRS",
    "SITTING",
    "STANDING",
    "LAYING",
    "STAND_TO_SIT",
    "SIT_TO_STAND",
    "SIT_TO_LIE",
    "LIE_TO_SIT",
    "STAND_TO_LIE",
    "LIE_TO_STAND",
]
TEST_SUBJECTS = [2, 4, 9, 10, 12, 13, 18, 20, 24]
SENSORS = ("acc", "gyro")
_FILE_RE = re.compile(r"^(acc|gyro)_exp(\d+)_user(\d+)\.txt$")
_HINT = (
    "dataset.root must be the HAPT folder holding RawData/, RawData/ itself, or the official "
    "zip (or null to download it)"
)
# The zip holds RawData/ at its top level: extracting it leaves the dataset folder its parent.
LAYOUT = Layout("HAPT", "RawData", marker="RawData/", archive_name="hapt.zip", hint=_HINT)


def _test_subjects(ds: Path) -> tuple[list[int], str]:
    try:
        path = find_file(ds / "Test", "subject_id_test.txt", "HAPT")
    except FileNotFoundError:
        return list(TEST_SUBJECTS), "documented HAPT/UCI-HAR test volunteers"
    ids = read_table(path, 1, np.int64).ravel()
    return sorted({int(i) for i in ids}), str(path)


def load_hapt(
    root: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str],
    transitions: bool = False,
    sensors: list[str] | tuple[str, ...] = SENSORS,
    window: int = 128,
    step: int = 64,
    resample_hz: float | None = None,
    url: str = DEFAULT_URL,
    sha256: str | None = None,
    progress: bool = True,
) -> HARData:
    """Load HAPT RawData as windows ([N, 3 per sensor, window]).

    Args:
        transitions: False = the 6 basic activities (transition segments dropped); True = all
            12 classes.
        sensors: ``acc`` (g) and/or ``gyro`` (rad/s), in this channel order.
        window, step: samples at 50 Hz (128/64 = UCI-HAR's 2.56 s windows, 50 % overlap).
    """
    spec = WindowSpec.check(window, step, resample_hz)
    sensors = [check_choice("dataset.sensors entry", str(s), SENSORS) for s in sensors]
    if not sensors:
        raise UserError("dataset.sensors is empty: choose acc and/or gyro")
    workdir = Path(data_dir).expanduser() / "hapt"
    ds, _ = resolve_root(root, workdir, url, sha256, progress, LAYOUT)
    raw = ds / "RawData"
    labels_path = find_file(raw, "labels.txt", "HAPT", _HINT)
    labels = read_table(labels_path, 5).astype(np.int64)
    bad = np.flatnonzero((labels[:, 2] < 1) | (labels[:, 2] > 12) | (labels[:, 3] > labels[:, 4]))
    if bad.size:
        raise UserError(
            f"{labels_path}, row {bad[0] + 1}: expected activity 1..12 and start <= end, got "
            f"{labels[bad[0]].tolist()}"
        )
    experiments: dict[tuple[int, int], dict[str, Path]] = {}
    for p in sorted(raw.iterdir()):
        m = _FILE_RE.match(strip_compression(p.name))
        if m:
            experiments.setdefault((int(m.group(2)), int(m.group(3))), {})[m.group(1)] = p
    if not experiments:
        find_file(raw, "acc_exp01_user01.txt", "HAPT", _HINT)  # raises, naming the file
    n_classes = 12 if transitions else 6
    recs = []
    for (exp, user), files in sorted(experiments.items()):
        missing = [s for s in sensors if s not in files]
        if missing:
            raise MissingInputError(
                f"HAPT file not found: {missing[0]}_exp{exp:02d}_user{user:02d}.txt in {raw}"
            )
        parts = [read_table(files[s], 3) for s in sensors]
        n = min(len(p) for p in parts)
        if any(len(p) != n for p in parts):
            raise UserError(
                f"HAPT experiment {exp}: acc and gyro have different lengths "
                f"({', '.join(str(len(p)) for p in parts)})"
            )
        lab = np.full(n, -1, np.int64)
        for _, _, act, start, end in labels[(labels[:, 0] == exp) & (labels[:, 1] == user)]:
            if end > n:
                raise UserError(
                    f"{labels_path}: segment {start}-{end} of experiment {exp} ends after its "
                    f"{n} samples"
                )
            if act <= n_classes:
                lab[start - 1 : end] = act - 1
        recs.append(Recording(np.concatenate(parts, axis=1), lab, user))
    w = spec.cut(recs, SAMPLING_RATE_HZ)
    test_subjects, source = _test_subjects(ds)
    return w.to_data(
        "hapt",
        ACTIVITIES[:n_classes],
        channel_names(sensors),
        official_split=np.where(np.isin(w.subjects, test_subjects), "test", "train"),
        info={
            "source": str(ds),
            "experiments": len(recs),
            "test_subjects": test_subjects,
            "test_subjects_from": source,
        },
    )
