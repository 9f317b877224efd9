from __future__ import annotations

import re
import threading
import zipfile

import numpy as np
import pytest
from fixtures_data import Server
from fixtures_uci import write_uci_dataset, zip_dataset

from har_bench.core.download import (
    ChecksumError,
    DownloadError,
    download,
    filename_from_url,
    sha256_file,
)
from har_bench.data import load_uci_har
from har_bench.data.archives import extract_archive

ZIP_NAME = "human+activity+recognition+using+smartphones.zip"


@pytest.fixture
def served(tmp_path):
    """A local HTTP server whose root holds the fixture dataset as the nested UCI zip."""
    site = tmp_path / "site"
    site.mkdir()
    fx = write_uci_dataset(tmp_path / "src", gz=True)
    zip_dataset(fx.dataset_dir, site / ZIP_NAME, nested=True)
    server = Server(site)
    try:
        yield server, site / ZIP_NAME, fx
    finally:
        server.close()


def test_download_with_correct_sha256(tmp_path, served):
    server, archive, _ = served
    dest = tmp_path / "cache" / ZIP_NAME
    out = download(server.url(ZIP_NAME), dest, sha256_file(archive).upper(), progress=False)
    assert out == dest
    assert dest.read_bytes() == archive.read_bytes()
    assert not dest.with_suffix(".zip.part").exists()
    assert (tmp_path / "cache" / f"{ZIP_NAME}.sha256").read_text().split()[0] == sha256_file(
        archive
    )


def test_download_shows_progress_without_crashing(tmp_path, served, capsys):
    server, archive, _ = served
    download(server.url(ZIP_NAME), tmp_path / "a.zip", progress=True)
    assert sha256_file(tmp_path / "a.zip") == sha256_file(archive)


def test_checksum_mismatch_leaves_nothing(tmp_path, served):
    server, archive, _ = served
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(server.url(ZIP_NAME), cache / ZIP_NAME, wrong, progress=False)
    msg = str(err.value)
    assert server.url(ZIP_NAME) in msg and wrong in msg and sha256_file(archive) in msg
    assert "nothing was cached" in msg
    assert isinstance(err.value, ValueError)
    assert list(cache.iterdir()) == []  # no .part, no archive, no sidecar


def test_trust_on_first_use_then_tamper_detected(tmp_path, served):
    server, archive, _ = served
    dest = tmp_path / "cache" / ZIP_NAME
    download(server.url(ZIP_NAME), dest, progress=False)
    sidecar = dest.with_name(dest.name + ".sha256")
    assert sidecar.read_text().split()[0] == sha256_file(archive)
    assert len(server.requests) == 1

    # Present and intact: verified against the sidecar, not fetched again.
    download(server.url(ZIP_NAME), dest, progress=False)
    assert len(server.requests) == 1

    dest.write_bytes(dest.read_bytes() + b"tampered")
    with pytest.raises(ChecksumError, match=re.escape(str(dest))):
        download(server.url(ZIP_NAME), dest, progress=False)
    assert len(server.requests) == 1  # no silent re-download
    assert dest.read_bytes().endswith(b"tampered")


def test_existing_file_checked_against_given_sha256(tmp_path):
    dest = tmp_path / "x.zip"
    dest.write_bytes(b"abc")
    with pytest.raises(ChecksumError, match="x.zip"):
        download("http://127.0.0.1:9/never-fetched", dest, "1" * 64, progress=False)
    assert download("http://127.0.0.1:9/never-fetched", dest, sha256_file(dest)) == dest


def test_redownload_must_match_kept_sidecar(tmp_path, served):
    server, _, _ = served
    dest = tmp_path / "cache" / ZIP_NAME
    dest.parent.mkdir()
    dest.with_name(dest.name + ".sha256").write_text("f" * 64 + "\n")
    with pytest.raises(ChecksumError, match="recorded in"):
        download(server.url(ZIP_NAME), dest, progress=False)
    assert not dest.exists() and not dest.with_suffix(".zip.part").exists()


def test_http_error_names_url(tmp_path, served):
    server, _, _ = served
    with pytest.raises(DownloadError, match="missing.zip"):
        download(server.url("missing.zip"), tmp_path / "m.zip", progress=False)
    assert list(tmp_path.glob("m.zip*")) == []


def test_invalid_sha256_string(tmp_path):
    with pytest.raises(ValueError, match="64 hex"):
        download("http://127.0.0.1:9/x", tmp_path / "x", "abc", progress=False)


def test_filename_from_url():
    assert filename_from_url("https://h/static/public/240/" + ZIP_NAME) == ZIP_NAME
    assert filename_from_url("https://h/a/UCI%20HAR.zip?x=1") == "UCI HAR.zip"
    assert filename_from_url("https://h/", "d.zip") == "d.zip"


# --------------------------------------------------------------------------- extract_archive


def test_extract_nested_zip_skips_junk(tmp_path):
    fx = write_uci_dataset(tmp_path / "src")
    archive = zip_dataset(fx.dataset_dir, tmp_path / "outer.zip", nested=True)
    out = extract_archive(archive, tmp_path / "dest", "UCI HAR Dataset")
    assert out == tmp_path / "dest" / "UCI HAR Dataset"
    assert (out / "train" / "Inertial Signals" / "body_acc_x_train.txt").is_file()
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [
        ".UCI HAR Dataset.extracted.json",
        "UCI HAR Dataset",
    ]


def test_extract_reextracts_when_archive_changes(tmp_path):
    fx = write_uci_dataset(tmp_path / "src")
    archive = zip_dataset(fx.dataset_dir, tmp_path / "a.zip")
    out = extract_archive(archive, tmp_path / "dest", "UCI HAR Dataset")
    (fx.dataset_dir / "NEW.txt").write_text("new")
    zip_dataset(fx.dataset_dir, archive)
    out = extract_archive(archive, tmp_path / "dest", "UCI HAR Dataset")
    assert (out / "NEW.txt").read_text() == "new"
    assert not list((tmp_path / "dest").glob(".extract-*"))


def test_zip_slip_rejected(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("UCI HAR Dataset/ok.txt", "ok")
        zf.writestr("UCI HAR Dataset/../../evil.txt", "pwned")
    with pytest.raises(ValueError, match="unsafe path"):
        extract_archive(archive, tmp_path / "dest", "UCI HAR Dataset")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "dest" / "UCI HAR Dataset").exists()

    absolute = tmp_path / "abs.zip"
    with zipfile.ZipFile(absolute, "w") as zf:
        zf.writestr("/etc/UCI HAR Dataset/x.txt", "x")
    with pytest.raises(ValueError, match="unsafe path"):
        extract_archive(absolute, tmp_path / "dest", "UCI HAR Dataset")


def test_crash_mid_extraction_leaves_no_partial_folder(tmp_path, monkeypatch):
    fx = write_uci_dataset(tmp_path / "src")
    archive = zip_dataset(fx.dataset_dir, tmp_path / "a.zip")
    real_open = zipfile.ZipFile.open
    calls = {"n": 0}

    def flaky(self, name, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full (simulated)")
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", flaky)
    with pytest.raises(OSError, match="simulated"):
        extract_archive(archive, tmp_path / "dest", "UCI HAR Dataset")
    assert list((tmp_path / "dest").iterdir()) == []


def test_missing_member_root(tmp_path):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("something/else.txt", "x")
    with pytest.raises(FileNotFoundError, match="UCI HAR Dataset"):
        extract_archive(archive, tmp_path / "dest", "UCI HAR Dataset")


def test_tar_never_extracts_links_and_refuses_unsafe_names(tmp_path):
    import io
    import tarfile

    def add(tf, name, data=b"", kind=tarfile.REGTYPE, link=""):
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data)
        tf.addfile(info, io.BytesIO(data))

    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        add(tf, "Data/a.txt", b"a")
        add(tf, "Data/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add(tf, "Data/hard", kind=tarfile.LNKTYPE, link="Data/a.txt")
    out = extract_archive(archive, tmp_path / "dest", "Data")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        add(tf, "Data/../../evil.txt", b"pwned")
    with pytest.raises(ValueError, match="unsafe path"):
        extract_archive(evil, tmp_path / "dest2", "Data")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "dest2" / "Data").exists()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_named_files_are_picked_from_any_depth(tmp_path, kind):
    import tarfile

    members = {"x/deep/T_TRAIN.ts": "train", "T_TEST.ts": "test", "x/T_TRAIN.arff": "arff"}
    archive = tmp_path / f"t.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for name, text in members.items():
                zf.writestr(name, text)
    else:
        for name, text in members.items():
            (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "src" / name).write_text(text)
        with tarfile.open(archive, "w") as tf:
            for name in members:
                tf.add(tmp_path / "src" / name, arcname=name)
    out = extract_archive(archive, tmp_path / "dest", "T", files=("T_TRAIN.ts", "T_TEST.ts"))
    assert sorted(p.name for p in out.iterdir()) == ["T_TEST.ts", "T_TRAIN.ts"]
    assert (out / "T_TRAIN.ts").read_text() == "train"
    with pytest.raises(FileNotFoundError, match="has no T_VALID.ts"):
        extract_archive(archive, tmp_path / "d2", "T", files=("T_TRAIN.ts", "T_VALID.ts"))


# --------------------------------------------------------------------------- load_uci_har


def test_load_uci_har_downloads_and_caches(tmp_path, served):
    server, archive, fx = served
    data_dir = tmp_path / "data"
    url = server.url(ZIP_NAME)
    data = load_uci_har(None, str(data_dir), url, sha256_file(archive), progress=False)
    np.testing.assert_array_equal(data.X, fx.X)
    np.testing.assert_array_equal(data.y, fx.y)
    assert data.info["archive"] == str(data_dir / "uci_har" / ZIP_NAME)
    assert data.info["cache_hit"] is False

    again = load_uci_har(None, str(data_dir), url, sha256_file(archive), progress=False)
    assert again.info["cache_hit"] is True
    assert len(server.requests) == 1


def test_load_uci_har_checksum_mismatch_caches_nothing(tmp_path, served):
    server, _, _ = served
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumError):
        load_uci_har(None, str(data_dir), server.url(ZIP_NAME), "0" * 64, progress=False)
    leftovers = [p for p in data_dir.rglob("*") if p.is_file()]
    assert leftovers == []


def test_parallel_downloads_of_one_file_fetch_it_once(tmp_path, served):
    """Sweep jobs on a fresh cache: one downloads, the others wait and reuse the file."""
    server, archive, _ = served
    dest = tmp_path / "cache" / ZIP_NAME
    results, errors = [], []

    def job() -> None:
        try:
            results.append(download(server.url(ZIP_NAME), dest, progress=False))
        except Exception as e:  # collected: an exception in a thread would pass silently
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and results == [dest] * 4
    assert len(server.requests) == 1
    assert dest.read_bytes() == archive.read_bytes()


def test_any_loader_takes_a_zip_or_a_tar_and_names_anything_else(tmp_path):
    import tarfile

    from har_bench.data._io import dataset_root

    src = tmp_path / "src" / "Data"
    src.mkdir(parents=True)
    (src / "a.txt").write_text("1 2 3\n")
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
        z.write(src / "a.txt", "Data/a.txt")
    with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as t:
        t.add(src, arcname="Data")
    (tmp_path / "notes.txt").write_text("not an archive")
    for archive in ("d.zip", "d.tar.gz"):
        out = extract_archive(tmp_path / archive, tmp_path / archive.split(".")[1], "Data", "X", "")
        assert (out / "a.txt").read_text() == "1 2 3\n"
    with pytest.raises(
        ValueError, match=r"X: .*notes.txt is not a zip or tar archive; give the zip"
    ):
        extract_archive(tmp_path / "notes.txt", tmp_path, "Data", "X", "give the zip")
    with pytest.raises(FileNotFoundError, match="X root /nope does not exist; give the zip"):
        dataset_root(
            "/nope", tmp_path, "", None, False, default_name="x", what="X", hint="give the zip"
        )
