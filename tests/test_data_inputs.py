"""Hostile and careless data inputs: pickled code in data files, non-finite samples, sizes that
cannot fit, non-finite settings. Each is refused with one line before anything runs."""

from __future__ import annotations

import builtins
import pickle
import tarfile

import numpy as np
import pytest

from har_bench.data.images import load_cifar10
from har_bench.errors import UserError
from tests.cli_helpers import SMALL, assert_one_line_error, in_process_cli

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
    from har_bench.errors import check_finite_settings

    check_finite_settings({"a": {"b": 1.5, "c": [1, 2.0, "x"], "d": None, "e": True}})
    with pytest.raises(UserError, match=r"dataset\.mean\[1\]=nan is invalid"):
        check_finite_settings({"dataset": {"mean": [0.5, float("nan"), 0.5]}})
