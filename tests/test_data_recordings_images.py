"""The bring-your-own `recordings` loader, UCI-HAR's 561 features, and the image datasets."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from har_bench.data.base import xyz_triples
from har_bench.data.images import load_cifar10, load_image_folder
from har_bench.data.recordings import load_recordings
from har_bench.data.splits import group_kfold_split, official_split, split_report
from har_bench.data.uci_har import load_uci_har


def recordings_frame(subjects=(7, 8, 9), n=100, rate=50.0) -> pd.DataFrame:
    rows = []
    for s in subjects:
        for i in range(n):
            label = "walk" if i < 60 else "sit"
            rows.append((s, label, i / rate, float(i), float(s), -float(i)))
    return pd.DataFrame(rows, columns=["subject", "label", "time", "ax", "ay", "az"])


def test_recordings_csv_windows_and_labels(tmp_path):
    df = recordings_frame()
    df.loc[df.index[150], "time"] += 5.0  # a gap in subject 8's stream: windows restart
    df.to_csv(tmp_path / "rec.csv", index=False)
    data = load_recordings(tmp_path / "rec.csv", channels=["ax", "ay", "az"], window=20, step=10)
    assert data.class_names == ["sit", "walk"] and data.channel_names == ["ax", "ay", "az"]
    assert data.sampling_rate_hz == pytest.approx(50.0)
    # Per subject: walk 60 samples -> 5 windows, sit 40 -> 3; subject 8's walk run is cut at
    # its sample 50 by the gap -> 4 + 0 windows.
    assert len(data.y) == 8 + 8 + 7
    assert np.all(data.X[:, 1, 0] == data.subjects)
    assert split_report(data, group_kfold_split(data, n_splits=3, fold=0))["clean"]


def test_recordings_folder_classes_split_column_and_errors(tmp_path):
    folder = tmp_path / "recs"
    folder.mkdir()
    a, b = recordings_frame((1, 2)), recordings_frame((3,))
    a["part"], b["part"] = "train", "test"
    a.to_csv(folder / "a.csv", index=False)
    b.to_csv(folder / "b.csv", index=False)
    data = load_recordings(
        folder, channels=["ax"], classes=["walk"], split_column="part", window=30, step=30
    )
    assert data.class_names == ["walk"] and set(data.y.tolist()) == {0}
    assert set(data.subjects[data.official_split == "test"].tolist()) == {3}
    assert split_report(data, official_split(data, val_fraction=0.5))["clean"]
    with pytest.raises(ValueError, match=r"has no column\(s\) \['gx'\]"):
        load_recordings(folder, channels=["gx"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_recordings(tmp_path / "none.csv", channels=["ax"])
    no_time = load_recordings(
        folder, channels=["ax"], time_column=None, sampling_rate_hz=50, window=30, step=30
    )
    assert len(no_time.y) == len(load_recordings(folder, channels=["ax"], window=30, step=30).y)


def test_recordings_parquet_same_as_csv(tmp_path):
    pytest.importorskip("pyarrow")
    df = recordings_frame()
    df.to_csv(tmp_path / "r.csv", index=False)
    df.to_parquet(tmp_path / "r.parquet")
    csv = load_recordings(tmp_path / "r.csv", channels=["ax", "az"], window=20, step=10)
    pq = load_recordings(tmp_path / "r.parquet", channels=["ax", "az"], window=20, step=10)
    np.testing.assert_array_equal(csv.X, pq.X)
    np.testing.assert_array_equal(csv.y, pq.y)


def test_recordings_parquet_message_without_pyarrow(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow":
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    (tmp_path / "r.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ValueError, match="pip install pyarrow"):
        load_recordings(tmp_path / "r.parquet", channels=["ax"])


def write_uci_features(base, n_train=8, n_test=4):
    ds = base / "UCI HAR Dataset"
    rng = np.random.default_rng(0)
    (ds / "train").mkdir(parents=True)
    (ds / "test").mkdir()
    (ds / "activity_labels.txt").write_text(
        "1 WALKING\n2 WALKING_UPSTAIRS\n3 WALKING_DOWNSTAIRS\n4 SITTING\n5 STANDING\n6 LAYING\n"
    )
    # Per-axis names as in the real features.txt (tBodyAcc-mean()-X, ...).
    (ds / "features.txt").write_text(
        "".join(f"{i} f{(i - 1) // 3}-mean()-{'XYZ'[(i - 1) % 3]}\n" for i in range(1, 562))
    )
    X = {}
    for split, n, subj in (("train", n_train, 1), ("test", n_test, 2)):
        X[split] = rng.uniform(-1, 1, (n, 561)).astype(np.float32)
        np.savetxt(ds / split / f"X_{split}.txt", X[split], fmt="%.7e")
        (ds / split / f"y_{split}.txt").write_text("".join(f"{i % 6 + 1}\n" for i in range(n)))
        (ds / split / f"subject_{split}.txt").write_text(f"{subj}\n" * n)
    return ds, X


def test_uci_har_561_features(tmp_path):
    ds, X = write_uci_features(tmp_path)
    data = load_uci_har(ds, tmp_path / "d", features=True)
    assert data.X.shape == (12, 561, 1) and data.channel_names[0] == "f0-mean()-X"
    # Statistics per axis are not a vector: no rotation group, though the names look like one.
    assert xyz_triples(data.channel_names) and data.channel_groups == []
    np.testing.assert_allclose(data.X[:8, :, 0], X["train"], rtol=1e-6)
    assert data.official_split.tolist() == ["train"] * 8 + ["test"] * 4
    assert data.y[:7].tolist() == [0, 1, 2, 3, 4, 5, 0]
    (ds / "test" / "X_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="X_test.txt"):
        load_uci_har(ds, tmp_path / "d", features=True)


def write_cifar(base, n=6):
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]  # fmt: skip
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_cifar10_official_batches(tmp_path):
    folder = write_cifar(tmp_path)
    data = load_cifar10(tmp_path, tmp_path / "d")
    assert data.X.shape == (36, 3, 32, 32) and data.X.dtype == np.uint8
    assert data.image.size == (32, 32)
    assert data.class_names[0] == "airplane" and data.official_split.tolist().count("test") == 6
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)[b"data"][0].reshape(3, 32, 32)
    np.testing.assert_array_equal(data.X[0], first)
    small = load_cifar10(folder, tmp_path / "d", limit=2, size=16, mean=[0.5] * 3, std=[0.5] * 3)
    # Kept at the stored size: the size is the network's, applied per batch.
    assert small.X.shape == (4, 3, 32, 32) and small.image.size == (16, 16)
    assert small.image.mean == (0.5,) * 3
    assert split_report(small, official_split(small, val_fraction=0.5))["clean"]
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(folder, tmp_path / "d")


def test_image_folder_classes_groups_and_split(tmp_path):
    from PIL import Image

    for side in ("train", "test"):
        for cls, color in (("healthy", (0, 255, 0)), ("monkeypox", (255, 0, 0))):
            d = tmp_path / "imgs" / side / cls
            d.mkdir(parents=True)
            for i in range(3):
                patient = f"P{i + (0 if side == 'train' else 10)}"
                Image.new("RGB", (20, 10), color).save(d / f"{patient}_{cls}_{i}.png")
    data = load_image_folder(tmp_path / "imgs", size=[8, 12], group_regex=r"^(P\d+)_")
    # All 10 x 20 as stored: uint8 at that size; the network's 8 x 12 is applied per batch.
    assert data.X.shape == (12, 3, 10, 20) and data.class_names == ["healthy", "monkeypox"]
    assert data.X.dtype == np.uint8 and data.image.size == (8, 12)
    assert data.X[0, 1].mean() == 255 and data.X[0, 0].mean() == 0
    assert data.info["groups"] == 6  # P0-P2 (train) and P10-P12 (test), both classes each
    report = split_report(data, official_split(data, val_fraction=0.34))
    assert report["clean"]
    flat = load_image_folder(tmp_path / "imgs" / "train", size=8)
    assert flat.official_split is None and len(set(flat.subjects.tolist())) == 6
    with pytest.raises(ValueError, match="does not match"):
        load_image_folder(tmp_path / "imgs", size=8, group_regex=r"^(Q\d+)")
