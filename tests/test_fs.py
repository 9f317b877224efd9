import pytest

from har_bench.core.fs import atomic_write, atomic_write_text, hold_lock, release_lock


def test_atomic_write_replaces_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic_write_text(target, "old")
    seen = []
    atomic_write(target, lambda tmp: (seen.append(tmp), tmp.write_text("new")))
    assert target.read_text() == "new"
    assert seen[0].suffix == ".json" and seen[0].parent == target.parent
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "history.csv"
    atomic_write_text(target, "epoch\n1\n")

    def crash(tmp):
        tmp.write_text("half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_text() == "epoch\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_new_files_get_ordinary_permissions_and_replaced_files_keep_theirs(tmp_path):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    fresh = tmp_path / "metrics.json"
    atomic_write_text(fresh, "{}")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600

    fresh.chmod(0o640)
    atomic_write_text(fresh, "{ }")
    assert fresh.stat().st_mode & 0o777 == 0o640


def test_a_held_lock_excludes_other_processes_until_released(tmp_path):
    import subprocess
    import sys

    probe = "import sys; from har_bench.core.fs import hold_lock; print(hold_lock(sys.argv[1]))"

    def other_process_gets_it() -> bool:
        out = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True
        )
        return out.stdout.strip() == "True"

    assert hold_lock(tmp_path) and hold_lock(tmp_path)  # re-entrant within a process
    assert not other_process_gets_it()
    release_lock(tmp_path)
    assert other_process_gets_it()  # and that process's exit freed it again


def test_temp_files_left_by_a_killed_writer_are_cleaned_up_later(tmp_path):
    import os
    import time

    target = tmp_path / "last.pt"
    stale = tmp_path / ".last.pt.abc123.pt"  # what mkstemp left when the process died
    fresh = tmp_path / ".last.pt.def456.pt"  # another writer, right now
    stale.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    atomic_write_text(target, "ok")
    assert not stale.exists() and fresh.exists() and target.read_text() == "ok"


def test_locks_never_use_another_users_folder(tmp_path, monkeypatch, caplog):
    import os
    import tempfile

    from har_bench.core import fs as _fs

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)  # the folder we make is not "theirs"
    (tmp_path / f"har_bench-locks-{me + 1}").mkdir()
    monkeypatch.setattr(_fs, "_warned", set())
    assert hold_lock(tmp_path / "run")  # runs go on, unlocked, with a warning
    with _fs.file_lock(tmp_path / "cache"):
        pass
    assert "another user" in caplog.text
