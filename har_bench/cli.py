"""The ``har-bench`` command.

``har-bench [overrides]`` trains through Hydra; non-training verbs (``har-bench compare ...``)
are dispatched before Hydra sees the command line. Heavy imports (torch) happen only once a run
starts, so ``har-bench --help`` stays fast.

Exit codes: 0 done; 2 bad input (one ``error:`` line on stderr, no traceback); 1 the run failed
(diverged, or a bug: one line saying so on stderr, the traceback in the run's error.txt); 74 the
machine refused a write into the run directory (disk full, over quota, read-only or failing
filesystem: one ``error:`` line naming the file, the run marked failed, the command that resumes
it from its last checkpoint); 130 / 143 stopped by SIGINT / SIGTERM (the command that resumes
the run is printed; a stop while starting says so). A sweep runs every job even when some fail,
then exits 2 (all failures were bad input) or 1; re-run into its directory, it skips the jobs
that completed.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from har_bench.config import CONFIG_NAME, VERSION_BASE, config_dir, describe_config_error
from har_bench.core.errors import UserError, bug_message
from har_bench.core.fs import storage_failure
from har_bench.runs import rundir
from har_bench.training.signals import Interrupted

# sysexits.h's EX_IOERR: neither bad input (2) nor a bug (1), but the disk.
EXIT_WRITE_FAILED = 74

# Verbs other than training: name -> callable taking the remaining argv, returning an exit code.
VERBS: dict[str, Callable[[Sequence[str]], int]] = {}


def _compare(argv: Sequence[str]) -> int:
    from har_bench.analysis.compare import main as compare_main  # pandas/rich only when asked for

    return compare_main(argv)


VERBS["compare"] = _compare


def _results(argv: Sequence[str]) -> int:
    from har_bench.analysis.results import main as results_main

    return results_main(argv)


VERBS["results"] = _results


def _export(argv: Sequence[str]) -> int:
    from har_bench.deploy.export import main as export_main  # torch/onnx only when asked for

    return export_main(argv)


VERBS["export"] = _export


def _predict(argv: Sequence[str]) -> int:
    from har_bench.deploy.predict import main as predict_main

    return predict_main(argv)


VERBS["predict"] = _predict


def _ensemble(argv: Sequence[str]) -> int:
    from har_bench.analysis.ensemble import main as ensemble_main

    return ensemble_main(argv, _recompute_test_predictions)


def _recompute_test_predictions(run_dir: Path) -> Any:
    # torch only for a member from before runs saved their test predictions.
    from har_bench.deploy.loaded import recompute_test_predictions

    return recompute_test_predictions(run_dir)


VERBS["ensemble"] = _ensemble


@dataclass
class Tally:
    """The jobs this process ran (one for a single run) and how the failed ones failed."""

    jobs: int = 0
    failures: list[bool] = field(default_factory=list)  # per failed job: was it bad input?


def _train(cfg: object, tally: Tally) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from har_bench.config import as_user_error, hydra_choices
    from har_bench.experiment.run import run
    from har_bench.training.session import DivergedError

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    tally.jobs += 1
    try:
        completed = _make_way(run_dir, cfg, multirun)
        if completed is not None:
            return completed.get("best_val_metric")

        result = run(
            cfg,  # type: ignore[arg-type]
            run_dir,
            hydra_choices(),
            on_start=lambda: _save_record(run_dir, cfg),
        )
    except KeyboardInterrupt as e:
        _report_interrupt(e, run_dir, multirun)
        raise SystemExit(getattr(e, "exit_code", 130)) from None
    except Exception as e:
        user_error = as_user_error(e)
        user = user_error is not None
        diverged = isinstance(e, DivergedError)
        write_failed = storage_failure(e, run_dir)
        if write_failed is not None:
            write_failed = _after_write_failure(write_failed, run_dir)
        if multirun:
            # Hydra's launcher would record the exception and the sweeper re-raise it after the
            # batch (traceback, exit 1, later batches never run). The job's own dir already
            # says failed/diverged (+ error.txt); note it and let the sweep go on.
            plain = user or diverged or write_failed is not None
            what = (
                write_failed
                or user_error
                or (e if plain else bug_message(e, run_dir / rundir.ERROR))
            )
            overrides = " ".join(hc.overrides.task)
            print(f"error: job {hc.job.num} ({overrides}): {what}", file=sys.stderr)
            tally.failures.append(user)
            # None, not NaN: hydra-optuna-sweeper (optuna 2.x) then marks the trial failed and
            # goes on; a NaN makes optuna's tell() raise and the sweeper crash on its retry.
            return None
        if write_failed is not None:
            print(f"error: {write_failed}", file=sys.stderr)
            raise SystemExit(EXIT_WRITE_FAILED) from None
        if user:
            print(f"error: {user_error}", file=sys.stderr)
            raise SystemExit(2) from None
        if diverged:
            print(f"error: {e} (artifacts so far kept in {run_dir})", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"error: {bug_message(e, run_dir / rundir.ERROR)}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if multirun:
            from har_bench.analysis.sweep import job_finished

            job_finished()
    # Returned to Hydra (and to sweepers such as Optuna): the validation metric, never test.
    return result.get("best_val_metric")


def _after_write_failure(failure: str, run_dir: Path) -> str:
    """A refused write, with what the run dir now says and how to go on, as one line."""
    if rundir.read_status(run_dir).get("status") == "failed":
        state = "the run is marked failed"
    else:  # recording the failure needed the disk too
        state = f"{rundir.METRICS} could not be updated"
    command = rundir.resume_command(run_dir)
    then = f"resume with: {command}" if command else "start the run again"
    return f"{failure} ({state}; once the disk takes writes again, {then})"


def _make_way(run_dir: Path, cfg: Any, multirun: bool) -> dict[str, Any] | None:
    """Lock the run dir and check that the run may start there (see
    :func:`har_bench.runs.resume.check_new_run`); the metrics of a sweep job that already
    completed (then skipped), else None."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from har_bench.runs.resume import OVERWRITE_KEY, check_new_run
    from har_bench.training import distributed

    def job() -> str:  # a sweep's job (a single run has no job number)
        hc = HydraConfig.get()
        return f"job {hc.job.num} ({' '.join(hc.overrides.task)})"

    rundir.claim(run_dir)  # before the check: another process's run is "in use", not "done"
    try:
        start = check_new_run(run_dir, OmegaConf.to_container(cfg, resolve=False), multirun)
    except BaseException as e:
        rundir.release(run_dir)
        if isinstance(e, UserError) and multirun and distributed.enabled():
            # The other ranks write throw-away dirs and cannot see this one: going on to the
            # next job would pair this rank's next job with their current one. Stop them all.
            print(f"error: {job()}: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    if start.completed is not None:
        rundir.release(run_dir)
        if distributed.enabled():
            print(
                f"error: {job()}: already completed in {run_dir}; a sweep under torchrun cannot "
                "skip jobs (its other ranks cannot see this one): give a new hydra.sweep.dir "
                "or run the missing jobs on their own",
                file=sys.stderr,
            )
            raise SystemExit(2)
        print(f"{job()}: already completed in {run_dir}; skipped", file=sys.stderr)
        return start.completed
    if start.moved_to is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        _reopen_logs(run_dir)
        print(
            f"{OVERWRITE_KEY}=true: moved the run that was in {run_dir} to {start.moved_to}",
            file=sys.stderr,
        )
    return None


def _save_record(run_dir: Path, cfg: Any) -> None:
    """``.hydra/`` as Hydra writes it (its own writing is off: see configs/hydra/default.yaml)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
    with read_write(hydra_cfg.hydra), open_dict(hydra_cfg.hydra):
        hydra_cfg.hydra.output_subdir = rundir.HYDRA_DIR  # where the record went
    rundir.save_record(run_dir, cfg, hydra_cfg, list(HydraConfig.get().overrides.task))


def _reopen_logs(run_dir: Path) -> None:
    """Point the log files Hydra opened in ``run_dir`` at the new run once the old run was
    moved aside: a closed FileHandler opens its file again, at its path, on the next record."""
    import logging

    for handler in logging.getLogger().handlers:
        # baseFilename is absolute, as Hydra's output dir is; neither has symlinks resolved.
        if (
            isinstance(handler, logging.FileHandler)
            and Path(handler.baseFilename).parent == run_dir
        ):
            handler.close()


def _report_interrupt(e: KeyboardInterrupt, run_dir: Path, multirun: bool) -> None:
    name = getattr(e, "signal_name", "SIGINT")
    saved = getattr(e, "saved", None)
    command = rundir.resume_command(run_dir)
    if command is None:
        msg = f"interrupted by {name} before the first checkpoint; nothing to resume"
    elif rundir.stopped_in_selection(run_dir):
        where = rundir.selection_dir(run_dir).relative_to(run_dir)
        msg = (
            f"interrupted by {name} while selection=kfold scored its folds; {where} holds the "
            f"scores so far. Resume with:\n  {command}"
        )
    else:
        held = saved or "the latest saved state"
        last = rundir.last_checkpoint(run_dir).relative_to(run_dir)
        msg = f"interrupted by {name}; {last} holds {held}. Resume with:\n  {command}"
    if multirun:
        msg += "\n(the sweep stopped here; later jobs did not run)"
    print(msg, file=sys.stderr)


# What a shell reports for a writer stopped by SIGPIPE (128 + 13), as `cmd | head` expects.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int | None:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of stdout stopped early (`har-bench predict ... | head`): not an error of
        # the command. Python would print a traceback, then another one when it flushes stdout
        # at exit; pointing stdout at /dev/null leaves that flush nothing to fail on.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int | None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in VERBS:
        return VERBS[args[0]](args[1:])
    import hydra

    from har_bench.analysis import sweep

    tally = Tally()

    def task(cfg: object) -> float | None:  # Hydra's task function: the config, nothing else
        return _train(cfg, tally)

    os.environ.pop(sweep.SWEEP_DIR_ENV, None)
    try:
        with _hydra_raises(), _stop_on_signals_while_starting():
            if "WORLD_SIZE" in os.environ:  # a torchrun worker (har_bench/training/distributed.py)
                from har_bench.training.distributed import worker_args

                args = worker_args(args)
            if any("trainer.resume" in a for a in args):
                from har_bench.runs.resume import resolve_resume

                args = resolve_resume(args)
            if any("hydra.run.dir" in a for a in args):
                from har_bench.runs.resume import lock_run_dir

                lock_run_dir(args)
            sys.argv = [sys.argv[0], *args]
            hydra.main(
                version_base=VERSION_BASE, config_path=str(config_dir()), config_name=CONFIG_NAME
            )(task)()
    except KeyboardInterrupt as e:
        name = getattr(e, "signal_name", "SIGINT")
        if not tally.jobs:
            msg = f"stopped by {name} while starting, before any training; nothing to resume"
        else:
            msg = f"stopped by {name}; each job's directory records how its run ended"
        print(msg, file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except BrokenPipeError:
        raise  # stdout's reader went away (--help | head): see main
    except Exception as e:
        write_failed = storage_failure(e)  # Hydra's own writes (.hydra/) before the run starts
        if write_failed is not None:
            print(f"error: {write_failed}", file=sys.stderr)
            return EXIT_WRITE_FAILED
        msg = describe_config_error(e, args)
        # A run's own exceptions end in _train; an OSError here came from setting the run up.
        if msg is None and isinstance(e, OSError):
            msg = describe_output_error(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    sweep_dir = os.environ.pop(sweep.SWEEP_DIR_ENV, None)
    if not tally.jobs and sweep_dir is not None:
        # The jobs ran in other processes (joblib, submitit): their run dirs say how they ended.
        outcome = sweep.outcome(Path(sweep_dir))
        tally = Tally(outcome.jobs, list(outcome.failures))
    if tally.failures:
        n, total = len(tally.failures), tally.jobs
        print(
            f"error: {n} of {total} sweep jobs failed (see the error lines above; each job's "
            f"directory has {rundir.METRICS} with its status)",
            file=sys.stderr,
        )
        return 2 if all(tally.failures) else 1
    return 0


@contextmanager
def _stop_on_signals_while_starting() -> Any:
    """SIGINT/SIGTERM raise :class:`Interrupted` until the run takes over (it installs its
    own handlers), so a stop while starting (importing torch, composing) is reported.

    The main process of a joblib sweep keeps SIGTERM's default: its workers notice that it is
    gone and stop their jobs with a checkpoint (har_bench.analysis.sweep), where an exception here
    would make joblib kill them outright."""
    import signal

    from har_bench.analysis.sweep import MAIN_PID_ENV
    from har_bench.training.signals import signal_handlers

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM and os.environ.get(MAIN_PID_ENV) == str(os.getpid()):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Interrupted(signum)

    with signal_handlers(handler):
        yield


@contextmanager
def _hydra_raises() -> Any:
    """Make Hydra raise its errors instead of printing them and exiting 1, so they can be
    reworded here. A user who set HYDRA_FULL_ERROR keeps Hydra's own output."""
    if "HYDRA_FULL_ERROR" in os.environ:
        yield
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def describe_output_error(e: OSError) -> str:
    """One line for a run or sweep directory Hydra could not create or write into (a file is
    in its place, a read-only or virtual filesystem, no permission)."""
    import errno

    reason = {
        errno.EEXIST: "a file is in the way of the folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }.get(e.errno or 0, e.strerror or str(e))
    where = e.filename if e.filename is not None else "the run directory"
    return (
        f"cannot create or write {where}: {reason}; set hydra.run.dir (hydra.sweep.dir for "
        "-m) to a folder you can write"
    )


if __name__ == "__main__":
    sys.exit(main())
