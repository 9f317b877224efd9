"""har-bench from Python: train a run, read a finished one back, predict with it, compare runs.

The same code paths as the command: :func:`train` composes the config the ``har-bench``
command line would (:func:`har_bench.config.compose`), checks the run directory with the same
guards and runs :func:`har_bench.experiment.run.run`; :meth:`Run.predict` is
``har-bench predict``'s :class:`~har_bench.deploy.predict.Predictor`; :func:`compare` is
``har-bench compare``'s grouping. Bad input raises :class:`~har_bench.core.errors.UserError`
with the one line the command would print; nothing here calls ``sys.exit``.

    >>> import har_bench
    >>> run = har_bench.train({"dataset": "synthetic", "trainer.max_epochs": 1})
    >>> run.metrics["test"]["accuracy"]
    >>> run.predict(windows)          # [N, channels, window] raw windows -> DataFrame
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from har_bench.core.errors import UserError
from har_bench.runs import rundir

if TYPE_CHECKING:
    from torch import nn

    from har_bench.deploy.predict import Predictor

__all__ = ["Run", "UserError", "compare", "load_run", "train"]

log = logging.getLogger(__name__)


# -- train -------------------------------------------------------------------------------------


def override_list(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """Overrides as the command line gives them: a list as is, a dict as ``key=value`` each
    (values written in Hydra's override grammar: ``True`` -> ``true``, lists as ``[a,b]``)."""
    if isinstance(overrides, str):
        raise UserError(
            f"overrides={overrides!r}: expected a list of overrides (['model=resnet18', ...]) "
            "or a dict ({'model': 'resnet18', ...}), not one string"
        )
    if isinstance(overrides, Mapping):
        return [f"{key}={override_value(value)}" for key, value in overrides.items()]
    return [str(o) for o in overrides]


def override_value(value: Any) -> str:
    from har_bench.runs.resume import hydra_quote

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    return hydra_quote(str(value))


def train(
    overrides: Sequence[str] | Mapping[str, Any] = (), run_dir: str | Path | None = None
) -> Run:
    """Train and evaluate one run, as ``har-bench OVERRIDES`` does, and return it.

    ``overrides`` are the command line's (``["model=resnet18", "trainer.max_epochs=5"]``) or a
    dict of them; ``run_dir`` is ``hydra.run.dir`` (default: a new timestamped folder under
    ``paths.output_dir``). A sweep (``-m``, a comma-separated value list, a preset that sets
    ``hydra.mode=MULTIRUN``) is refused: call :func:`train` once per setting. Bad input raises
    :class:`UserError`; a run that fails otherwise re-raises its exception, with its run dir
    saying how it ended, as the command's does.
    """
    from har_bench.config import as_user_error, compose, describe_config_error
    from har_bench.runs.resume import hydra_quote, resolve_resume

    args = override_list(overrides)
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise UserError(
            f"{' '.join(flags)}: har_bench.train takes overrides only (key=value); a sweep "
            "(-m) is one train() call per setting"
        )
    swept = [o for o in args if is_sweep_override(o)]
    if swept:
        raise UserError(
            f"{swept[0]} lists several values (a sweep): har_bench.train runs one run; call it "
            "once per value"
        )
    if run_dir is not None:
        path = Path(run_dir).expanduser().resolve()
        args.append(f"hydra.run.dir={hydra_quote(str(path))}")
    locked: Path | None = None
    try:
        resolved = resolve_resume(args)  # the command line's resume checks; locks that run
        if resolved != args:
            locked = explicit_run_dir(resolved)
        args = resolved
        full = compose(args, return_hydra_config=True)
    except Exception as e:
        release_if_locked(locked)
        msg = describe_config_error(e, args)
        if msg is None:
            raise
        raise UserError(msg) from e
    try:
        return run_composed(full)
    except Exception as e:
        user_error = as_user_error(e)
        if user_error is not None and user_error is not e:
            raise user_error from e
        raise
    finally:
        release_if_locked(locked)


def explicit_run_dir(args: Sequence[str]) -> Path | None:
    """The ``hydra.run.dir`` the overrides give (the last one), when it has no interpolation."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = [
        p.value()
        for p in OverridesParser.create().parse_overrides(list(args))
        if p.key_or_group == "hydra.run.dir"
    ]
    if not values or "${" in str(values[-1]):
        return None
    return Path(str(values[-1])).expanduser()


def release_if_locked(run_dir: Path | None) -> None:
    from har_bench.core.fs import release_lock

    if run_dir is not None:
        release_lock(run_dir)


def run_composed(full: DictConfig) -> Run:
    """The composed config (``hydra`` node included) run as Hydra's job would run it: the
    run dir from ``hydra.run.dir``, its checks, ``.hydra/`` saved, ``train.log`` written."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from har_bench.experiment.run import run
    from har_bench.runs.resume import check_new_run

    sweep = full.hydra.get("sweeper", {}).get("params") or {}
    if full.hydra.mode == RunMode.MULTIRUN or sweep:
        raise UserError(
            "the overrides make a sweep (hydra.mode=MULTIRUN or hydra.sweeper.params, e.g. "
            "from an experiment preset): har_bench.train runs one run; run the sweep with "
            "`har-bench -m ...`, or call train() once per setting"
        )
    HydraConfig.instance().set_config(full)
    run_dir = Path(str(full.hydra.run.dir)).expanduser().resolve()
    # As Hydra's run: one job whose output dir is the run dir; the task gets no hydra node.
    with read_write(full.hydra), open_dict(full.hydra):
        full.hydra.runtime.output_dir = str(run_dir)
        if full.hydra.mode is None:
            full.hydra.mode = RunMode.RUN
            full.hydra.overrides.hydra.append("hydra.mode=RUN")
    HydraConfig.instance().set_config(full)
    cfg = copy.deepcopy(full)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    choices = {str(k): str(v) for k, v in full.hydra.runtime.choices.items() if v is not None}
    overrides = [str(o) for o in full.hydra.overrides.task]

    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.claim(run_dir)
    try:
        start = check_new_run(run_dir, OmegaConf.to_container(cfg, resolve=False), False)
        if start.moved_to is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            warnings.warn(
                f"trainer.overwrite=true: moved the run that was in {run_dir} to {start.moved_to}",
                stacklevel=3,
            )

        def save_record() -> None:
            hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
            with read_write(hydra_cfg.hydra), open_dict(hydra_cfg.hydra):
                hydra_cfg.hydra.output_subdir = rundir.HYDRA_DIR
            rundir.save_record(run_dir, cfg, hydra_cfg, overrides)

        with run_log(run_dir, full):
            run(cfg, run_dir, choices, on_start=save_record)
    finally:
        rundir.release(run_dir)
    return load_run(run_dir)


def is_sweep_override(override: str) -> bool:
    """``seed=0,1`` or ``seed=range(3)``: several values, which only a sweep runs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).is_sweep_override()
    except Exception:
        return False


class run_log:
    """``<run dir>/train.log`` during the run, formatted as the command's (its job_logging
    config), added to the root logger without touching the caller's own handlers."""

    def __init__(self, run_dir: Path, full: DictConfig) -> None:
        logging_cfg = full.hydra.job_logging
        fmt = OmegaConf.select(logging_cfg, "formatters.simple.format", default=None)
        name = f"{full.hydra.job.name}.log"
        self.handler = rundir.LogFileHandler(str(run_dir / name))
        self.handler.setFormatter(logging.Formatter(fmt))
        self.root = logging.getLogger()
        self.level = self.root.level

    def __enter__(self) -> None:
        self.root.addHandler(self.handler)
        if self.root.getEffectiveLevel() > logging.INFO:
            self.root.setLevel(logging.INFO)

    def __exit__(self, *exc: object) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.level)
        self.handler.close()


# -- a finished run ----------------------------------------------------------------------------


class Run:
    """A run directory read back. ``config``, ``metrics``, ``history`` and
    ``confusion_matrix`` are its files; :meth:`model` and :meth:`predict` need a completed run
    of a neural model (MiniRocket is fitted outside the training loop and has no torch
    weights)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        m = self.metrics
        return f"Run({str(self.path)!r}, model={m.get('model')}, dataset={m.get('dataset')})"

    @cached_property
    def config(self) -> DictConfig:
        """The run's composed config (``.hydra/config.yaml``), interpolations kept."""
        return OmegaConf.create(rundir.saved_config(self.path))

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: status, validation and test figures, calibration."""
        return rundir.read_status(self.path)

    @cached_property
    def history(self) -> pd.DataFrame:
        """One row per epoch (``history.csv``: losses, accuracies, learning rate, time);
        empty for a model fitted outside the training loop."""
        path = self.path / rundir.HISTORY
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    @cached_property
    def confusion_matrix(self) -> pd.DataFrame:
        """Test-set counts, rows the true class, columns the predicted one, by class name."""
        return pd.read_csv(self.path / rundir.CONFUSION_CSV, index_col=0)

    @cached_property
    def reject_curve(self) -> pd.DataFrame:
        """Per threshold P of ``--reject``: coverage and accuracy on the test set (empty for a
        run trained before runs were calibrated)."""
        path = self.path / rundir.REJECT_CURVE_CSV
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    @cached_property
    def predictor(self) -> Predictor:
        from har_bench.deploy.predict import Predictor

        predictor = Predictor(self.path)
        for note in predictor.notes:
            warnings.warn(note, stacklevel=3)
        return predictor

    def model(self) -> nn.Module:
        """The torch module with the weights the run tested, in eval mode on the CPU; it takes
        standardised windows (``predict`` standardises raw ones)."""
        return self.predictor.model

    def predict(
        self,
        windows: np.ndarray | pd.DataFrame,
        *,
        reject: float | None = None,
        step: int | None = None,
        time_column: str = "time",
        time_unit: str = "s",
        label_column: str | None = "label",
    ) -> pd.DataFrame:
        """Calibrated predictions, as ``har-bench predict`` makes them.

        ``windows`` is either raw windows ``[N, channels, window]`` in the run's channel order
        (standardised here with the run's training statistics) or a recording table (a time
        column and one column per channel, as the CSV ``har-bench predict --input`` reads),
        cut into the run's windows. One row per window: ``predicted`` (``unknown`` below the
        ``reject`` probability) and ``p_<class>``; a recording adds the window's start and
        end (and ``true`` with a label column).
        """
        from har_bench.core.calibration import check_reject
        from har_bench.deploy.predict import predict_stream
        from har_bench.deploy.recording import recording_from_frame

        p = check_reject(reject, "reject") if reject is not None else None
        if isinstance(windows, pd.DataFrame):
            predictor = self.predictor
            stream = recording_from_frame(
                windows, predictor.prep, "the DataFrame", time_column, time_unit, label_column
            )
            table, _ = predict_stream(predictor, stream, step=step, reject=p)
            return table
        return self.predictor.window_table(np.asarray(windows), reject=p)


def load_run(path: str | Path) -> Run:
    """The completed run in ``path``; a :class:`UserError` naming the problem when ``path`` is
    no run directory or its run did not complete (how it ended, and the way on)."""
    from har_bench.deploy.loaded import check_completed  # torch: loaded with the deploy layer

    run_dir = Path(path).expanduser().resolve()
    check_completed(run_dir)
    return Run(run_dir)


# -- compare -----------------------------------------------------------------------------------


def compare(
    paths: str | Path | Iterable[str | Path], metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """``har-bench compare PATHS``'s table: one row per configuration, its swept keys, the
    number of completed runs and mean / std / n of each metric over them (the numbers of
    ``comparison.csv``). ``paths``: run dirs, sweep dirs, folders holding runs or globs."""
    from har_bench.analysis.grouping import DEFAULT_METRICS, METRICS, find_run_dirs
    from har_bench.analysis.grouping import compare as group_runs
    from har_bench.analysis.grouping import load_run as load_record
    from har_bench.analysis.tables import csv_rows

    wanted = list(metrics) if metrics is not None else list(DEFAULT_METRICS)
    unknown = [m for m in wanted if m not in METRICS]
    if unknown or not wanted:
        raise UserError(
            f"metrics: unknown {', '.join(unknown) or '(none given)'}; expected some of "
            + ", ".join(METRICS)
        )
    given = [paths] if isinstance(paths, str | Path) else list(paths)
    run_dirs = find_run_dirs(given)
    if not run_dirs:
        raise UserError(
            f"no runs (folders with {rundir.METRICS}) under {', '.join(map(str, given))}"
        )
    comp = group_runs([load_record(d) for d in run_dirs])
    header, rows = csv_rows(comp, wanted, comp.groups)
    return pd.DataFrame(rows, columns=header)
