"""PAMAP2 and HAPT loaders on fixture files written in their official layouts."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_data import write_text

from har_bench.data.hapt import load_hapt
from har_bench.data.pamap2 import load_pamap2
from har_bench.data.splits import group_kfold_split, official_split, split_report


def write_pamap2(base, subjects=(101, 102, 103), n=600, compress=None):
    """Protocol/subject10N.dat: activity 0 for 100 samples, then 1 (lying), 0, 4 (walking).
    Column 4 (hand acc16 x) = sample index, with NaN holes; heart rate mostly NaN."""
    proto = base / "PAMAP2_Dataset" / "Protocol"
    for s in subjects:
        act = np.r_[np.zeros(100), np.ones(200), np.zeros(50), np.full(n - 350, 4)]
        rows = np.zeros((n, 54))
        rows[:, 0] = 5.0 + np.arange(n) / 100
        rows[:, 1] = act
        rows[:, 2] = np.nan
        rows[::9, 2] = 100 + s
        rows[:, 3:] = s
        rows[:, 4] = np.arange(n)
        rows[[150, 151, 152, 400], 4] = np.nan  # dropped packets
        rows[:, 3 + 17 + 7] = -1.0  # chest gyro x
        text = "\n".join(" ".join("NaN" if np.isnan(v) else f"{v:g}" for v in r) for r in rows)
        write_text(proto / f"subject{s}.dat", text + "\n", compress)
    return base / "PAMAP2_Dataset"


def test_pamap2_windows_drop_activity_0_and_interpolate(tmp_path):
    ds = write_pamap2(tmp_path / "src", compress="gz")
    data = load_pamap2(ds, tmp_path / "d", window=100, step=50)
    assert data.class_names[0] == "lying" and data.class_names[3] == "walking"
    assert len(data.class_names) == 12
    assert data.channel_names[:3] == ["hand_acc16_x", "hand_acc16_y", "hand_acc16_z"]
    assert len(data.channel_names) == 27
    # Per subject: lying run of 200 -> 3 windows; walking run of 250 -> 4 windows.
    assert data.X.shape == (3 * 7, 27, 100)
    assert np.bincount(data.y, minlength=12)[[0, 3]].tolist() == [9, 12]
    assert not np.isnan(data.X).any() and data.info["nan_values_interpolated"] == 3 * 4
    # hand acc16 x is the sample index, NaNs interpolated back to it exactly.
    np.testing.assert_allclose(data.X[:, 0, :], data.start[:, None] + np.arange(100))
    assert data.start[:3].tolist() == [100, 150, 200]
    assert split_report(data, group_kfold_split(data, n_splits=3, fold=1))["clean"]


def test_pamap2_channel_choice_downsampling_and_cache(tmp_path):
    ds = write_pamap2(tmp_path / "src")
    data = load_pamap2(
        ds.parent, tmp_path / "d", imus=["chest"], sensors=["gyro"], heart_rate=True,
        activities=[4], window=50, step=50, resample_hz=50,
    )  # fmt: skip
    assert data.channel_names == ["heart_rate", "chest_gyro_x", "chest_gyro_y", "chest_gyro_z"]
    assert data.class_names == ["walking"] and data.sampling_rate_hz == 50
    assert data.X.shape[0] == 3 * 2  # 250 samples at 100 Hz -> 125 at 50 Hz -> 2 windows
    np.testing.assert_allclose(data.X[:, 1], -1.0)
    again = load_pamap2(ds.parent, tmp_path / "d", imus=["chest"], sensors=["gyro"],
                        heart_rate=True, activities=[4], window=50, step=50, resample_hz=50)  # fmt: skip
    assert again.info["cache_hit"] and np.array_equal(again.X, data.X)
    with pytest.raises(ValueError, match="dataset.imus entry='wrist'"):
        load_pamap2(ds, tmp_path / "d", imus=["wrist"])
    with pytest.raises(ValueError, match=r"unknown ids \[8\]"):
        load_pamap2(ds, tmp_path / "d", activities=[8])


def test_pamap2_bad_row_names_file_and_line(tmp_path):
    ds = write_pamap2(tmp_path / "src", subjects=(101,))
    f = ds / "Protocol" / "subject101.dat"
    lines = f.read_text().splitlines()
    lines[6] = " ".join(lines[6].split()[:50])
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"subject101.dat, line 7: expected 54 values, found 50"):
        load_pamap2(ds, tmp_path / "d", cache=False)
    with pytest.raises(FileNotFoundError, match="Protocol"):
        load_pamap2(tmp_path, tmp_path / "d")


def write_hapt(base, users=(1, 2, 3, 4), n=400):
    raw = base / "HAPT" / "RawData"
    labels = []
    for e, u in enumerate(users, start=1):
        t = np.arange(n)
        acc = np.stack([t, t * 0 + u, -t], axis=1)
        write_text(
            raw / f"acc_exp{e:02d}_user{u:02d}.txt",
            "\n".join(" ".join(f"{v:.8e}" for v in r) for r in acc) + "\n",
        )
        write_text(
            raw / f"gyro_exp{e:02d}_user{u:02d}.txt",
            "\n".join(" ".join(f"{v:.8e}" for v in r) for r in -acc) + "\n",
            "gz",
        )
        # walking 11..140, stand->sit transition 141..170, sitting 171..330 (1-based, inclusive)
        labels += [f"{e} {u} 1 11 140", f"{e} {u} 7 141 170", f"{e} {u} 4 171 330"]
    write_text(raw / "labels.txt", "\n".join(labels) + "\n")
    return base / "HAPT"


def test_hapt_basic_and_transitions(tmp_path):
    ds = write_hapt(tmp_path)
    data = load_hapt(ds, tmp_path / "d", window=64, step=32)
    assert data.class_names[:2] == ["WALKING", "WALKING_UPSTAIRS"] and data.num_classes == 6
    assert data.channel_names == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    # walking 130 samples -> 3 windows; sitting 160 -> 4; the 30-sample transition dropped.
    assert np.bincount(data.y, minlength=6).tolist() == [12, 0, 0, 16, 0, 0]
    assert data.start[:3].tolist() == [10, 42, 74]
    np.testing.assert_allclose(data.X[0, 0], np.arange(10, 74))
    np.testing.assert_allclose(data.X[:, 3], -data.X[:, 0])
    assert set(data.subjects[data.official_split == "test"].tolist()) == {2, 4}
    assert split_report(data, official_split(data, val_fraction=0.5))["clean"]
    all12 = load_hapt(ds / "RawData", tmp_path / "d", transitions=True, window=30, step=30)
    assert all12.num_classes == 12 and 6 in all12.y.tolist()


def test_hapt_from_its_zip(tmp_path):
    from fixtures_data import zip_folder

    ds = write_hapt(tmp_path / "src")
    # The official zip holds RawData/ at its top level, not inside a dataset folder.
    archive = zip_folder(ds / "RawData", tmp_path / "hapt.zip")
    data = load_hapt(archive, tmp_path / "d", window=64, step=32)
    np.testing.assert_array_equal(data.X, load_hapt(ds, tmp_path / "d", window=64, step=32).X)


def test_hapt_errors(tmp_path):
    ds = write_hapt(tmp_path)
    (ds / "RawData" / "labels.txt").write_text("1 1 13 1 10\n")
    with pytest.raises(ValueError, match="labels.txt, row 1: expected activity 1..12"):
        load_hapt(ds, tmp_path / "d")
    (ds / "RawData" / "labels.txt").write_text("1 1 1 1 9999\n")
    with pytest.raises(ValueError, match="ends after its 400 samples"):
        load_hapt(ds, tmp_path / "d")
    (ds / "RawData" / "labels.txt").write_text("1 1 1 1 100\n")
    (ds / "RawData" / "gyro_exp02_user02.txt.gz").unlink()
    with pytest.raises(FileNotFoundError, match="gyro_exp02_user02.txt"):
        load_hapt(ds, tmp_path / "d")
