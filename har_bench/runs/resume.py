"""``trainer.resume`` on the command line: find the run, check it, point Hydra at its directory.

This runs before Hydra starts, so a refused resume (another model, say) writes nothing; a checkpoint
that cannot be loaded is refused by :func:`har_bench.experiment.run.run` before its first write.
:func:`check_new_run` decides, once Hydra made the run directory, whether a new run may start there.

Resolution:

* ``trainer.resume=RUN_DIR`` takes the run's own overrides (``.hydra/overrides.yaml``) and puts
  the command line's after them, so ``har-bench trainer.resume=RUN_DIR`` alone is enough and
  anything given explicitly wins.
* ``trainer.resume=last`` picks, under ``paths.output_dir``, the most recently checkpointed run
  whose config equals the command line's and that has not completed.
* Either way the composed config must equal the run's saved one, except for the keys in
  :data:`IGNORED` (they do not change the numbers); ``hydra.run.dir`` is set to the run dir so
  logs and artifacts continue in place.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from har_bench.config import (
    BOOKKEEPING_KEYS,
    compose_container,
    flatten,
    key_in,
    override_key,
    parse_command_line,
    setting,
)
from har_bench.core.errors import UserError
from har_bench.core.fs import hold_lock
from har_bench.runs import rundir

RESUME_KEY = "trainer.resume"
OVERWRITE_KEY = "trainer.overwrite"
# May differ between a run and its resume. max_epochs is here so a stopped run can be given more
# epochs (with cosine's T_max = max_epochs the schedule then changes: not an exact replay).
IGNORED = (*BOOKKEEPING_KEYS, "trainer.max_epochs", "trainer.num_threads")
# May differ between a completed sweep job and its re-run that skips it: more epochs is a new run.
SAME_RUN = (*BOOKKEEPING_KEYS, "trainer.num_threads")
_SAFE_PATH = re.compile(r"^[\w./:@+-]+$")


class ResumeError(UserError):
    """A ``trainer.resume`` that cannot be honoured; the message says why."""


def resolve_resume(args: Sequence[str]) -> list[str]:
    """The command line with ``trainer.resume`` resolved, or unchanged when it has none."""
    args = list(args)
    if not any(RESUME_KEY in a for a in args):
        return args
    from hydra.core.override_parser.overrides_parser import OverridesParser

    command = parse_command_line(args)
    overrides = command.overrides
    parsed = OverridesParser.create().parse_overrides(overrides)
    resume = [
        (o, p) for o, p in zip(overrides, parsed, strict=True) if p.key_or_group == RESUME_KEY
    ]
    if not resume:
        return args
    value = resume[-1][1].value()
    if value in (None, ""):
        return args
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # Every rank would restore and lock the same run dir; not supported yet.
        raise ResumeError(
            f"{RESUME_KEY} is not supported under torchrun yet; resume the run in a single "
            "process (without torchrun) or start a new one"
        )
    if command.multirun:
        raise ResumeError(
            f"{RESUME_KEY} continues one run and cannot be combined with -m/--multirun; "
            "resume each job directory on its own"
        )
    others = [o for o in overrides if o not in {r[0] for r in resume}]
    given = {p.key_or_group for p in parsed if p.key_or_group != RESUME_KEY}
    if str(value) == "last":
        run_dir = find_last(others)
    else:
        run_dir = Path(str(value)).expanduser().resolve()
        check_resumable(run_dir, str(value))
    saved = [
        o
        for o in rundir.saved_overrides(run_dir)
        if override_key(o) not in given
        and override_key(o) not in (RESUME_KEY, OVERWRITE_KEY)  # how it started, not what
        and not override_key(o).startswith("hydra.")
    ]
    merged = [*saved, *others]
    differences = config_differences(rundir.saved_config(run_dir), compose_container(merged))
    if differences:
        shown = "; ".join(differences[:6]) + (" ..." if len(differences) > 6 else "")
        raise ResumeError(
            f"{RESUME_KEY}={value}: that run has a different config ({shown}); resume it with "
            "its own settings or start a new run"
        )
    # Held until the run ends (har_bench.experiment.run releases it): two resumes of one run started
    # together would both pass the checks above and then train into the same files.
    if not hold_lock(run_dir):
        raise ResumeError(
            f"{RESUME_KEY}={value}: {run_dir} is in use by another har-bench process on this "
            "machine; wait for it to finish or stop it first"
        )
    return [
        *command.flags,
        *merged,
        f"{RESUME_KEY}={hydra_quote(str(run_dir))}",
        f"hydra.run.dir={hydra_quote(str(run_dir))}",
        # One run, also when it was a job of a preset that sets hydra.mode=MULTIRUN.
        "hydra.mode=RUN",
    ]


def lock_run_dir(args: Sequence[str]) -> None:
    """Lock an explicit ``hydra.run.dir`` before Hydra writes ``.hydra/`` into it.

    Default run dirs are new (timestamped to the microsecond); a directory given by hand may
    be one another process is training in (a run, or a resume of it). Refused here, that
    run's saved config, which a later resume compares against, is never overwritten. The
    lock is held until the run ends (``har_bench.experiment.run`` releases it).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    command = parse_command_line(args)
    if command.multirun:
        return  # jobs get fresh numbered dirs under the sweep dir
    values = [
        p.value()
        for p in OverridesParser.create().parse_overrides(command.overrides)
        if p.key_or_group == "hydra.run.dir"
    ]
    if not values or "${" in str(values[-1]):
        return
    rundir.claim(Path(str(values[-1])).expanduser())


class RunDirTakenError(UserError):
    """A new run pointed at a directory that already holds a run."""


@dataclass(frozen=True)
class Start:
    """What :func:`check_new_run` decided for a run about to start in its directory."""

    # A sweep job whose run already completed with this config: its metrics.json (not re-run).
    completed: dict[str, Any] | None = None
    # trainer.overwrite=true moved the run that was in the directory here.
    moved_to: Path | None = None


def check_new_run(run_dir: Path, config: Mapping[str, Any], sweep: bool) -> Start:
    """Refuse a new run into a directory that already holds one, or make way for it.

    Hydra creates the run directory before the task starts, so this runs in the task, before
    anything of the run is written (``.hydra/`` included). A resume (``trainer.resume``, checked
    before Hydra started) continues in its own directory. Otherwise a directory holding a run
    of any status is refused, naming the ways on, unless ``trainer.overwrite=true``, which
    moves the old run aside. In a sweep a job whose directory holds a completed run of the
    same config is skipped, so re-running an interrupted sweep continues it; a job there with
    an unfinished run is refused like a single run (resume it on its own, or overwrite).
    """
    trainer = config.get("trainer") or {}
    overwrite = bool(trainer.get("overwrite"))
    resume = trainer.get("resume")
    if resume not in (None, "") and overwrite:
        raise RunDirTakenError(
            f"{OVERWRITE_KEY}=true starts the run over and {RESUME_KEY} continues it: "
            "give one of them"
        )
    if resume not in (None, "") and Path(str(resume)).expanduser().resolve() == run_dir.resolve():
        return Start()
    if not rundir.holds_run(run_dir):
        return Start()
    if overwrite:
        return Start(moved_to=rundir.move_aside(run_dir))
    status = rundir.read_status(run_dir)
    state = status.get("status", "unknown")
    moved = f"{run_dir.name}{rundir.OLD_SUFFIX}<time>"
    where = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    over = f"{OVERWRITE_KEY}=true (moves the old run to {moved} beside it, deletes nothing)"
    if state == "completed":
        differences = config_differences(rundir.saved_config(run_dir), dict(config), SAME_RUN)
        if sweep and not differences:
            return Start(completed=status)
        other = f" of another config ({'; '.join(differences[:3])})" if differences else ""
        raise RunDirTakenError(
            f"{run_dir} already holds a completed run{other}; to run into it again add "
            f"{over}, or choose another {where}"
        )
    command = rundir.resume_command(run_dir)
    if command is None:
        raise RunDirTakenError(
            f"{run_dir} already holds a run (status: {state}, no checkpoint to resume); start "
            f"it over with {over}, or choose another {where}"
        )
    raise RunDirTakenError(
        f"{run_dir} already holds a run (status: {state}); continue it with `{command}`, or "
        f"start it over with {over}"
    )


def hydra_quote(value: str) -> str:
    """``value`` as a Hydra override value (paths with spaces, quotes, commas, ...)."""
    if _SAFE_PATH.match(value):
        return value
    return "'" + value.replace("'", "\\'") + "'"


def check_resumable(run_dir: Path, value: str) -> None:
    """Refuse what cannot be resumed: not a run, no checkpoint, completed, still running."""
    prefix = f"{RESUME_KEY}={value}"
    problem = rundir.not_a_run(run_dir)
    if problem is not None:
        raise ResumeError(f"{prefix}: {problem}")
    last = rundir.last_checkpoint(run_dir)
    if not last.is_file() and not rundir.stopped_in_selection(run_dir):
        raise ResumeError(
            f"{prefix}: {run_dir} has no {last.relative_to(run_dir)} (it stopped before its "
            "first checkpoint); start it again without trainer.resume"
        )
    status = rundir.read_status(run_dir)
    if status.get("status") == "completed":
        raise ResumeError(
            f"{prefix}: {run_dir} already completed ({rundir.METRICS} status: completed); "
            "nothing to resume"
        )
    if status.get("status") == "running" and _alive(status):
        raise ResumeError(
            f"{prefix}: {run_dir} is still running (pid {status['pid']}); stop it first"
        )


def _alive(status: dict[str, Any]) -> bool:
    """Whether the process that wrote ``status: running`` is still there (a SIGKILLed run
    leaves ``running`` behind; its pid is gone, or reused by something that is not har-bench)."""
    pid = status.get("pid")
    if not isinstance(pid, int) or status.get("host") != socket.gethostname():
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return b"har" in cmdline.read_bytes()  # empty for a zombie
        except OSError:
            return False
    return True


def config_differences(
    saved: dict[str, Any], new: dict[str, Any], ignored: Sequence[str] = IGNORED
) -> list[str]:
    """``key: saved -> new`` for every leaf that differs, ignoring ``ignored``."""
    a, b = flatten(saved), flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if key_in(key, ignored):
            continue
        # A key added to the configs later is absent from older runs (config.ADDED_KEYS).
        if setting(a, key) != setting(b, key):
            out.append(f"{key}: {a.get(key, '<absent>')} -> {b.get(key, '<absent>')}")
    return out


def find_last(overrides: Sequence[str]) -> Path:
    """The most recently checkpointed, not completed run with this config."""
    from omegaconf import OmegaConf

    wanted = compose_container(overrides)
    output_dir = Path(
        str(OmegaConf.create(wanted).paths.output_dir)  # resolves ${...} in the path
    ).expanduser()
    candidates = rundir.checkpointed_runs(output_dir)
    completed = None
    for run_dir in candidates:
        if not rundir.is_run_dir(run_dir):
            continue
        if config_differences(rundir.saved_config(run_dir), wanted):
            continue
        if rundir.read_status(run_dir).get("status") == "completed":
            completed = completed or run_dir
            continue
        check_resumable(run_dir, "last")
        return run_dir
    detail = (
        f"the newest one, {completed}, already completed"
        if completed
        else f"{len(candidates)} run(s) with a checkpoint were looked at"
    )
    raise ResumeError(
        f"{RESUME_KEY}=last: no unfinished run under {output_dir} has this config ({detail}); "
        "give the run directory instead, or start a new run"
    )
