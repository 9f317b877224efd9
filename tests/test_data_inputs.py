"""Hostile and careless data inputs: pickled code in data files, non-finite samples, sizes that
cannot fit, non-finite settings. Each is refused with one line before anything runs."""

from __future__ import annotations

import builtins
import pickle
import tarfile

import numpy as np
import pandas as pd
import pytest
from cli_helpers import SMALL, assert_one_line_error, in_process_cli
from fixtures_data import ts_text, write_wisdm_2019
from fixtures_uci import write_uci_dataset

from har_bench.core.errors import UserError
from har_bench.data.base import HARData
from har_bench.data.hapt import load_hapt
from har_bench.data.images import load_cifar10
from har_bench.data.pamap2 import load_pamap2
from har_bench.data.recordings import load_recordings
from har_bench.data.uci_har import load_uci_har
from har_bench.data.uea import load_uea
from har_bench.data.wisdm import load_wisdm

LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
               b"ship", b"truck"]  # fmt: skip


def write_cifar(base, n=4, protocol=2):
    """The official layout; the batches pickled as NumPy writes them (array reconstruction
    globals), which the restricted loader must still accept."""
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": LABEL_NAMES, b"num_vis": 3072}, f, protocol=protocol)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    return folder


class Payload:
    """Unpickling this writes ``marker``: what a crafted data file could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",))


def plant_payload(folder, marker, name="data_batch_1"):
    with open(folder / name, "wb") as f:
        pickle.dump({b"data": Payload(marker), b"labels": [0]}, f, protocol=2)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_as_numpy_pickles_them_load(tmp_path, protocol):
    folder = write_cifar(tmp_path, protocol=protocol)
    data = load_cifar10(folder, tmp_path / "d")
    assert data.X.shape == (24, 3, 32, 32) and data.class_names[1] == "automobile"
    if protocol == 2:
        # The official files were written by NumPy 1 under Python 2: numpy.core, not
        # numpy._core (protocol 2 names globals as text lines, so the bytes can be swapped).
        raw = (folder / "test_batch").read_bytes()
        assert b"numpy._core.multiarray\n_reconstruct" in raw
        (folder / "test_batch").write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
        assert load_cifar10(folder, tmp_path / "d").X.shape == (24, 3, 32, 32)


@pytest.mark.parametrize("name", ["data_batch_1", "batches.meta"])
def test_cifar_pickle_payload_never_runs_from_a_folder(tmp_path, name):
    folder = write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    plant_payload(folder, marker, name)
    with pytest.raises(UserError, match=name) as e:
        load_cifar10(folder, tmp_path / "d")
    assert not marker.exists()
    assert "builtin__.exec" in str(e.value) and "\n" not in str(e.value)


def test_cifar_pickle_payload_never_runs_from_the_archive_through_the_cli(
    tmp_path, monkeypatch, capsys
):
    folder = write_cifar(tmp_path / "src")
    marker = tmp_path / "pwned"
    plant_payload(folder, marker)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(*SMALL, "dataset=cifar10", f"dataset.root={archive}", "model.layout=2d_image")
    assert not marker.exists()
    assert_one_line_error(code, err, "data_batch_1", "refusing")


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optimizer.lr=inf", "optimizer.lr=inf"),
        ("optimizer.weight_decay=nan", "optimizer.weight_decay=nan"),
        ("trainer.grad_clip_norm=-inf", "trainer.grad_clip_norm=-inf"),
        ("trainer.label_smoothing=nan", "trainer.label_smoothing=nan"),
    ],
)
def test_non_finite_settings_are_refused_before_anything_runs(
    tmp_path, monkeypatch, capsys, override, needle
):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(*SMALL, override, "hydra.run.dir=run")
    line = assert_one_line_error(code, err, needle, "finite")
    assert "diverged" not in line


def test_check_finite_settings_names_nested_keys():
    from har_bench.core.errors import check_finite_settings

    check_finite_settings({"a": {"b": 1.5, "c": [1, 2.0, "x"], "d": None, "e": True}})
    with pytest.raises(UserError, match=r"dataset\.mean\[1\]=nan is invalid"):
        check_finite_settings({"dataset": {"mean": [0.5, float("nan"), 0.5]}})


# --------------------------------------------------------------------------- non-finite samples


def replace_token(path, lineno, index, token):
    """Line ``lineno`` (1-based) of a whitespace-separated text file with value ``index``
    replaced by ``token``."""
    lines = path.read_text().splitlines()
    values = lines[lineno - 1].split()
    values[index] = token
    lines[lineno - 1] = " ".join(values)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("token", ["nan", "inf", "-Infinity", "NaN", "1e39"])
def test_uci_har_non_finite_sample_names_file_and_line(tmp_path, token):
    fx = write_uci_dataset(tmp_path / "src")
    f = fx.dataset_dir / "test" / "Inertial Signals" / "body_gyro_y_test.txt"
    replace_token(f, 4, 17, token)
    with pytest.raises(UserError, match=r"body_gyro_y_test.txt, line 4: ") as e:
        load_uci_har(fx.dataset_dir, tmp_path / "d", cache=False)
    assert "\n" not in str(e.value)


def test_hapt_non_finite_sample_names_file_and_line(tmp_path):
    from test_data_pamap2_hapt import write_hapt

    ds = write_hapt(tmp_path / "src")
    replace_token(ds / "RawData" / "acc_exp02_user02.txt", 30, 1, "inf")
    with pytest.raises(UserError, match=r"acc_exp02_user02.txt, line 30: 'inf' is not a finite"):
        load_hapt(ds, tmp_path / "d")


def test_pamap2_keeps_nan_gaps_but_refuses_inf(tmp_path):
    from test_data_pamap2_hapt import write_pamap2

    ds = write_pamap2(tmp_path / "src", subjects=(101, 102))
    assert load_pamap2(ds, tmp_path / "d", window=100, step=50, cache=False).info[
        "nan_values_interpolated"
    ]
    replace_token(ds / "Protocol" / "subject102.dat", 220, 5, "inf")
    with pytest.raises(UserError, match=r"subject102.dat, line 220: 'inf' is not a finite"):
        load_pamap2(ds, tmp_path / "d", window=100, step=50, cache=False)


def test_uea_nan_is_missing_but_inf_is_refused(tmp_path):
    labels = ["a", "b"]
    cases = [
        ([[float(i + j) for j in range(8)] for _ in range(2)], labels[i % 2]) for i in range(4)
    ]
    folder = tmp_path / "Toy"
    folder.mkdir()
    text = ts_text(cases, labels)
    (folder / "Toy_TEST.ts").write_text(text)
    (folder / "Toy_TRAIN.ts").write_text(text.replace("2.0,3.0", "2.0,NaN", 1))
    assert load_uea("Toy", tmp_path, tmp_path / "d").info["missing_values_filled"] == 1
    (folder / "Toy_TRAIN.ts").write_text(text.replace("2.0,3.0", "2.0,inf", 1))
    with pytest.raises(UserError, match=r"Toy_TRAIN.ts, line 10, dimension 0: 'inf'"):
        load_uea("Toy", tmp_path, tmp_path / "d")


def recordings_csv(path, bad_row=None, value="inf"):
    n = 300
    df = pd.DataFrame(
        {
            "subject": np.repeat([1, 2, 3], n // 3),
            "label": np.tile(np.repeat(["sit", "walk"], n // 6), 3),
            "time": np.tile(np.arange(n // 3) / 50.0, 3),
            "acc_x": np.arange(n, dtype=float),
            "acc_y": np.ones(n),
        }
    )
    text = df.to_csv(index=False).splitlines()
    if bad_row is not None:
        cells = text[bad_row + 1].split(",")
        cells[4] = value
        text[bad_row + 1] = ",".join(cells)
    path.write_text("\n".join(text) + "\n")
    return path


@pytest.mark.parametrize("value, shown", [("inf", "'acc_y' is inf"), ("", "'acc_y' is empty")])
def test_recordings_non_finite_names_file_and_line(tmp_path, value, shown):
    f = recordings_csv(tmp_path / "rec.csv", bad_row=120, value=value)
    kw = dict(channels=["acc_x", "acc_y"], window=20, step=10)
    with pytest.raises(UserError, match=rf"rec.csv, line 122: column {shown}") as e:
        load_recordings(f, **kw)
    assert "dataset.nan_policy=drop" in str(e.value)
    clean = load_recordings(recordings_csv(tmp_path / "clean.csv"), **kw)
    dropped = load_recordings(f, nan_policy="drop", **kw)
    # The windows that would cover row 120 are gone, the rest are the clean file's.
    assert np.isfinite(dropped.X).all() and 0 < len(dropped.y) < len(clean.y)
    assert not np.any((dropped.X[:, 0] == 120).any(axis=1))
    filled = load_recordings(f, nan_policy="interpolate", **kw)
    np.testing.assert_array_equal(filled.X, clean.X)
    assert filled.info["rows_non_finite"] == 1
    with pytest.raises(UserError, match="dataset.nan_policy='skip' is invalid"):
        load_recordings(f, nan_policy="skip", **kw)


def test_recordings_non_finite_through_the_cli_is_one_line_not_a_divergence(
    tmp_path, monkeypatch, capsys
):
    f = recordings_csv(tmp_path / "rec.csv", bad_row=7, value="nan")
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(
        *SMALL,
        "dataset=recordings",
        f"dataset.path={f}",
        "dataset.channels=[acc_x,acc_y]",
        "dataset.window=20",
        "dataset.step=10",
        "hydra.run.dir=run",
    )
    assert_one_line_error(code, err, "rec.csv, line 9", "acc_y")


def test_wisdm_non_finite_sample_error_drop_interpolate(tmp_path):
    ds = write_wisdm_2019(tmp_path / "src", compress=None)
    kw = dict(window=10, step=5, progress=False)
    clean = load_wisdm(ds, tmp_path / "d", cache=False, **kw)
    f = ds / "raw/watch/gyro/data_1601_gyro_watch.txt"
    lines = f.read_text().splitlines()
    lines[60] = lines[60].rsplit(",", 1)[0] + ",NaN;"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"data_1601_gyro_watch.txt, line 61: .*not a finite"):
        load_wisdm(ds, tmp_path / "d", **kw)
    dropped = load_wisdm(ds, tmp_path / "d", nan_policy="drop", **kw)  # from the cache
    assert dropped.info["cache_hit"] and np.isfinite(dropped.X).all()
    assert len(dropped.y) < len(clean.y) and dropped.info["malformed_records"] == 0
    filled = load_wisdm(ds, tmp_path / "d", nan_policy="interpolate", **kw)
    assert np.isfinite(filled.X).all() and len(filled.y) == len(clean.y)


def test_hardata_refuses_non_finite_windows_from_any_source():
    X = np.zeros((3, 2, 8), np.float32)
    X[2, 1, 5] = np.inf
    with pytest.raises(UserError, match=r"dataset toy: window 2, channel 'b' .* \(inf\)"):
        HARData("toy", X, np.zeros(3, np.int64), np.arange(3), ["k"], ["a", "b"])


# --------------------------------------------------------------------------- sizes


@pytest.fixture
def eight_gb(monkeypatch):
    """The machine's available memory pinned, so that what fits does not depend on the host."""
    monkeypatch.setattr("har_bench.core.errors.available_memory", lambda: 8 * 1024**3)


def test_available_memory_is_read_from_the_system():
    from har_bench.core.errors import available_memory, format_bytes

    available = available_memory()
    assert available is None or available > 0
    assert format_bytes(512) == "512 B" and format_bytes(3 * 1024**3) == "3.0 GB"


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["model=resnext50", "model.cardinality=100000"], ["parameters", "8.0 GB is available"]),
        (["dataset.window=1000000000"], ["600 windows of 3 channels x 1000000000", "TB"]),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_allocating(
    tmp_path, monkeypatch, capsys, eight_gb, overrides, needles
):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    small = [a for a in SMALL if not a.startswith("model")] + ["model=resnet18"]
    code, err = main(*small, *overrides, "hydra.run.dir=run")
    assert_one_line_error(code, err, "needs about", *needles)
    assert '"user_error": true' in (tmp_path / "run" / "metrics.json").read_text()


def test_windows_that_cannot_fit_are_refused_for_every_windowed_loader(tmp_path, monkeypatch):
    f = recordings_csv(tmp_path / "rec.csv")
    kw = dict(channels=["acc_x", "acc_y"], window=20, step=10)
    assert len(load_recordings(f, **kw).y)
    monkeypatch.setattr("har_bench.core.errors.available_memory", lambda: 1000)
    with pytest.raises(UserError, match=r"windows of 2 channels x 20 samples needs about .* raise"):
        load_recordings(f, **kw)
    monkeypatch.setattr("har_bench.core.errors.available_memory", lambda: None)  # unknown: no check
    assert len(load_recordings(f, **kw).y)
