"""A disk that refuses writes, and symbolic links planted in a run directory.

A full disk (or quota, or read-only filesystem) ends a run as failed with one line naming the file,
leaves no temp file and keeps the last committed checkpoint resumable. The fault is injected at
the write layer: the n-th fsync of a chosen file raises ENOSPC, so no small mount is needed.
A link in a run directory that leads out of it is refused before anything is written through it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_helpers import SMALL, assert_one_line_error, in_process_cli

from har_bench.core import fs as _fs
from har_bench.core.errors import UserError
from har_bench.runs import rundir
from har_bench.training.checkpoint import (
    BEST_CHECKPOINT,
    BEST_PENDING,
    LAST_CHECKPOINT,
    commit_epoch,
    load_resume_state,
    save_checkpoint,
)

linux_only = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="finds the file being written in /proc/self/fd"
)

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
REAL_FSYNC = os.fsync


def full_disk(monkeypatch, name: str, nth: int = 1, stays_full: bool = False) -> list[str]:
    """From the ``nth`` write of the file ``name`` on (only that one unless ``stays_full``),
    har-bench's writes fail with ENOSPC as the data is flushed to disk. Returns the files whose
    write failed."""
    real_fsync = os.fsync
    seen, failed = [0], []

    def fsync(fd: int) -> None:
        written = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if written.startswith(f".{name}."):
            seen[0] += 1
        if (seen[0] == nth and written.startswith(f".{name}.")) or (stays_full and failed):
            failed.append(written)
            raise ENOSPC
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    return in_process_cli(tmp_path, monkeypatch, capsys)


def temp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob(".*") if p.is_file() and p.parent.name != ".hydra"]


def assert_write_failure(code: int, err: str, *needles: str) -> str:
    """Exit 74, one ``error:`` line holding every needle, no traceback, no logging error."""
    assert code == 74, err
    assert "Traceback" not in err and "Logging error" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- the write layer ---------------------------------------------------------------------------


def test_a_refused_write_names_the_file_not_its_temp_and_leaves_nothing(tmp_path):
    target = tmp_path / "checkpoints" / "last.pt"

    def fill_the_disk(tmp: Path) -> None:
        tmp.write_bytes(b"half a checkp")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(OSError) as caught:
        _fs.atomic_write(target, fill_the_disk)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert _fs.storage_failure(caught.value) == (f"cannot write {target}: No space left on device")
    assert list(target.parent.iterdir()) == []


def test_only_what_the_machine_refuses_is_a_storage_failure():
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        assert _fs.storage_failure(OSError(code, os.strerror(code), "f")).startswith(
            "cannot write f: "
        )
    # A path the user gave that cannot be written is bad input, not the disk.
    assert _fs.storage_failure(PermissionError(errno.EACCES, "Permission denied", "f")) is None
    assert _fs.storage_failure(ValueError("no")) is None


@pytest.mark.parametrize("nth", [1, 3])
def test_a_full_disk_during_torch_save_is_an_oserror(tmp_path, monkeypatch, nth):
    """torch reports a failed write as a RuntimeError ("unexpected pos"); checkpoints must
    report the OSError it is (here the n-th write to the temp file fails, as on a full disk)."""
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return Full(f) if "w" in mode and Path(file).name.startswith(".last.pt.") else f

    import builtins

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(OSError) as caught:
        save_checkpoint(tmp_path / LAST_CHECKPOINT, {"w": torch.zeros(1000)})
    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


@linux_only
def test_a_full_disk_mid_commit_keeps_the_last_commit_resumable(tmp_path, monkeypatch):
    commit_epoch(tmp_path, {"epoch": 1, "best_epoch": 1}, {"epoch": 1, "model": {}})
    full_disk(monkeypatch, LAST_CHECKPOINT)  # epoch 2's last.pt, after its new best.pt
    with pytest.raises(OSError, match="No space left"):
        commit_epoch(tmp_path, {"epoch": 2, "best_epoch": 2}, {"epoch": 2, "model": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_CHECKPOINT, LAST_CHECKPOINT]
    monkeypatch.undo()
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1
    assert torch.load(tmp_path / BEST_CHECKPOINT, weights_only=True)["epoch"] == 1
    assert not (tmp_path / BEST_PENDING).exists()


def test_the_log_file_says_once_that_the_disk_is_full_and_goes_quiet(tmp_path, capsys):
    from har_bench.runs.rundir import LogFileHandler

    handler = LogFileHandler(str(tmp_path / "train.log"))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "epoch %d", (1,), None)
    handler.emit(record)
    handler.stream.flush = lambda: (_ for _ in ()).throw(ENOSPC)
    for _ in range(3):
        handler.emit(record)
    handler.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("warning: cannot write") == 1 and "No space left on device" in err


# -- a run on a full disk ----------------------------------------------------------------------


@pytest.mark.slow
@linux_only
def test_a_full_disk_fails_the_run_in_one_line_and_it_resumes_afterwards(
    main, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    run = [*SMALL, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}"]
    failed = full_disk(monkeypatch, LAST_CHECKPOINT, nth=2)  # epoch 2's commit
    code, err = main(*run)
    assert failed
    line = assert_write_failure(
        code,
        err,
        f"cannot write {run_dir / 'checkpoints' / LAST_CHECKPOINT}: No space left on device",
        "the run is marked failed",
        f"trainer.resume={run_dir}",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "No space left on device" in metrics["error"]
    assert metrics["user_error"] is False
    assert "No space left on device" in (run_dir / "error.txt").read_text()
    assert temp_files(run_dir) == []
    assert not (run_dir / "checkpoints" / BEST_PENDING).exists()
    state = load_resume_state(run_dir / "checkpoints")
    assert state["epoch"] == 1

    monkeypatch.setattr(os, "fsync", REAL_FSYNC)  # space was freed
    resume = line.rsplit("resume with: ", 1)[1].rstrip(")").split()[1:]
    assert resume == [f"trainer.resume={run_dir}"]
    code, err = main(*resume)
    assert code == 0, err
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [1, 2, 3]


@pytest.mark.slow
@linux_only
def test_a_disk_that_stays_full_still_gives_one_line(main, tmp_path, monkeypatch):
    """Recording the failure needs the disk too: the console says so instead."""
    run_dir = tmp_path / "run"
    full_disk(monkeypatch, LAST_CHECKPOINT, stays_full=True)  # epoch 1: nothing to resume
    code, err = main(*SMALL, f"hydra.run.dir={run_dir}")
    assert_write_failure(
        code,
        err,
        f"cannot write {run_dir / 'checkpoints' / LAST_CHECKPOINT}",
        "metrics.json could not be updated",
        "start the run again",
    )
    assert temp_files(run_dir) == []
    assert list((run_dir / "checkpoints").iterdir()) == []  # no best.pt.pending either


# -- symbolic links in a run directory ---------------------------------------------------------


def test_links_out_of_a_run_dir_are_refused_and_links_inside_are_not(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "latest.pt").symlink_to("checkpoints/last.pt")  # stays inside
    _fs.refuse_links_out(run_dir)
    victim = tmp_path / "victim.txt"
    (run_dir / "checkpoints" / "best.pt").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link to .*victim.txt, outside the run dir"):
        _fs.refuse_links_out(run_dir)


def test_a_link_planted_during_a_run_does_not_take_its_writes_out(tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    _fs.confine_writes(run_dir)
    try:
        (run_dir / "checkpoints").symlink_to(elsewhere)
        with pytest.raises(UserError, match="symbolic link"):
            save_checkpoint(run_dir / "checkpoints" / LAST_CHECKPOINT, {"epoch": 1})
        _fs.atomic_write_text(tmp_path / "notes.txt", "outside every run dir: not confined")
    finally:
        _fs.release_writes(run_dir)
    assert list(elsewhere.iterdir()) == []


def test_the_log_file_does_not_follow_a_link(tmp_path, capsys):
    from har_bench.runs.rundir import LogFileHandler

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "train.log").symlink_to(victim)
    handler = LogFileHandler(str(tmp_path / "train.log"))
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None))
    handler.close()
    assert victim.read_text() == "precious\n"
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("link", ["train.log", "checkpoints", ".hydra"])
def test_a_run_dir_with_a_link_out_is_refused_before_anything_is_written(main, tmp_path, link):
    run_dir, victim = tmp_path / "run", tmp_path / "victim"
    run_dir.mkdir()
    if link == "train.log":
        victim.write_text("precious\n")
    else:
        victim.mkdir()
    (run_dir / link).symlink_to(victim)
    code, err = main(*SMALL, f"hydra.run.dir={run_dir}")
    assert_one_line_error(code, err, str(run_dir / link), "symbolic link", str(victim))
    assert [p.name for p in run_dir.iterdir()] == [link]
    if link == "train.log":
        assert victim.read_text() == "precious\n"
    else:
        assert list(victim.iterdir()) == []


def test_a_resume_of_a_run_dir_with_a_link_out_is_refused(main, tmp_path):
    from test_resume_cli import RUN, fake_run

    run_dir = fake_run(tmp_path / "outputs", "run", RUN, "interrupted")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run_dir / "train.log").symlink_to(victim)
    before = (run_dir / ".hydra" / "overrides.yaml").read_text()
    code, err = main(f"trainer.resume={run_dir}")
    assert_one_line_error(code, err, "train.log", "symbolic link")
    assert victim.read_text() == "precious\n"
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == before


def test_a_sweep_job_dir_with_a_link_out_is_refused(main, tmp_path):
    sweep_dir, victim = tmp_path / "sweep", tmp_path / "victim.txt"
    (sweep_dir / "0").mkdir(parents=True)
    victim.write_text("precious\n")
    (sweep_dir / "0" / "train.log").symlink_to(victim)
    code, err = main("-m", *SMALL, "seed=0", f"hydra.sweep.dir={sweep_dir}")
    assert code == 2, err
    assert "Traceback" not in err
    assert f"{sweep_dir / '0' / 'train.log'} leads through a symbolic link" in err
    assert victim.read_text() == "precious\n"


def test_a_full_disk_while_the_config_is_saved_gives_one_line(main, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run/.hydra"))

    monkeypatch.setattr(rundir, "save_record", full)
    code, err = main(*SMALL, f"hydra.run.dir={tmp_path / 'run'}")
    assert_write_failure(code, err, f"cannot write {tmp_path / 'run/.hydra'}: No space left")
