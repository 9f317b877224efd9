"""UEA/UCR multivariate archive datasets from their ``.ts`` files.

``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts`` (Bagnall et al., arXiv:1811.00075): header tags
(``@problemName``, ``@univariate``, ``@dimensions``, ``@equalLength``, ``@seriesLength``,
``@classLabel true <labels>``, ``@missing``, ``@timeStamps``), then after ``@data`` one case per
line: the dimensions separated by ``:``, values by ``,``, the class label last; ``?`` (or
``NaN``) marks a missing value, filled by linear interpolation; ``inf`` is refused.

The archive's TRAIN/TEST files are the official split. The archive records no subjects, so
**every case gets its own subject id** (train cases 0..n_train-1, test cases after them):
validation is then a random share of the training *cases*, and the subject check of the split
report only proves that no case is on two sides. Variable-length series are brought to one
length by ``variable_length``: ``pad`` (zeros after the end) or ``resample`` (linear
interpolation over the series' own span).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from har_bench.core.errors import UserError, check_memory, check_optional_int
from har_bench.data._io import Layout, check_choice, find_file, read_text, resolve_root
from har_bench.data.base import HARData
from har_bench.data.windowing import interpolate_nans

DEFAULT_URL = "https://www.timeseriesclassification.com/aeon-toolkit/{name}.zip"
MODES = ("pad", "resample")


class TsFile:
    """The parsed content of one ``.ts`` file."""

    def __init__(self, series: list[list[np.ndarray]], labels: list[str], header: dict) -> None:
        self.series = series  # per case, per dimension, 1-D float arrays
        self.labels = labels
        self.header = header

    @property
    def class_labels(self) -> list[str] | None:
        return self.header.get("classlabel")


def _bool_tag(value: str, path: Path, lineno: int, tag: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise UserError(f"{path}, line {lineno}: @{tag} must be true or false, got {value!r}")
    return v == "true"


def parse_ts(path: Path) -> TsFile:
    """Parse a classification ``.ts`` file; errors name the file and line."""
    header: dict = {}
    series: list[list[np.ndarray]] = []
    labels: list[str] = []
    in_data = False
    for lineno, raw in enumerate(read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise UserError(
                    f"{path}, line {lineno}: expected a @tag before @data, got {line[:60]!r}"
                )
            tag, _, value = line[1:].partition(" ")
            tag = tag.lower()
            if tag == "data":
                in_data = True
            elif tag == "classlabel":
                tokens = value.split()
                if not tokens or not _bool_tag(tokens[0], path, lineno, tag):
                    raise UserError(
                        f"{path}, line {lineno}: @classLabel is not 'true <labels>': this is "
                        f"not a classification problem"
                    )
                header[tag] = tokens[1:]
            elif tag in ("timestamps", "univariate", "equallength", "missing"):
                header[tag] = _bool_tag(value, path, lineno, tag)
            elif tag in ("dimensions", "serieslength"):
                try:
                    header[tag] = int(value)
                except ValueError:
                    raise UserError(
                        f"{path}, line {lineno}: @{tag} must be an integer, got {value!r}"
                    ) from None
            else:
                header[tag] = value.strip()
            continue
        if header.get("timestamps"):
            raise UserError(f"{path}: @timeStamps true series are not supported")
        fields = line.split(":")
        if len(fields) < 2:
            raise UserError(f"{path}, line {lineno}: expected '<dim>:...:<label>', got no ':'")
        *dims, label = fields
        case = []
        for d, text in enumerate(dims):
            try:
                values = [np.nan if t.strip() == "?" else float(t) for t in text.split(",")]
            except ValueError:
                bad = next(t for t in text.split(",") if not _is_number(t))
                raise UserError(
                    f"{path}, line {lineno}, dimension {d}: {bad!r} is not a number"
                ) from None
            arr = np.asarray(values, dtype=np.float64)
            if np.isinf(arr).any():
                # NaN is a missing value (as "?"), filled later; inf is a broken sample.
                bad = text.split(",")[int(np.flatnonzero(np.isinf(arr))[0])].strip()
                raise UserError(
                    f"{path}, line {lineno}, dimension {d}: {bad!r} is not a finite number"
                )
            case.append(arr)
        if series and len(case) != len(series[0]):
            raise UserError(
                f"{path}, line {lineno}: {len(case)} dimensions, earlier cases have "
                f"{len(series[0])}"
            )
        if "dimensions" in header and len(case) != header["dimensions"]:
            raise UserError(
                f"{path}, line {lineno}: {len(case)} dimensions, @dimensions says "
                f"{header['dimensions']}"
            )
        classes = header.get("classlabel")
        label = label.strip()
        if classes is not None and label not in classes:
            raise UserError(
                f"{path}, line {lineno}: class {label!r} is not in @classLabel {classes}"
            )
        series.append(case)
        labels.append(label)
    if not in_data:
        raise UserError(f"{path}: no @data line; is this a .ts file?")
    if not series:
        raise UserError(f"{path}: no cases after @data")
    return TsFile(series, labels, header)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return token.strip() == "?"
    return True


def _to_length(x: np.ndarray, length: int, mode: str) -> np.ndarray:
    if len(x) == length:
        return x
    if mode == "resample":
        if len(x) == 1:
            return np.full(length, x[0])
        return np.interp(np.linspace(0, len(x) - 1, length), np.arange(len(x)), x)
    out = np.zeros(length, dtype=x.dtype)
    out[: min(length, len(x))] = x[:length]
    return out


def layout(name: str) -> Layout:
    """Where ``name``'s two ``.ts`` files sit: directly in the root or in ``<name>/``; an
    archive holds them at any depth, beside other formats that are not extracted."""
    files = (f"{name}_TRAIN.ts", f"{name}_TEST.ts")
    hint = (
        f"dataset.root must be a folder holding {files[0]} and {files[1]} (directly or in "
        f"{name}/), or the dataset's zip (or null to download it)"
    )
    return Layout("UEA", name, files[0], f"{name}.zip", hint, files=files)


def load_uea(
    name: str,
    root: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str],
    variable_length: str = "pad",
    length: int | None = None,
    url: str = DEFAULT_URL,
    sha256: str | None = None,
    progress: bool = True,
) -> HARData:
    """Load ``<name>_TRAIN.ts`` + ``<name>_TEST.ts`` as ``HARData`` (X: [N, dims, length]).

    TRAIN/TEST is the official split. The archive records no subjects: every case is its own
    subject id, so validation is a random share of the training cases.

    Args:
        name: the archive's dataset name, e.g. ``BasicMotions``.
        root: local copy (folder or zip), or None to download ``url`` (``{name}`` filled in).
        data_dir: writable folder for downloads (``uea/``).
        variable_length: ``pad`` (zeros after the end) or ``resample`` (linear interpolation),
            applied to series shorter or longer than ``length``.
        length: target length; None = the longest series of the TRAIN file (longer test series
            are cut or resampled to it).
    """
    if not isinstance(name, str) or not name or "/" in name or name != name.strip():
        raise UserError(f"dataset.name={name!r} is invalid: expected a UEA dataset name")
    mode = check_choice("dataset.variable_length", variable_length, MODES)
    length = check_optional_int("dataset.length", length)
    workdir = Path(data_dir).expanduser() / "uea"
    # One URL template serves every dataset: the download is named after the dataset.
    folder, _ = resolve_root(
        root, workdir, url.format(name=name), sha256, progress, layout(name), f"{name}.zip"
    )
    parts = {
        split: parse_ts(find_file(folder, f"{name}_{split.upper()}.ts", "UEA"))
        for split in ("train", "test")
    }
    declared = parts["train"].class_labels or parts["test"].class_labels
    class_names = (
        list(declared)
        if declared
        else sorted(set(parts["train"].labels) | set(parts["test"].labels))
    )
    unknown = sorted(set(parts["test"].labels) - set(class_names))
    if unknown:
        raise UserError(
            f"{name}_TEST.ts has classes {unknown} that the train file does not declare"
        )
    dims = {len(p.series[0]) for p in parts.values()}
    if len(dims) != 1:
        raise UserError(f"UEA {name}: TRAIN and TEST have different numbers of dimensions {dims}")
    lengths = [len(d) for p in parts.values() for case in p.series for d in case]
    # The target length comes from TRAIN only: nothing about the test set may shape the input.
    train_lengths = [len(d) for case in parts["train"].series for d in case]
    target = int(length) if length is not None else max(train_lengths)

    n_cases = sum(len(p.labels) for p in parts.values())
    # The float64 cases and the float32 array they become.
    check_memory(
        f"UEA {name}: {n_cases:,} cases of {len(parts['train'].series[0])} x {target}",
        12.0 * n_cases * len(parts["train"].series[0]) * target,
        "lower dataset.length",
    )
    xs, ys, missing = [], [], 0
    for p in parts.values():
        for case, label in zip(p.series, p.labels, strict=True):
            channels = []
            for d in case:
                missing += interpolate_nans(d)
                channels.append(_to_length(d, target, mode))
            xs.append(np.stack(channels))
            ys.append(class_names.index(label))
    n_train = len(parts["train"].labels)
    n = len(ys)
    n_dims = dims.pop()
    return HARData(
        name="uea",
        X=np.asarray(xs, dtype=np.float32).reshape(n, n_dims, target),
        y=np.asarray(ys, dtype=np.int64),
        subjects=np.arange(n, dtype=np.int64),  # one id per case: the archive has no subjects
        class_names=class_names,
        channel_names=[f"dim_{d}" for d in range(n_dims)],
        official_split=np.repeat(np.array(["train", "test"]), [n_train, n - n_train]),
        sampling_rate_hz=None,
        recording=np.arange(n, dtype=np.int64),
        start=np.zeros(n, dtype=np.int64),
        info={
            "source": str(folder),
            "problem": name,
            "n_train": n_train,
            "n_test": n - n_train,
            "length": target,
            "variable_length": mode,
            "min_length": int(min(lengths)),
            "max_length": int(max(lengths)),
            "missing_values_filled": missing,
            "subjects": "none in the archive: each case is its own subject id",
        },
    )
