"""The ``har-bench`` command.

``har-bench [overrides]`` trains through Hydra; non-training verbs (``har-bench compare ...``)
are dispatched before Hydra sees the command line. Heavy imports (torch) happen only once a run
starts, so ``har-bench --help`` stays fast.

Exit codes: 0 done; 2 bad input (one ``error:`` line on stderr, no traceback); 1 the run failed
(diverged, or a bug: one line saying so on stderr, the traceback in the run's error.txt);
130 / 143 stopped by SIGINT / SIGTERM (the command that resumes the run is printed). A sweep runs every job even when
some fail, then exits 2 (all failures were bad input) or 1.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from har_bench import rundir
from har_bench.config import CONFIG_NAME, VERSION_BASE, compose, config_dir
from har_bench.errors import UserError, bug_message

# Verbs other than training: name -> callable taking the remaining argv, returning an exit code.
VERBS: dict[str, Callable[[Sequence[str]], int]] = {}


def _compare(argv: Sequence[str]) -> int:
    from har_bench.compare import main as compare_main  # pandas/rich only when asked for

    return compare_main(argv)


VERBS["compare"] = _compare


def _results(argv: Sequence[str]) -> int:
    from har_bench.results import main as results_main

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


@dataclass
class _Sweep:
    jobs: int = 0
    failures: list[bool] = field(default_factory=list)  # per failed job: was it bad input?


_SWEEP = _Sweep()


def _train(cfg: object) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from har_bench.components import as_user_error
    from har_bench.config import hydra_choices
    from har_bench.engine import DivergedError
    from har_bench.run import run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    _SWEEP.jobs += 1
    try:
        result = run(cfg, run_dir, hydra_choices())  # type: ignore[arg-type]
    except KeyboardInterrupt as e:
        _report_interrupt(e, run_dir, multirun)
        raise SystemExit(getattr(e, "exit_code", 130)) from None
    except Exception as e:
        user_error = as_user_error(e)
        user = user_error is not None
        diverged = isinstance(e, DivergedError)
        if multirun:
            # Hydra's launcher would record the exception and the sweeper re-raise it after the
            # batch (traceback, exit 1, later batches never run). The job's own dir already
            # says failed/diverged (+ error.txt); note it and let the sweep go on.
            where = "" if user or diverged else f" (traceback in {run_dir / rundir.ERROR})"
            overrides = " ".join(hc.overrides.task)
            print(
                f"error: job {hc.job.num} ({overrides}): {user_error or e}{where}", file=sys.stderr
            )
            _SWEEP.failures.append(user)
            # None, not NaN: hydra-optuna-sweeper (optuna 2.x) then marks the trial failed and
            # goes on; a NaN makes optuna's tell() raise and the sweeper crash on its retry.
            return None
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
            from har_bench.sweep import job_finished

            job_finished()
    # Returned to Hydra (and to sweepers such as Optuna): the validation metric, never test.
    return result.get("best_val_metric")


def _report_interrupt(e: KeyboardInterrupt, run_dir: Path, multirun: bool) -> None:
    name = getattr(e, "signal_name", "SIGINT")
    saved = getattr(e, "saved", None)
    command = rundir.resume_command(run_dir)
    if command is None:
        msg = f"interrupted by {name} before the first checkpoint; nothing to resume"
    else:
        held = saved or "the latest saved state"
        last = rundir.last_checkpoint(run_dir).relative_to(run_dir)
        msg = f"interrupted by {name}; {last} holds {held}. Resume with:\n  {command}"
    if multirun:
        msg += "\n(the sweep stopped here; later jobs did not run)"
    print(msg, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int | None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in VERBS:
        return VERBS[args[0]](args[1:])
    import hydra

    _SWEEP.jobs, _SWEEP.failures = 0, []
    from har_bench import sweep

    sweep.LAST = None
    try:
        with _hydra_raises():
            if "WORLD_SIZE" in os.environ:  # a torchrun worker (har_bench/distributed.py)
                from har_bench.distributed import prepare_process

                args = prepare_process(args)
            if any("trainer.resume" in a for a in args):
                from har_bench.resume import prepare

                args = prepare(args)
            if any("hydra.run.dir" in a for a in args):
                from har_bench.resume import lock_run_dir

                lock_run_dir(args)
            sys.argv = [sys.argv[0], *args]
            hydra.main(
                version_base=VERSION_BASE, config_path=str(config_dir()), config_name=CONFIG_NAME
            )(_train)()
    except Exception as e:
        msg = describe_config_error(e, args)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if not _SWEEP.jobs and sweep.LAST is not None:
        # The jobs ran in other processes (joblib, submitit): the sweep summary read their
        # statuses from their run dirs.
        _SWEEP.jobs, _SWEEP.failures = sweep.LAST.jobs, list(sweep.LAST.failures)
    if _SWEEP.failures:
        n, total = len(_SWEEP.failures), _SWEEP.jobs
        print(
            f"error: {n} of {total} sweep jobs failed (see the error lines above; each job's "
            f"directory has {rundir.METRICS} with its status)",
            file=sys.stderr,
        )
        return 2 if all(_SWEEP.failures) else 1
    return 0


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


def describe_config_error(e: BaseException, args: Sequence[str]) -> str | None:
    """One line for a composition error (unknown option, unknown key, bad override syntax) or
    a refused resume; None for anything else (a bug keeps its traceback)."""
    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    # A refused resume, or a run dir another process trains in: before Hydra starts.
    if isinstance(e, UserError):
        return str(e)
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if isinstance(e, MissingConfigException):
        group, _, name = (e.missing_cfg_file or "").rpartition("/")
        if group and e.options:
            options = sorted(str(o) for o in e.options)
            msg = f"{group}={name} is unknown: expected one of {', '.join(options)}"
            close = _closest(name, options)
            return msg + (f" (did you mean {group}={close}?)" if close else "")
        return first
    if isinstance(e, OverrideParseException):
        bad = _unparsable(args)
        return (
            f"cannot parse the override {bad!r} ({first}); quote values with special "
            "characters, e.g. 'dataset.root=\"/data/UCI HAR Dataset\"'"
            if bad
            else first
        )
    if isinstance(e, ConfigCompositionException):
        m = re.match(r"Could not override '([^']+)'", text)
        cause = e.__cause__
        if m and cause is not None and "not in struct" in str(cause):
            key = m[1]
            close = closest_key(key, args)
            param = (close or "").removeprefix("hydra.sweeper.params.")
            if close and param != close and "." in param:
                # A sweeper's param named "a.b" is one key holding a dot, which no dotted
                # override path reaches; the command line's own sweep replaces it.
                hint = f"; sweep that parameter as `-m {param}=...`, which wins over the preset's"
            else:
                hint = f"; did you mean {close}?" if close else ""
            return f"{key} is not a config key{hint} (har-bench --help lists every key)"
        if m and cause is not None:
            return f"cannot set {m[1]}: {str(cause).strip().splitlines()[0]}"
        return " ".join(line.strip() for line in text.splitlines()[:2])
    if isinstance(e, HydraException | OmegaConfBaseException):
        return first
    return None


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def _unparsable(args: Sequence[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for a in args:
        if a.startswith("-"):
            continue
        try:
            parser.parse_override(a)
        except Exception:
            return a
    return None


def closest_key(key: str, args: Sequence[str]) -> str | None:
    """The existing config key nearest to a misspelled one, looked up in the config the
    command's group choices (model=..., dataset=...) give, siblings first."""
    from omegaconf import OmegaConf

    choices = [a for a in args if "=" in a and "." not in a.split("=", 1)[0] and a[0] not in "+~-"]
    cfg = None
    for overrides in (choices, []):
        try:
            cfg = compose(overrides, return_hydra_config=True)
            break
        except Exception:
            continue
    if cfg is None:
        return None
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k in node:
            full = f"{prefix}{k}"
            keys.append(full)
            child = OmegaConf.select(node, str(k), throw_on_resolution_failure=False)
            if OmegaConf.is_dict(child):
                walk(child, full + ".")

    walk(cfg, "")
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    if parent and siblings:
        close = _closest(leaf, siblings)
        if close:
            return f"{parent}.{close}"
    return _closest(key, keys)


if __name__ == "__main__":
    sys.exit(main())
