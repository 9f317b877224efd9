"""The run directory: its file names, its status, its saved config, and reading a finished run.

Every other module names a run's files through the constants here (checkpoint file names are
:mod:`har_bench.training.checkpoint`'s), so a renamed file is one edit. ``metrics.json`` doubles as
the status file: :func:`write_status` keeps whatever it holds and updates ``status``; a completed
run writes it last, so ``completed`` means every other file is in place.

No torch here (checkpoint names are imported where a path needs one): ``har-bench compare``
and the sweep summary read run dirs in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from har_bench.config import flatten, upgrade_targets
from har_bench.core.errors import UserError
from har_bench.core.fs import (
    atomic_write_text,
    confine_writes,
    hold_lock,
    open_append_no_follow,
    release_lock,
    release_writes,
)

METRICS = "metrics.json"
HISTORY = "history.csv"
CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
TIMINGS = "timings.json"
MODEL_SUMMARY = "model_summary.json"
ENVIRONMENT = "environment.json"
SPLIT_REPORT = "split_report.json"
# tracking=mlflow: the MLflow run this run reports to (har_bench.runs.tracking).
TRACKING = "tracking.json"
ERROR = "error.txt"
CHECKPOINTS = "checkpoints"
# The temperature predict divides the logits by (har_bench.core.calibration.Calibration), and
# the test set's coverage and accuracy when the least confident windows are rejected.
CALIBRATION = "calibration.json"
REJECT_CURVE_CSV = "reject_curve.csv"
REJECT_CURVE_PNG = "reject_curve.png"
# Every test window's calibrated class probabilities (har_bench.runs.artifacts.TestPredictions):
# what `har-bench ensemble` averages without running the model again.
TEST_PREDICTIONS = "test_predictions.csv"
# Written by Hydra when the run starts; read back by a resume and by compare.
HYDRA_DIR = ".hydra"
SAVED_CONFIG = f"{HYDRA_DIR}/config.yaml"
SAVED_HYDRA_CONFIG = f"{HYDRA_DIR}/hydra.yaml"
SAVED_OVERRIDES = f"{HYDRA_DIR}/overrides.yaml"
# checkpoints/refit/: where a trainer.refit run keeps the model it tested (experiment.fit.refit).
REFIT_CHECKPOINTS = "refit"
# checkpoints/selection/: selection=kfold's fold scores and the fold being trained
# (experiment.select).
SELECTION_CHECKPOINTS = "selection"
# In checkpoints/selection/: every finished fold's score, rewritten atomically after each.
SELECTION_SCORES = "scores.json"
# har-bench export RUN_DIR writes into export/; har-bench predict reads from there.
EXPORT_DIR = "export"
EXPORT_REPORT = "export_report.json"
PREPROCESSING = "preprocessing.json"
# The exported forms of the model, by the name export_report.json and predict --onnx use.
ONNX_FILES = {
    "fp32": "model.onnx",
    "int8": "model_int8.onnx",
    "pruned": "model_pruned.onnx",
    "pruned_int8": "model_pruned_int8.onnx",
}

# What a run was and what it measured, without its checkpoints and logs: the part of a run
# directory `har-bench results` keeps in the repository.
RECORD_FILES = (
    METRICS,
    HISTORY,
    MODEL_SUMMARY,
    TIMINGS,
    SPLIT_REPORT,
    CONFUSION_CSV,
    CALIBRATION,
    REJECT_CURVE_CSV,
    ENVIRONMENT,
    SAVED_CONFIG,
    SAVED_HYDRA_CONFIG,
    SAVED_OVERRIDES,
)

STATUSES = ("running", "completed", "interrupted", "diverged", "failed")
# Keys of metrics.json that describe how an attempt ended; a resumed run drops them.
ENDING_KEYS = ("error", "user_error", "interrupted", "diverged", "hint", "resume_command")


# -- files -------------------------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    # NumPy scalars and arrays (and tensors), without importing NumPy here.
    if callable(getattr(o, "tolist", None)):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def _last_checkpoint_name() -> str:
    from har_bench.training.checkpoint import (
        LAST_CHECKPOINT,  # imports torch: only where a path needs it
    )

    return LAST_CHECKPOINT


def last_checkpoint(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / _last_checkpoint_name()


def stopped_in_selection(run_dir: Path) -> bool:
    """Whether a run stopped while ``selection=kfold`` scored its folds (it has selection
    progress, no checkpoint of the final training yet, and did not complete: a fitted model such
    as MiniRocket leaves no checkpoint): it resumes there."""
    return (
        selection_dir(run_dir).is_dir()
        and not last_checkpoint(run_dir).is_file()
        and read_status(run_dir).get("status") != "completed"
    )


def selection_dir(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / SELECTION_CHECKPOINTS


def selection_fold_dir(run_dir: Path, candidate: int, fold: int, digest: str) -> Path:
    """Where candidate ``candidate`` trains on fold ``fold`` (both counted from 0) of
    ``selection=kfold``; ``digest`` identifies its settings and the fold's cases, so a fold
    checkpoint is never resumed for other settings or other cases."""
    return selection_dir(run_dir) / f"candidate{candidate}_fold{fold}_{digest}"


def tested_checkpoint(run_dir: Path) -> Path:
    """The weights a completed run tested: the refit's when it refit, else the best-on-validation
    ones."""
    from har_bench.training.checkpoint import (
        BEST_CHECKPOINT,  # imports torch: only where a path needs it
    )

    refit = read_status(run_dir).get("tested") == "refit"
    folder = checkpoint_dir(run_dir) / (REFIT_CHECKPOINTS if refit else "")
    return folder / BEST_CHECKPOINT


def export_dir(run_dir: Path) -> Path:
    return Path(run_dir) / EXPORT_DIR


def onnx_file(run_dir: Path, form: str = "fp32") -> Path:
    return export_dir(run_dir) / ONNX_FILES[form]


# trainer.overwrite=true renames a run to <dir>.old-<time>: kept, but no longer a run of the
# sweep or folder it sits in.
OLD_SUFFIX = ".old-"


def set_aside(path: Path) -> bool:
    """Whether ``path`` lies in a run that ``trainer.overwrite`` moved aside."""
    return any(OLD_SUFFIX in part for part in Path(path).parts)


def checkpointed_runs(root: Path) -> list[Path]:
    """The run dirs at or below ``root`` that can be resumed: those that hold a last
    checkpoint, or stopped while ``selection=kfold`` scored its folds; newest first."""
    found: dict[Path, float] = {}
    for pattern in (
        f"**/{CHECKPOINTS}/{_last_checkpoint_name()}",
        f"**/{CHECKPOINTS}/{SELECTION_CHECKPOINTS}",
    ):
        for path in Path(root).glob(pattern):
            run = path.parent.parent.resolve()
            if path.name == SELECTION_CHECKPOINTS and not stopped_in_selection(run):
                continue
            found[run] = max(found.get(run, 0.0), path.stat().st_mtime)
    runs = sorted(found, key=found.__getitem__, reverse=True)
    return [r for r in runs if not set_aside(r.relative_to(Path(root).resolve()))]


def resume_command(run_dir: Path) -> str | None:
    """The command that continues this run, or None when it has nothing to resume from yet
    (no checkpoint, and no fold scores of ``selection=kfold``)."""
    if not last_checkpoint(run_dir).is_file() and not stopped_in_selection(run_dir):
        return None
    return f"har-bench trainer.resume={shlex.quote(str(Path(run_dir).resolve()))}"


# -- status ------------------------------------------------------------------------------------


def read_status(run_dir: Path) -> dict[str, Any]:
    """``metrics.json`` as a dict; empty when it is missing or unreadable."""
    status = _read_json_or_none(Path(run_dir) / METRICS)
    return status if isinstance(status, dict) else {}


def write_status(run_dir: Path, status: str, /, clear: Sequence[str] = (), **extra: Any) -> None:
    """(Re)write metrics.json with a status, keeping whatever it already held but ``clear``."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    current = read_status(run_dir)  # unreadable (hand-edited?): the status must still be recorded
    for key in clear:
        current.pop(key, None)
    current.update(extra)
    current["status"] = status
    current["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(Path(run_dir) / METRICS, current)


def why_unfinished(run_dir: Path, metrics: dict[str, Any]) -> str:
    """How the run recorded in ``metrics`` (its metrics.json) ended, and the way on, in one
    line."""
    status = metrics.get("status")
    error = str(metrics.get("error") or "no error recorded").strip().splitlines()[0]
    if status == "running":
        return (
            f"{METRICS} says it is still running (or it was killed before it could say "
            "otherwise); wait for the run to complete"
        )
    if status == "interrupted":
        command = resume_command(run_dir)
        how = error if error.startswith("interrupted") else "interrupted"
        return f"the run was {how}; " + (
            f"resume it: {command}" if command else "it saved no checkpoint: run it again"
        )
    if status in ("failed", "diverged"):
        details = f" (traceback in {ERROR})" if (Path(run_dir) / ERROR).is_file() else ""
        return f"the run {status}: {error}{details}; fix the cause and run it again"
    return f"no readable {METRICS} status (the run never started or the file is damaged)"


def write_error(run_dir: Path, text: str) -> None:
    atomic_write_text(Path(run_dir) / ERROR, text)


class RunDirInUseError(UserError):
    """Another process is training into the run directory."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(
            f"{run_dir} is in use by another har-bench process on this machine (a run or a "
            "resume of it); use another hydra.run.dir or wait for it to finish"
        )


def claim(run_dir: Path) -> None:
    """Lock the run dir for this process (until :func:`release`, or the process ends), and
    refuse it when a symbolic link in it leads out of it (writes through links that leave it are
    refused until then too)."""
    if not hold_lock(run_dir):
        raise RunDirInUseError(run_dir)
    try:
        confine_writes(run_dir)
    except BaseException:
        release_lock(run_dir)
        raise


def release(run_dir: Path) -> None:
    release_writes(run_dir)
    release_lock(run_dir)


class LogFileHandler(logging.FileHandler):
    """The handler of the run's ``train.log`` (configs/hydra/job_logging/run_dir.yaml).

    Appends without following a symbolic link planted in the run dir's place of the log, and
    when the disk refuses a write it says so once and stops, rather than printing logging's
    traceback for every record; the run's own writes then report the failure.
    """

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        self.failed = False
        super().__init__(filename, mode, encoding=encoding, delay=True)

    def _open(self) -> Any:
        return open_append_no_follow(self.baseFilename, self.encoding, self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        try:
            super().emit(record)  # opening (on the first record) is outside logging's try
        except OSError as e:
            self._give_up(e)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self._give_up(error)
        else:
            super().handleError(record)

    def _give_up(self, error: OSError) -> None:
        self.failed = True
        stream, self.stream = self.stream, None
        if stream is not None:
            # Closing flushes the records that could not be written, and fails the same way.
            with contextlib.suppress(OSError):
                stream.close()
        print(
            f"warning: cannot write {self.baseFilename} ({error.strerror or error}); "
            "logging to the console only",
            file=sys.stderr,
        )


def holds_run(path: Path) -> bool:
    """Whether a run (of any status) already wrote into ``path``: its saved config, its status
    or its checkpoints. Hydra's log file alone does not count: Hydra opens it before any check."""
    path = Path(path)
    return path.is_dir() and any(
        (path / name).exists() or (path / name).is_symlink()
        for name in (SAVED_CONFIG, METRICS, CHECKPOINTS)
    )


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``<name>.old-<time>`` beside it (never onto an existing path) and
    return where it went; nothing in it is deleted."""
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        dest = run_dir.with_name(f"{run_dir.name}{OLD_SUFFIX}{stamp}" + (f"-{n}" if n else ""))
        if not (dest.exists() or dest.is_symlink()):
            os.rename(run_dir, dest)
            return dest
    raise FileExistsError(f"no free name beside {run_dir} to move it to")


def save_record(run_dir: Path, config: Any, hydra_config: Any, overrides: Sequence[str]) -> None:
    """Write ``.hydra/`` (config, Hydra's config, the command line's overrides) as Hydra would.

    Hydra's own writing is turned off (``hydra.output_subdir: null``): it would overwrite the
    record of a run already in the directory before any check could refuse the new one."""
    from omegaconf import OmegaConf

    for name, node in (
        (SAVED_CONFIG, config),
        (SAVED_HYDRA_CONFIG, hydra_config),
        (SAVED_OVERRIDES, list(overrides)),
    ):
        atomic_write_text(Path(run_dir) / name, OmegaConf.to_yaml(node))


# -- copies of a run's record ------------------------------------------------------------------


def overlaps(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same folder or one holds the other (links resolved)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def copy_record(run_dir: Path, dest: Path) -> None:
    """Replace ``dest`` by a copy of the :data:`RECORD_FILES` of ``run_dir``.

    The copy is made in a new folder beside ``dest`` and renamed into place, so ``dest`` holds
    the old copy or the new one, never a mix. Refused with a UserError, before anything is
    written, when ``dest`` is, holds or lies inside ``run_dir``, when ``dest`` holds anything
    but record files (it would be a run, not an earlier copy), or when a record file is a
    symbolic link (the archive would get whatever it points to).
    """
    run_dir, dest = Path(run_dir), Path(dest)
    if overlaps(run_dir, dest):
        raise UserError(
            f"cannot copy the record of {run_dir} to {dest}: the copy would overwrite the run "
            "itself; choose a destination outside the run directory"
        )
    names = [name for name in RECORD_FILES if _record_file(run_dir, name)]
    if dest.is_symlink() or dest.exists():
        _check_is_record_copy(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    old = tmp.with_suffix(".old")
    tmp.mkdir()
    try:
        for name in names:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / name, tmp / name, follow_symlinks=False)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        if old.exists() and not dest.exists():
            os.replace(old, dest)  # the earlier copy goes back where it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The earlier copy, checked above to hold record files only.
    shutil.rmtree(old, ignore_errors=True)


def _record_file(run_dir: Path, name: str) -> bool:
    """Whether the run has record file ``name``; a UserError when it is a symbolic link or lies
    behind one (``.hydra -> elsewhere``)."""
    path = run_dir / name
    linked = [p for p in (path, path.parent) if p.is_symlink()]
    if linked:
        raise UserError(
            f"{linked[0]} is a symbolic link (to {os.readlink(linked[0])}): refusing to copy "
            "what it points to as the run's record"
        )
    return path.is_file()


def _check_is_record_copy(dest: Path) -> None:
    """A UserError unless ``dest`` is a folder of record files (an earlier copy, safe to
    replace), checked without following links."""
    allowed = set(RECORD_FILES) | {HYDRA_DIR}
    if dest.is_symlink() or not dest.is_dir():
        raise UserError(f"{dest} is not a folder of an earlier record copy: refusing to replace it")
    for dirpath, dirnames, filenames in os.walk(dest):
        for entry in [*dirnames, *filenames]:
            path = Path(dirpath) / entry
            rel = path.relative_to(dest).as_posix()
            if rel not in allowed or path.is_symlink():
                raise UserError(
                    f"{dest} holds {rel}, which is not part of a run's record (it looks like a "
                    "run directory, not an earlier copy): refusing to replace it"
                )


def is_run_dir(path: Path) -> bool:
    """Whether Hydra started a run here (it saved the run's config)."""
    return (Path(path) / SAVED_CONFIG).is_file()


def not_a_run(run_dir: Path) -> str | None:
    """Why ``run_dir`` is not a run directory, as a phrase for an error line; None when it is."""
    if not run_dir.is_dir():
        return f"no such run directory ({run_dir})"
    if not is_run_dir(run_dir):
        return f"{run_dir} is not a har-bench run directory (no {SAVED_CONFIG})"
    return None


# -- the saved config --------------------------------------------------------------------------


def _read_yaml(path: Path) -> Any:
    """A YAML file Hydra wrote, as plain dicts and lists (interpolations kept); None when it is
    missing or unreadable. Read with OmegaConf, which wrote it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OSError, ValueError, YAMLError, OmegaConfBaseException):
        return None


def saved_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed task config (``.hydra/config.yaml``); empty when there is none."""
    config = _read_yaml(Path(run_dir) / SAVED_CONFIG)
    return upgrade_targets(config) if isinstance(config, dict) else {}


def resolved_settings(config: dict[str, Any], groups: Sequence[str]) -> dict[str, Any]:
    """The flattened keys of ``groups`` (``dataset``, ``split``) in a saved config, with
    interpolations resolved where they can be (``dataset.seed: ${seed}`` is the run's seed);
    a value that cannot be resolved here (an environment variable since unset) stays as saved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = OmegaConf.create(config)
    out = {}
    for key, raw in flatten({g: config.get(g) for g in groups if g in config}).items():
        try:
            value = OmegaConf.select(node, key, throw_on_missing=True)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException:
            value = raw
        out[key] = value
    return out


def saved_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides the run was started with."""
    overrides = _read_yaml(Path(run_dir) / SAVED_OVERRIDES)
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def saved_cwd(run_dir: Path) -> Path | None:
    """The directory the run was started in (relative paths in its config are from there)."""
    hydra_cfg = _read_yaml(Path(run_dir) / SAVED_HYDRA_CONFIG) or {}
    cwd = (hydra_cfg.get("hydra", {}).get("runtime", {}) or {}).get("cwd")
    return Path(str(cwd)) if cwd else None


def saved_choices(run_dir: Path) -> dict[str, str]:
    """The option chosen per config group (``model: resnext_har``) when the run started."""
    hydra_cfg = _read_yaml(Path(run_dir) / SAVED_HYDRA_CONFIG) or {}
    choices = (hydra_cfg.get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
    return {str(k): str(v) for k, v in choices.items() if v is not None}


# -- a run, read back --------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What a run dir says about its run; missing files read as empty."""

    path: Path
    status: str  # one of STATUSES, or "missing" without metrics.json
    error: str | None
    user_error: bool  # the failure was bad input (see har_bench.core.errors)
    config: dict[str, Any]
    choices: dict[str, str]
    overrides: list[str]
    # metrics.json, model_summary.json and timings.json, by file name.
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_record(run_dir: Path) -> RunRecord:
    run_dir = Path(run_dir)
    documents = {}
    for name in (METRICS, MODEL_SUMMARY, TIMINGS):
        doc = _read_json_or_none(run_dir / name)
        documents[name] = doc if isinstance(doc, dict) else {}
    metrics = documents[METRICS]
    return RunRecord(
        path=run_dir,
        status=str(metrics.get("status", "missing")),
        error=metrics.get("error"),
        user_error=bool(metrics.get("user_error", False)),
        config=saved_config(run_dir),
        choices=saved_choices(run_dir),
        overrides=saved_overrides(run_dir),
        documents=documents,
    )
