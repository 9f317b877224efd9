"""UEA .ts loader on fixture files, download + cache, and the real BasicMotions set."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from fixtures_data import Server, ts_text
from helpers import SHARED_DATA

from har_bench.core.download import ChecksumError
from har_bench.data.splits import official_split, split_report
from har_bench.data.uea import load_uea, parse_ts

UEA_REAL = SHARED_DATA / "UEA"


def write_toy(folder, *, variable=False, missing=False, name="Toy"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = ["walk", "run", "rest"]

    def cases(n, offset):
        out = []
        for i in range(n):
            length = 6 + (i % 3) * 2 if variable else 8
            dims = [list(rng.standard_normal(length) + offset + i) for _ in range(2)]
            if missing and i == 1:
                dims[0][2] = np.nan
            out.append((dims, labels[i % 3]))
        return out

    train, test = cases(6, 0), cases(3, 100)
    (folder / f"{name}_TRAIN.ts").write_text(ts_text(train, labels, equal=not variable))
    (folder / f"{name}_TEST.ts").write_text(ts_text(test, labels, equal=not variable))
    return train, test


def test_official_layout_exactly(tmp_path):
    train, test = write_toy(tmp_path / "Toy")
    data = load_uea("Toy", tmp_path, tmp_path / "data", progress=False)
    assert data.X.shape == (9, 2, 8) and data.X.dtype == np.float32
    assert data.class_names == ["walk", "run", "rest"]
    assert data.y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    np.testing.assert_allclose(data.X[0, 1], train[0][0][1], rtol=1e-6)
    np.testing.assert_allclose(data.X[6, 0], test[0][0][0], rtol=1e-6)
    assert data.official_split.tolist() == ["train"] * 6 + ["test"] * 3
    assert data.subjects.tolist() == list(range(9))  # one id per case
    split = official_split(data, val_fraction=0.34, seed=0)
    assert len(split.val) == 3 and split.test.tolist() == [6, 7, 8]
    assert split_report(data, split)["clean"]


def test_variable_length_pad_resample_and_missing(tmp_path):
    write_toy(tmp_path / "Toy", variable=True, missing=True)
    pad = load_uea("Toy", tmp_path, tmp_path / "d", variable_length="pad", progress=False)
    assert pad.X.shape[2] == 10 and pad.info["min_length"] == 6
    assert np.all(pad.X[0, :, 6:] == 0)  # case 0 has length 6: zeros after its end
    res = load_uea("Toy", tmp_path, tmp_path / "d", variable_length="resample", progress=False)
    assert res.X.shape[2] == 10 and not np.any(np.isnan(res.X))
    assert res.info["missing_values_filled"] == 2  # case 1 of TRAIN and of TEST
    fixed = load_uea("Toy", tmp_path, tmp_path / "d", length=4, progress=False)
    assert fixed.X.shape[2] == 4
    with pytest.raises(ValueError, match="dataset.variable_length='cut'"):
        load_uea("Toy", tmp_path, tmp_path / "d", variable_length="cut")


def test_root_forms_and_gz(tmp_path):
    import gzip

    write_toy(tmp_path / "flat", name="Toy")  # files directly in root
    flat = load_uea("Toy", tmp_path / "flat", tmp_path / "d", progress=False)
    for p in (tmp_path / "flat").glob("*.ts"):
        p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    np.testing.assert_array_equal(
        load_uea("Toy", tmp_path / "flat", tmp_path / "d", progress=False).X, flat.X
    )
    write_toy(tmp_path / "z")
    archive = tmp_path / "Toy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in (tmp_path / "z").glob("*.ts"):
            zf.write(p, p.name)
    np.testing.assert_array_equal(load_uea("Toy", archive, tmp_path / "d2").X, flat.X)
    with pytest.raises(FileNotFoundError, match="Other_TRAIN.ts"):
        load_uea("Other", tmp_path / "z", tmp_path / "d")


def test_download_checksum_and_reuse(tmp_path):
    write_toy(tmp_path / "src")
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "Toy.zip", "w") as zf:
        for p in (tmp_path / "src").glob("*.ts"):
            zf.write(p, f"Toy/{p.name}")
    server = Server(site)
    try:
        url = server.base + "/{name}.zip"
        with pytest.raises(ChecksumError):
            load_uea("Toy", None, tmp_path / "bad", url=url, sha256="1" * 64, progress=False)
        a = load_uea("Toy", None, tmp_path / "d", url=url, progress=False)
        b = load_uea("Toy", None, tmp_path / "d", url=url, progress=False)
        assert server.requests == ["/Toy.zip", "/Toy.zip"]  # the bad one, then one download
        np.testing.assert_array_equal(a.X, b.X)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace(":run", ":jump", 1), "class 'jump' is not in @classLabel"),
        (
            lambda t: t.replace("@data\n", "@data\n1.0,2.0:walk\n"),
            "1 dimensions, earlier|@dimensions",
        ),
        (lambda t: t.replace("@data\n", "@data\n1,x:3,4:walk\n"), "'x' is not a number"),
        (lambda t: t.replace("@timeStamps false", "@timeStamps true"), "timeStamps"),
        (lambda t: t.replace("@data\n", ""), "expected a @tag before @data"),
        (lambda t: t.replace("@classLabel true", "@classLabel false"), "not a classification"),
    ],
)
def test_bad_ts_names_file_and_line(tmp_path, edit, message):
    write_toy(tmp_path / "Toy")
    p = tmp_path / "Toy" / "Toy_TRAIN.ts"
    p.write_text(edit(p.read_text()))
    with pytest.raises(ValueError, match=message) as err:
        load_uea("Toy", tmp_path, tmp_path / "d")
    assert "Toy_TRAIN.ts" in str(err.value)


@pytest.mark.skipif(not (UEA_REAL / "BasicMotions").is_dir(), reason="../shared/data/UEA absent")
def test_real_basic_motions(tmp_path):
    header = parse_ts(UEA_REAL / "BasicMotions" / "BasicMotions_TRAIN.ts").header
    assert header["dimensions"] == 6 and header["serieslength"] == 100
    data = load_uea("BasicMotions", UEA_REAL, tmp_path, progress=False)
    assert data.X.shape == (80, 6, 100)
    assert data.class_names == ["Standing", "Running", "Walking", "Badminton"]
    assert np.bincount(data.y).tolist() == [20, 20, 20, 20]
    assert data.info["n_train"] == 40 and data.info["missing_values_filled"] == 0
    assert split_report(data, official_split(data, seed=0))["clean"]
