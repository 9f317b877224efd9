from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_uci import CHANNELS, CLASS_NAMES, write_uci_dataset, zip_dataset

from har_bench.data import HARData, load_uci_har

REAL_UCI = Path(__file__).resolve().parents[1].parent / "shared/data/UCI_HAR"


def _check_matches(data: HARData, fx) -> None:
    assert data.X.dtype == np.float32 and data.X.shape == fx.X.shape
    np.testing.assert_array_equal(data.X, fx.X)  # exact: text round-trip loses nothing
    np.testing.assert_array_equal(data.y, fx.y)
    np.testing.assert_array_equal(data.subjects, fx.subjects)
    assert data.y.dtype == np.int64 and data.subjects.dtype == np.int64
    assert list(data.official_split) == ["train"] * fx.n_train + ["test"] * (len(fx.y) - fx.n_train)
    assert data.class_names == CLASS_NAMES
    assert data.channel_names == CHANNELS
    assert data.sampling_rate_hz == 50


def _touch_later(path: Path) -> None:
    # Guarantee a new mtime even on filesystems with coarse timestamps.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.mark.parametrize("gz", [False, True], ids=["txt", "gz"])
def test_loads_official_layout_exactly(tmp_path, gz):
    fx = write_uci_dataset(tmp_path / "src", gz=gz)
    data = load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"), progress=False)
    _check_matches(data, fx)
    assert data.info["source"] == str(fx.dataset_dir)
    assert data.info["cache_hit"] is False
    assert Path(data.info["cache"]).is_file()


@pytest.mark.parametrize("form", ["dataset_dir", "parent", "zip", "nested_zip"])
def test_root_forms(tmp_path, form):
    fx = write_uci_dataset(tmp_path / "src", gz=True)
    root = {
        "dataset_dir": fx.dataset_dir,
        "parent": fx.dataset_dir.parent,
        "zip": tmp_path / "uci.zip",
        "nested_zip": tmp_path / "uci_nested.zip",
    }[form]
    if form.endswith("zip"):
        zip_dataset(fx.dataset_dir, root, nested=form == "nested_zip")
    data_dir = tmp_path / "data"
    data = load_uci_har(str(root), str(data_dir), progress=False)
    _check_matches(data, fx)
    if form.endswith("zip"):
        extracted = data_dir / "uci_har" / "UCI HAR Dataset"
        assert data.info["source"] == str(extracted)
        assert data.info["archive"] == str(root)
        assert not list((data_dir / "uci_har").glob(".extract-*"))  # temp dir cleaned up
        # Second load: no re-extraction (stamp matches) and a cache hit.
        mtime = extracted.stat().st_mtime_ns
        again = load_uci_har(str(root), str(data_dir), progress=False)
        assert again.info["cache_hit"] is True
        assert extracted.stat().st_mtime_ns == mtime


def test_plain_file_wins_over_gz(tmp_path):
    fx = write_uci_dataset(tmp_path, gz=True)
    plain = fx.dataset_dir / "train" / "y_train.txt"
    plain.write_text("".join("6\n" for _ in range(fx.n_train)))
    data = load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"), cache=False)
    assert (data.y[: fx.n_train] == 5).all()


def test_cache_hit_and_invalidation(tmp_path):
    fx = write_uci_dataset(tmp_path / "src")
    data_dir = str(tmp_path / "data")
    first = load_uci_har(str(fx.dataset_dir), data_dir)
    assert first.info["cache_hit"] is False
    cache = Path(first.info["cache"])
    assert cache.parent == tmp_path / "data" / "uci_har" / "cache"
    assert cache.name.startswith("raw-") and cache.suffix == ".npz"

    second = load_uci_har(str(fx.dataset_dir), data_dir)
    assert second.info["cache_hit"] is True and second.info["cache"] == str(cache)
    _check_matches(second, fx)

    # Same size, different content: only the mtime tells the cache it is stale.
    y_file = fx.dataset_dir / "train" / "y_train.txt"
    lines = y_file.read_text().splitlines()
    lines[0] = "2" if lines[0] != "2" else "3"
    y_file.write_text("\n".join(lines) + "\n")
    _touch_later(y_file)
    third = load_uci_har(str(fx.dataset_dir), data_dir)
    assert third.info["cache_hit"] is False and third.info["cache"] != str(cache)
    assert third.y[0] == int(lines[0]) - 1


def test_cache_disabled_writes_nothing(tmp_path):
    fx = write_uci_dataset(tmp_path / "src")
    data = load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"), cache=False)
    assert data.info["cache"] is None and data.info["cache_hit"] is False
    assert not (tmp_path / "data" / "uci_har" / "cache").exists()


def test_corrupt_cache_is_a_miss(tmp_path):
    fx = write_uci_dataset(tmp_path / "src")
    first = load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"))
    Path(first.info["cache"]).write_bytes(b"not an npz")
    again = load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"))
    assert again.info["cache_hit"] is False
    _check_matches(again, fx)
    assert load_uci_har(str(fx.dataset_dir), str(tmp_path / "data")).info["cache_hit"]


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_uci_har(str(missing), str(tmp_path / "data"))


def test_root_file_not_zip(tmp_path):
    bogus = tmp_path / "data.zip"
    bogus.write_text("hello")
    with pytest.raises(ValueError, match="not a zip"):
        load_uci_har(str(bogus), str(tmp_path / "data"))


@pytest.mark.parametrize("gz", [False, True], ids=["txt", "gz"])
def test_missing_file_is_named(tmp_path, gz):
    fx = write_uci_dataset(tmp_path, gz=gz)
    name = "body_gyro_y_test.txt"
    folder = fx.dataset_dir / "test" / "Inertial Signals"
    (folder / (name + ".gz" if gz else name)).unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"))
    msg = str(err.value)
    assert f"'{name}' (or .gz/.xz/.bz2)" in msg and str(folder) in msg


def test_xz_files_are_read_too(tmp_path):
    import gzip
    import lzma

    fx = write_uci_dataset(tmp_path, gz=True)
    for gz in fx.dataset_dir.rglob("*.gz"):  # recompress every file as .xz
        gz.with_suffix(".xz").write_bytes(lzma.compress(gzip.decompress(gz.read_bytes())))
        gz.unlink()
    data = load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"), cache=False)
    np.testing.assert_array_equal(data.X, fx.X)


def test_wrong_layout_names_file_and_hint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_uci_har(str(tmp_path / "empty"), str(tmp_path / "data"))
    msg = str(err.value)
    assert "activity_labels.txt" in msg and "UCI HAR Dataset" in msg


def _rewrite_line(path: Path, lineno: int, transform) -> None:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    lines[lineno - 1] = transform(lines[lineno - 1])
    with opener(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("gz", [False, True], ids=["txt", "gz"])
@pytest.mark.parametrize(
    ("lineno", "transform", "expected"),
    [
        (3, lambda s: " ".join(s.split()[:-1]), "expected 128 values, found 127"),
        (1, lambda s: " ".join(s.split()[:-1]), "expected 128 values, found 127"),
        (4, lambda s: s + " 1.0", "expected 128 values, found 129"),
        (5, lambda s: " ".join([*s.split()[:7], "abc", *s.split()[8:]]), "'abc' is not a number"),
    ],
    ids=["short", "short-first", "long", "not-a-number"],
)
def test_bad_line_names_file_and_line(tmp_path, gz, lineno, transform, expected):
    fx = write_uci_dataset(tmp_path, gz=gz)
    name = "total_acc_z_train.txt" + (".gz" if gz else "")
    _rewrite_line(fx.dataset_dir / "train" / "Inertial Signals" / name, lineno, transform)
    with pytest.raises(ValueError) as err:
        load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"))
    msg = str(err.value)
    assert name in msg and f"line {lineno}:" in msg and expected in msg


def test_bad_label_line(tmp_path):
    fx = write_uci_dataset(tmp_path)
    _rewrite_line(fx.dataset_dir / "test" / "subject_test.txt", 2, lambda s: "x2")
    with pytest.raises(ValueError, match=r"subject_test\.txt, line 2: 'x2' is not an integer"):
        load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"))


def test_label_out_of_range(tmp_path):
    fx = write_uci_dataset(tmp_path)
    _rewrite_line(fx.dataset_dir / "train" / "y_train.txt", 3, lambda s: "7")
    with pytest.raises(ValueError, match=r"y_train\.txt, row 3: label 7 is outside 1\.\.6"):
        load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"))


def test_row_count_mismatch(tmp_path):
    fx = write_uci_dataset(tmp_path)
    path = fx.dataset_dir / "test" / "subject_test.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError) as err:
        load_uci_har(str(fx.dataset_dir), str(tmp_path / "data"))
    msg = str(err.value)
    assert "subject_test.txt: 5" in msg and "y_test.txt: 6" in msg
    assert "body_acc_x_test.txt: 6" in msg


@pytest.mark.skipif(not REAL_UCI.is_dir(), reason=f"real UCI-HAR not present at {REAL_UCI}")
def test_real_uci_har(tmp_path):
    data = load_uci_har(str(REAL_UCI), str(tmp_path), progress=False)
    assert data.X.shape == (10299, 9, 128) and data.X.dtype == np.float32
    train = data.official_split == "train"
    assert train.sum() == 7352 and (~train).sum() == 2947
    assert len(np.unique(data.subjects[train])) == 21
    assert len(np.unique(data.subjects[~train])) == 9
    assert not set(data.subjects[train]) & set(data.subjects[~train])
    assert np.bincount(data.y[train]).tolist() == [1226, 1073, 986, 1286, 1374, 1407]
    assert data.class_names[0] == "WALKING" and data.class_names[-1] == "LAYING"
    assert np.isfinite(data.X).all()

    t0 = time.perf_counter()
    again = load_uci_har(str(REAL_UCI), str(tmp_path), progress=False)
    elapsed = time.perf_counter() - t0
    assert again.info["cache_hit"] is True
    np.testing.assert_array_equal(again.X, data.X)
    assert elapsed < 1.0, f"cache-hit load took {elapsed:.2f} s"
