"""WISDM raw accelerometer/gyroscope streams (Fordham WISDM lab), windowed.

Two releases share the line format ``user,activity,timestamp,x,y,z;`` (timestamps in ns):

* ``2019``: "WISDM Smartphone and Smartwatch Activity and Biometrics Dataset" (Weiss et al.,
  IEEE Access 2019): ``raw/{phone,watch}/{accel,gyro}/data_<subject>_<sensor>_<device>.txt``,
  51 subjects (1600-1650), 18 activities coded A-S without N (``activity_key.txt``), 20 Hz,
  3 minutes per activity. Accelerometer and gyroscope are separate streams; they are joined
  sample by sample on the nearest timestamp within ``align_tolerance_ms``.
* ``v1.1``: ``WISDM_ar_v1.1_raw.txt`` (Kwapisz et al., SIGKDD Explorations 2010), 36 users,
  6 activities, phone accelerometer, 20 Hz. The file has malformed lines (missing fields, two
  records on one line, empty values); they are skipped, counted and reported.

Each (subject, activity) block is one recording, split further at gaps in time; windows never
cross either. WISDM defines no train/test split: the dataset config defaults to
``split=group_kfold`` (subject-disjoint).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from har_bench.core.errors import MissingInputError, UserError
from har_bench.data._io import (
    Layout,
    cache_key,
    check_choice,
    find_file,
    load_cache,
    read_text,
    resolve_root,
    save_cache,
)
from har_bench.data.base import HARData
from har_bench.data.windowing import (
    NAN_POLICIES,
    Recording,
    WindowSpec,
    apply_nan_policy,
    channel_names,
)

log = logging.getLogger(__name__)

URL_2019 = (
    "https://archive.ics.uci.edu/static/public/507/"
    "wisdm+smartphone+and+smartwatch+activity+and+biometrics+dataset.zip"
)
URL_V11 = "https://www.cis.fordham.edu/wisdm/includes/datasets/latest/WISDM_ar_latest.tar.gz"
MEMBER_2019 = "wisdm-dataset"
MEMBER_V11 = "WISDM_ar_v1.1"
V11_FILE = "WISDM_ar_v1.1_raw.txt"
VERSIONS = ("2019", "v1.1")
DEVICES = ("watch", "phone")
SENSORS = ("accel", "gyro")
SAMPLING_RATE_HZ = 20.0
# activity_key.txt of the 2019 release, used when the file is not beside the raw folder.
ACTIVITIES_2019 = {
    "A": "walking",
    "B": "jogging",
    "C": "stairs",
    "D": "sitting",
    "E": "standing",
    "F": "typing",
    "G": "teeth",
    "H": "soup",
    "I": "chips",
    "J": "pasta",
    "K": "drinking",
    "L": "sandwich",
    "M": "kicking",
    "O": "catch",
    "P": "dribbling",
    "Q": "writing",
    "R": "clapping",
    "S": "folding",
}
ACTIVITIES_V11 = ["Walking", "Jogging", "Upstairs", "Downstairs", "Sitting", "Standing"]
_FILE_RE = re.compile(r"^data_(\d+)_(accel|gyro)_(phone|watch)\.txt(\.gz|\.xz|\.bz2)?$")
_CACHE_VERSION = "2"  # 2: nan/inf samples kept as NaN rows for dataset.nan_policy
_HINT_2019 = (
    "dataset.root must be the 'wisdm-dataset' folder (with raw/), its raw/ folder, a folder "
    "containing wisdm-dataset/, or the official zip (or null to download it)"
)
_HINT_V11 = (
    f"dataset.root must be {V11_FILE}, the folder holding it, the official tar.gz (or null to "
    f"download it)"
)
LAYOUTS = {
    "2019": Layout("WISDM", MEMBER_2019, "raw/", "wisdm-2019.archive", _HINT_2019),
    "v1.1": Layout("WISDM", MEMBER_V11, V11_FILE, "wisdm-v1.1.archive", _HINT_V11),
}
URLS = {"2019": URL_2019, "v1.1": URL_V11}


# --------------------------------------------------------------------------- line parsing


@dataclass
class Parsed:
    subject: np.ndarray  # int64
    activity: np.ndarray  # str codes/names
    ts: np.ndarray  # int64 ns
    xyz: np.ndarray  # [n, 3] float32
    malformed: int = 0
    examples: list[str] = field(default_factory=list)  # "file:line: text" of the first few
    # Records whose x/y/z are nan or inf, kept as NaN rows (keep_non_finite only).
    non_finite: int = 0
    non_finite_first: str = ""  # "<file>, line <n>: '<record>'" of the first


def _parse_slow(text: str, path: Path, keep_non_finite: bool = False) -> Parsed:
    """Record by record: a line may hold several ';'-terminated records or broken ones."""
    subj: list[int] = []
    act: list[str] = []
    ts: list[int] = []
    xyz: list[tuple[float, float, float]] = []
    malformed = 0
    examples: list[str] = []
    non_finite, non_finite_first = 0, ""
    for lineno, line in enumerate(text.splitlines(), start=1):
        for record in line.split(";"):
            record = record.strip()
            if not record:
                continue
            fields = [f.strip() for f in record.split(",")]
            try:
                if len(fields) != 6 or not fields[1]:
                    raise ValueError
                values = (float(fields[3]), float(fields[4]), float(fields[5]))
                row = (int(fields[0]), fields[1], int(fields[2]))
                if not all(np.isfinite(values)):
                    if not keep_non_finite:
                        raise ValueError
                    non_finite += 1
                    non_finite_first = non_finite_first or f"{path}, line {lineno}: {record!r}"
                    values = (np.nan, np.nan, np.nan)
            except ValueError:
                malformed += 1
                if len(examples) < 5:
                    examples.append(f"{path.name}:{lineno}: {line.strip()[:80]!r}")
                continue
            subj.append(row[0])
            act.append(row[1])
            ts.append(row[2])
            xyz.append(values)
    return Parsed(
        subject=np.asarray(subj, dtype=np.int64),
        activity=np.asarray(act, dtype=object),
        ts=np.asarray(ts, dtype=np.int64),
        xyz=np.asarray(xyz, dtype=np.float32).reshape(-1, 3),
        malformed=malformed,
        examples=examples,
        non_finite=non_finite,
        non_finite_first=non_finite_first,
    )


def parse_wisdm_file(path: Path, keep_non_finite: bool = False) -> Parsed:
    """Parse one raw WISDM file; malformed records are skipped and counted. A record whose
    x/y/z are ``nan``/``inf`` is malformed too, or with ``keep_non_finite`` a NaN row that is
    counted with the place of the first, for the loader's ``dataset.nan_policy``.

    The C parser handles the clean 2019 files (millions of lines) in well under a second;
    any sign of trouble (wrong field count, empty or non-numeric values) re-parses the file
    record by record so each bad record can be counted and skipped instead of guessed at.
    """
    text = read_text(path)
    try:
        df = pd.read_csv(
            io.StringIO(text.replace(";", "")),
            header=None,
            names=["subject", "activity", "ts", "x", "y", "z"],
            dtype={"subject": np.int64, "activity": str, "ts": np.int64},
            engine="c",
            skip_blank_lines=True,
        )
        xyz = df[["x", "y", "z"]].to_numpy(dtype=np.float64)
        if (
            not len(df)
            or not np.isfinite(xyz).all()
            or df["activity"].isna().any()
            or text.count(";") > len(df)  # two records on one line
        ):
            raise UserError("needs the careful parser")
    except (ValueError, pd.errors.ParserError):
        return _parse_slow(text, path, keep_non_finite)
    return Parsed(
        subject=df["subject"].to_numpy(np.int64),
        activity=df["activity"].to_numpy(dtype=object),
        ts=df["ts"].to_numpy(np.int64),
        xyz=xyz.astype(np.float32),
    )


# --------------------------------------------------------------------------- locating


def file_name_parts(name: str) -> tuple[int, str, str] | None:
    """(subject, sensor, device) of a 2019 raw file name (``data_1600_accel_watch.txt.xz``),
    or None for another name."""
    m = _FILE_RE.match(name)
    return (int(m.group(1)), m.group(2), m.group(3)) if m else None


def read_activity_key(folder: Path) -> dict[str, str]:
    """``activity_key.txt`` ("walking = A" per line) as code -> name, in file order."""
    try:
        path = find_file(folder, "activity_key.txt", "WISDM")
    except FileNotFoundError:
        return dict(ACTIVITIES_2019)
    key: dict[str, str] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, code = line.rpartition("=")
        if not sep or not name.strip() or len(code.strip()) != 1:
            raise UserError(f"{path}, line {lineno}: expected '<name> = <code>', got {line!r}")
        key[code.strip()] = name.strip()
    return key


def _files_2019(ds: Path, device: str, sensors: list[str]) -> dict[int, dict[str, Path]]:
    found: dict[int, dict[str, Path]] = {}
    for sensor in sensors:
        folder = ds / "raw" / device / sensor
        if not folder.is_dir():
            raise MissingInputError(
                f"WISDM folder not found: {folder} (device={device!r}, sensor={sensor!r}); "
                f"{_HINT_2019}"
            )
        for p in sorted(folder.iterdir()):
            m = _FILE_RE.match(p.name)
            if m and m.group(2) == sensor and m.group(3) == device:
                found.setdefault(int(m.group(1)), {})
                # Plain text wins over a compressed twin, as for UCI-HAR.
                if sensor not in found[int(m.group(1))] or not m.group(4):
                    found[int(m.group(1))][sensor] = p
        if not any(sensor in v for v in found.values()):
            raise MissingInputError(
                f"WISDM: no data_<subject>_{sensor}_{device}.txt[.gz|.xz] files in {folder}"
            )
    return found


# --------------------------------------------------------------------------- assembling


def align_nearest(
    base_ts: np.ndarray, other_ts: np.ndarray, tolerance_ns: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each base timestamp, the index of the nearest ``other`` timestamp within the
    tolerance; returns (kept base indices, matched other indices)."""
    if not len(other_ts) or not len(base_ts):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(other_ts, kind="stable")
    sorted_ts = other_ts[order]
    pos = np.searchsorted(sorted_ts, base_ts)
    lo = np.clip(pos - 1, 0, len(sorted_ts) - 1)
    hi = np.clip(pos, 0, len(sorted_ts) - 1)
    use_hi = np.abs(sorted_ts[hi] - base_ts) < np.abs(sorted_ts[lo] - base_ts)
    nearest = np.where(use_hi, hi, lo)
    ok = np.abs(sorted_ts[nearest] - base_ts) <= tolerance_ns
    return np.flatnonzero(ok), order[nearest[ok]]


def _streams_2019(
    ds: Path, device: str, sensors: list[str], tolerance_ns: int, threads: int
) -> tuple[dict[str, np.ndarray], dict]:
    key = read_activity_key(ds)
    codes = list(key)
    code_index = {c: i for i, c in enumerate(codes)}
    files = _files_2019(ds, device, sensors)
    complete = {s: f for s, f in files.items() if all(x in f for x in sensors)}
    incomplete = sorted(set(files) - set(complete))
    if not complete:
        raise MissingInputError(
            f"WISDM: no subject has all of sensors {sensors} for device {device!r} under "
            f"{ds / 'raw' / device}"
        )
    jobs = [(s, sensor, p) for s, f in sorted(complete.items()) for sensor, p in f.items()]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parsed = dict(
            zip(
                [(s, sensor) for s, sensor, _ in jobs],
                pool.map(lambda j: parse_wisdm_file(j[2], keep_non_finite=True), jobs),
                strict=True,
            )
        )
    malformed = {str(complete[s][sensor].name): p.malformed for (s, sensor), p in parsed.items()}
    examples = [e for p in parsed.values() for e in p.examples][:10]
    non_finite_first = [p.non_finite_first for p in parsed.values() if p.non_finite]

    signals, times, labels, subj, rec = [], [], [], [], []
    unknown: set[str] = set()
    wrong_subject = 0
    dropped_unaligned = 0
    n_rec = 0
    for s in sorted(complete):
        per_sensor = {}
        for sensor in sensors:
            p = parsed[(s, sensor)]
            keep = p.subject == s
            wrong_subject += int(np.count_nonzero(~keep))
            per_sensor[sensor] = (p.activity[keep], p.ts[keep], p.xyz[keep])
        base_act, base_ts, base_xyz = per_sensor[sensors[0]]
        # Activities in the order they were recorded; each block is one recording.
        _, first = np.unique(base_act, return_index=True)
        for act in base_act[np.sort(first)]:
            if act not in code_index:
                unknown.add(str(act))
                continue
            sel = np.flatnonzero(base_act == act)
            sel = sel[np.argsort(base_ts[sel], kind="stable")]
            ts = base_ts[sel]
            cols = [base_xyz[sel]]
            keep = np.arange(len(sel))
            for sensor in sensors[1:]:
                o_act, o_ts, o_xyz = per_sensor[sensor]
                o_sel = np.flatnonzero(o_act == act)
                kept, matched = align_nearest(ts[keep], o_ts[o_sel], tolerance_ns)
                keep = keep[kept]
                cols = [c[kept] for c in cols] + [o_xyz[o_sel][matched]]
            dropped_unaligned += len(sel) - len(keep)
            if not len(keep):
                continue
            signals.append(np.concatenate(cols, axis=1))
            times.append(ts[keep])
            labels.append(np.full(len(keep), code_index[act], np.int64))
            subj.append(np.full(len(keep), s, np.int64))
            rec.append(np.full(len(keep), n_rec, np.int64))
            n_rec += 1
    arrays = {
        "signal": np.concatenate(signals).astype(np.float32),
        "ts": np.concatenate(times),
        "label": np.concatenate(labels),
        "subject": np.concatenate(subj),
        "rec": np.concatenate(rec),
        "class_names": np.asarray([key[c] for c in codes]),
        "class_codes": np.asarray(codes),
    }
    notes = {
        "subjects_skipped_missing_sensor": incomplete,
        "malformed_records": int(sum(malformed.values())),
        "malformed_by_file": {k: v for k, v in malformed.items() if v},
        "malformed_examples": examples,
        "records_with_other_subject_id": wrong_subject,
        "unknown_activity_codes": sorted(unknown),
        "samples_dropped_unaligned": int(dropped_unaligned),
        "non_finite_records": int(sum(p.non_finite for p in parsed.values())),
        "non_finite_first": non_finite_first[0] if non_finite_first else "",
    }
    return arrays, notes


def _streams_v11(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    p = parse_wisdm_file(path, keep_non_finite=True)
    index = {name: i for i, name in enumerate(ACTIVITIES_V11)}
    lab = np.array([index.get(str(a), -1) for a in p.activity], dtype=np.int64)
    unknown = sorted({str(a) for a, v in zip(p.activity, lab, strict=True) if v < 0})
    keep = lab >= 0
    subject, ts, xyz, lab = p.subject[keep], p.ts[keep], p.xyz[keep], lab[keep]
    # A new recording wherever the user or the activity changes in file order.
    change = np.flatnonzero((subject[1:] != subject[:-1]) | (lab[1:] != lab[:-1])) + 1
    rec = np.zeros(len(lab), np.int64)
    rec[change] = 1
    rec = np.cumsum(rec)
    arrays = {
        "signal": xyz.astype(np.float32),
        "ts": ts,
        "label": lab,
        "subject": subject,
        "rec": rec,
        "class_names": np.asarray(ACTIVITIES_V11),
        "class_codes": np.asarray(ACTIVITIES_V11),
    }
    notes = {
        "malformed_records": p.malformed,
        "malformed_examples": p.examples,
        "unknown_activity_codes": unknown,
        "non_finite_records": p.non_finite,
        "non_finite_first": p.non_finite_first,
    }
    return arrays, notes


# --------------------------------------------------------------------------- public


def load_wisdm(
    root: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str],
    version: str = "2019",
    device: str = "watch",
    sensors: list[str] | tuple[str, ...] = ("accel", "gyro"),
    window: int = 200,
    step: int = 100,
    resample_hz: float | None = None,
    max_gap_s: float = 1.0,
    align_tolerance_ms: float = 25.0,
    activities: list[str] | None = None,
    url: str | None = None,
    sha256: str | None = None,
    cache: bool = True,
    progress: bool = True,
    nan_policy: str = "error",
) -> HARData:
    """Load WISDM raw streams and cut them into windows (X: [N, 3 per sensor, window]).

    Args:
        root: local copy (see module docstring), or None to download the official archive.
        data_dir: writable folder for downloads and the parsed-stream cache (``wisdm/``).
        version: ``"2019"`` or ``"v1.1"``.
        device, sensors: 2019 only: ``watch``/``phone`` and any of ``accel``, ``gyro`` (the
            channel order follows ``sensors``).
        window, step: window length and hop in samples (20 Hz, or ``resample_hz``).
        resample_hz: resample each piece onto an even grid at this rate (WISDM's sample
            spacing jitters around 50 ms); None keeps the recorded samples.
        max_gap_s: a larger gap (or a jump back) in the timestamps splits a recording.
        align_tolerance_ms: 2019 with two sensors: largest timestamp distance for a gyro
            sample to be paired with an accelerometer sample; unpaired samples are dropped.
        activities: keep only these activity codes (2019: letters A-S) or names (v1.1).
        nan_policy: a ``nan``/``inf`` sample: ``error`` names its file and line; ``drop``: no
            window covers it; ``interpolate``: filled linearly within its recording.
    """
    version = check_choice("dataset.version", str(version), VERSIONS)
    check_choice("dataset.nan_policy", nan_policy, NAN_POLICIES)
    spec = WindowSpec.check(window, step, resample_hz, max_gap_s)
    sensors = [str(s) for s in sensors]
    if version == "2019":
        check_choice("dataset.device", device, DEVICES)
        if not sensors or len(set(sensors)) != len(sensors):
            raise UserError(
                f"dataset.sensors={sensors!r} is invalid: expected a non-empty list of "
                f"distinct names from {', '.join(SENSORS)}"
            )
        for s in sensors:
            check_choice("dataset.sensors entry", s, SENSORS)
    workdir = Path(data_dir).expanduser() / "wisdm"
    ds, _ = resolve_root(root, workdir, url or URLS[version], sha256, progress, LAYOUTS[version])

    if version == "2019":
        files = _files_2019(ds, device, sensors)
        sources = [p for f in files.values() for p in f.values()]
        options: tuple = (device, sensors, align_tolerance_ms)
    else:
        sources = [find_file(ds, V11_FILE, "WISDM v1.1", _HINT_V11)]
        options = ()
    cache_path = None
    if cache:
        key = cache_key(sources, _CACHE_VERSION, version, *options)
        cache_path = workdir / "cache" / f"streams-{key}.npz"
    keys = ("signal", "ts", "label", "subject", "rec", "class_names", "class_codes", "notes")
    arrays = load_cache(cache_path, keys)
    cache_hit = arrays is not None
    if arrays is None:
        if version == "2019":
            tolerance_ns = int(round(align_tolerance_ms * 1e6))
            arrays, notes = _streams_2019(
                ds, device, sensors, tolerance_ns, threads=min(4, os.cpu_count() or 1)
            )
        else:
            arrays, notes = _streams_v11(sources[0])
        arrays["notes"] = np.asarray(json.dumps(notes))
        if cache_path is not None and not save_cache(cache_path, arrays):
            cache_path = None
    notes = json.loads(str(arrays["notes"]))
    if notes.get("non_finite_records") and nan_policy == "error":
        raise UserError(
            f"{notes['non_finite_first']}: a sample is not a finite number "
            f"({notes['non_finite_records']} such records); fix the file, or set "
            f"dataset.nan_policy=drop (no window covers them) or interpolate"
        )
    if notes.get("malformed_records"):
        log.warning(
            "WISDM: skipped %d malformed records (e.g. %s)",
            notes["malformed_records"],
            "; ".join(notes.get("malformed_examples", [])[:3]),
        )
    if notes.get("subjects_skipped_missing_sensor"):
        log.warning(
            "WISDM: subjects %s skipped: a file for one of sensors %s is missing",
            notes["subjects_skipped_missing_sensor"],
            sensors,
        )

    class_names = [str(c) for c in arrays["class_names"]]
    codes = [str(c) for c in arrays["class_codes"]]
    label = arrays["label"]
    if activities is not None:
        wanted = [str(a) for a in activities]
        bad = [a for a in wanted if a not in codes]
        if bad or not wanted:
            raise UserError(
                f"dataset.activities has {bad or wanted!r}: expected codes from {', '.join(codes)}"
            )
        remap = np.full(len(codes), -1, np.int64)
        for new, a in enumerate(wanted):
            remap[codes.index(a)] = new
        label = remap[label]
        class_names = [class_names[codes.index(a)] for a in wanted]

    rec = arrays["rec"]
    bounds = np.flatnonzero(np.diff(rec)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(rec)]])
    signal, ts, subject = arrays["signal"], arrays["ts"], arrays["subject"]
    recordings = [
        Recording(
            signal=signal[a:b],
            labels=label[a:b],
            subject=int(subject[a]),
            time_s=(ts[a:b] - ts[a]) / 1e9,
        )
        for a, b in zip(starts, stops, strict=True)
    ]
    if notes.get("non_finite_records"):
        recordings = [apply_nan_policy(r, nan_policy)[0] for r in recordings]
    w = spec.cut(recordings, SAMPLING_RATE_HZ)
    info = {
        "source": str(ds),
        "version": version,
        "cache": str(cache_path) if cache_path is not None else None,
        "cache_hit": cache_hit,
        "recordings": len(recordings),
        "samples": int(len(label)),
        "nan_policy": nan_policy,
        **notes,
    }
    if version == "2019":
        info.update(device=device, sensors=sensors, activity_codes=codes)
    sensor_names = sensors if version == "2019" else ["accel"]
    return w.to_data("wisdm", class_names, channel_names(sensor_names), info=info)
