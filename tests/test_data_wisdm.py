"""WISDM loader on fixture files in the official layouts, download + cache, real data."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fixtures_data import (
    V11_MALFORMED,
    Server,
    write_text,
    write_wisdm_2019,
    write_wisdm_v11,
    zip_folder,
)
from helpers import SHARED_DATA

from har_bench.core.download import ChecksumError, sha256_file
from har_bench.data.splits import group_kfold_split, split_report
from har_bench.data.wisdm import load_wisdm, parse_wisdm_file

WISDM_REAL = SHARED_DATA / "WISDM_2019" / "wisdm-dataset"


def load(root, tmp_path, **kw):
    kw.setdefault("window", 10)
    kw.setdefault("step", 5)
    return load_wisdm(root, tmp_path / "data", progress=False, **kw)


def test_2019_watch_accel_gyro_aligned_by_timestamp(tmp_path):
    ds = write_wisdm_2019(tmp_path / "src", n=50)
    data = load(ds, tmp_path)
    assert data.class_names == ["walking", "jogging", "stairs", "sitting"]
    assert data.channel_names == [f"{s}_{a}" for s in ("accel", "gyro") for a in "xyz"]
    # Per (subject, activity): 49 aligned samples (gyro lacks its first) -> 8 windows.
    assert data.X.shape == (3 * 3 * 8, 6, 10)
    assert sorted(set(data.subjects.tolist())) == [1600, 1601, 1602]
    assert np.bincount(data.y, minlength=4).tolist() == [24, 24, 24, 0]
    # accel x = 1000k + i and gyro x = -1000k - 500 + i for the same sample i.
    expected = np.broadcast_to(2000 * data.y[:, None] + 500, (len(data.y), 10))
    np.testing.assert_allclose(data.X[:, 0] - data.X[:, 3], expected)
    assert data.start[:3].tolist() == [0, 5, 10] and data.info["samples_dropped_unaligned"] == 9
    assert data.info["malformed_records"] == 0 and data.info["cache_hit"] is False
    assert data.official_split is None
    assert split_report(data, group_kfold_split(data, n_splits=3, fold=0))["clean"]


def test_2019_sensor_choice_missing_files_and_cache(tmp_path):
    ds = write_wisdm_2019(tmp_path / "src", compress=None)
    (ds / "raw/watch/gyro/data_1602_gyro_watch.txt").unlink()
    gyro = load(ds, tmp_path, sensors=["gyro"])
    assert gyro.channel_names == ["gyro_x", "gyro_y", "gyro_z"]
    assert sorted(set(gyro.subjects.tolist())) == [1600, 1601]
    both = load(ds, tmp_path)
    assert both.info["subjects_skipped_missing_sensor"] == [1602]
    again = load(ds, tmp_path)
    assert again.info["cache_hit"] and np.array_equal(again.X, both.X)
    # Editing a source file invalidates the cache.
    f = ds / "raw/watch/accel/data_1600_accel_watch.txt"
    f.write_text(f.read_text().replace("1600,A,", "1600,B,", 3))
    assert load(ds, tmp_path).info["cache_hit"] is False


def test_2019_root_forms(tmp_path):
    ds = write_wisdm_2019(tmp_path / "src", n=20, compress="gz")
    ref = load(ds, tmp_path, cache=False)
    for root in (ds.parent, ds / "raw", zip_folder(ds, tmp_path / "wisdm-dataset.zip")):
        data = load(root, tmp_path, cache=False)
        np.testing.assert_array_equal(data.X, ref.X)


def test_2019_options_and_errors(tmp_path):
    ds = write_wisdm_2019(tmp_path / "src", n=30)
    sub = load(ds, tmp_path, activities=["C", "A"])
    assert sub.class_names == ["stairs", "walking"] and set(sub.y.tolist()) == {0, 1}
    resampled = load(ds, tmp_path, resample_hz=10.0, window=5, step=5)
    # 29 aligned samples at 20 Hz span 1.4 s -> 15 samples at 10 Hz -> 3 windows of 5.
    assert resampled.sampling_rate_hz == 10.0 and len(resampled.y) == 3 * 3 * 3
    with pytest.raises(ValueError, match="dataset.device='wrist'"):
        load(ds, tmp_path, device="wrist")
    with pytest.raises(ValueError, match="dataset.sensors entry='mag'"):
        load(ds, tmp_path, sensors=["accel", "mag"])
    with pytest.raises(FileNotFoundError, match="raw/phone/accel"):
        load(ds, tmp_path, device="phone")
    with pytest.raises(ValueError, match=r"dataset.activities has \['N'\]"):
        load(ds, tmp_path, activities=["N"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope", tmp_path)
    with pytest.raises(ValueError, match="no window of 500 samples"):
        load(ds, tmp_path, window=500)


def test_v11_malformed_lines_skipped_and_counted(tmp_path, caplog):
    path, good = write_wisdm_v11(tmp_path / "src", n=40)
    parsed = parse_wisdm_file(path)
    assert parsed.malformed == len(V11_MALFORMED) and len(parsed.ts) == good
    data = load(path.parent, tmp_path, version="v1.1")
    assert data.info["malformed_records"] == len(V11_MALFORMED)
    assert "WISDM_ar_v1.1_raw.txt:6" in data.info["malformed_examples"][0]
    assert "skipped 4 malformed records" in caplog.text
    report = split_report(data, group_kfold_split(data, n_splits=2, val_fraction=0))
    assert report["dataset_info"]["malformed_records"] == 4
    assert data.class_names[:2] == ["Walking", "Jogging"] and data.channel_names[0] == "accel_x"
    assert sorted(set(data.subjects.tolist())) == [33, 34]
    # Each of the 4 (user, activity) blocks: 40 samples -> 7 windows of 10 every 5.
    assert len(data.y) == 4 * 7 and data.info["recordings"] == 4
    for root in (path, tmp_path / "src"):  # the file itself, the folder holding its folder
        assert len(load(root, tmp_path, version="v1.1", cache=False).y) == len(data.y)


def test_v11_from_tar_gz(tmp_path):
    import tarfile

    path, _ = write_wisdm_v11(tmp_path / "src")
    archive = tmp_path / "WISDM_ar_latest.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(path.parent, arcname="WISDM_ar_v1.1")
    packed = load(archive, tmp_path / "packed", version="v1.1")
    plain = load(path, tmp_path / "plain", version="v1.1", cache=False)
    # The archive holds the very file: the same windows, labels and subjects, nothing lost.
    assert len(packed.y) == 4 * 7 and packed.info["malformed_records"] == len(V11_MALFORMED)
    np.testing.assert_array_equal(packed.X, plain.X)
    np.testing.assert_array_equal(packed.y, plain.y)
    np.testing.assert_array_equal(packed.subjects, plain.subjects)
    assert packed.class_names == plain.class_names
    assert packed.channel_names == plain.channel_names
    assert sorted(set(packed.subjects.tolist())) == [33, 34]


def test_download_checksum_and_cache_on_local_server(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    ds = write_wisdm_2019(tmp_path / "src", n=20)
    archive = zip_folder(ds, site / "wisdm.zip")
    server = Server(site)
    try:
        with pytest.raises(ChecksumError):
            load(None, tmp_path / "bad", url=server.url("wisdm.zip"), sha256="0" * 64)
        server.requests.clear()
        sha = sha256_file(archive)
        first = load(None, tmp_path, url=server.url("wisdm.zip"), sha256=sha)
        assert server.requests == ["/wisdm.zip"] and not first.info["cache_hit"]
        second = load(None, tmp_path, url=server.url("wisdm.zip"), sha256=sha)
        assert server.requests == ["/wisdm.zip"] and second.info["cache_hit"]
        np.testing.assert_array_equal(first.X, second.X)
    finally:
        server.close()


def test_corrupt_compressed_file_names_it(tmp_path):
    ds = write_wisdm_2019(tmp_path / "src", n=20)
    bad = ds / "raw/watch/accel/data_1601_accel_watch.txt.xz"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(ValueError, match="data_1601_accel_watch.txt.xz"):
        load(ds, tmp_path)


@pytest.mark.skipif(not WISDM_REAL.is_dir(), reason="../shared/data/WISDM_2019 not present")
def test_real_wisdm_file_parses_cleanly():
    f = WISDM_REAL / "raw/watch/accel/data_1600_accel_watch.txt.xz"
    parsed = parse_wisdm_file(f)
    assert parsed.malformed == 0 and len(parsed.ts) == 65462
    assert set(parsed.subject.tolist()) == {1600} and len(set(parsed.activity.tolist())) == 18


@pytest.mark.slow
@pytest.mark.skipif(not WISDM_REAL.is_dir(), reason="../shared/data/WISDM_2019 not present")
def test_real_wisdm_2019_watch(tmp_path):
    t0 = time.perf_counter()
    data = load_wisdm(WISDM_REAL, tmp_path, device="watch", progress=False)
    parse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = load_wisdm(WISDM_REAL, tmp_path, device="watch", progress=False)
    assert cached.info["cache_hit"] and time.perf_counter() - t0 < parse_s
    assert data.X.shape[1:] == (6, 200) and data.num_classes == 18
    # 46 subjects have accel, 47 gyro (1637 has gyro only): 46 have both.
    assert len(set(data.subjects.tolist())) == 46
    assert data.info["malformed_records"] == 0
    counts = np.bincount(data.y, minlength=18)
    assert counts.min() > 1400  # ~3 min per activity per subject
    for fold in range(5):
        assert split_report(data, group_kfold_split(data, fold=fold))["clean"]


def test_write_text_helper_roundtrip(tmp_path):
    # The fixture writer's compressed files must read back through the loader's opener.
    from har_bench.data._io import read_text

    for c in (None, "gz", "xz"):
        assert read_text(write_text(tmp_path / f"a{c}.txt", "x\n", c)) == "x\n"
