"""One experiment: config -> typed components -> stages -> reporters, with a status either way.

:func:`run` owns the run dir's lock and its status; ``_run`` chains the stages (``prepare``,
``build``, ``fit``, ``evaluate``). Hydra and OmegaConf stop at :mod:`.components`: the stages are
plain typed Python, and the group choices (``model=...``) arrive as an argument.
"""

from __future__ import annotations

import contextlib
import os
import socket
import traceback
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from har_bench.config import as_user_error
from har_bench.core.seeding import seed_everything
from har_bench.experiment.build import build_model, finetune_record
from har_bench.experiment.components import from_config, selection_from_config
from har_bench.experiment.evaluate import (
    best_weights_scorer,
    calibrate,
    collect_result,
    estimator_scorer,
    evaluate,
    measure,
)
from har_bench.experiment.fit import (
    apply_step_budget,
    estimator_held_out_scores,
    fit,
    fit_estimator,
    load_resume,
    refit,
    write_environment,
)
from har_bench.experiment.prepare import check_selection, prepare_data
from har_bench.experiment.reporters import default_reporters
from har_bench.experiment.select import merged_validation, select
from har_bench.experiment.spec import Choices, Experiment, Selection
from har_bench.runs import rundir
from har_bench.runs.tracking import require_mlflow
from har_bench.training.checkpoint import check_resume_state
from har_bench.training.session import DivergedError
from har_bench.training.signals import Interrupted, stop_on_signals


def run(
    cfg: DictConfig,
    run_dir: Path,
    choices: Mapping[str, str] | None = None,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate the configured model; write every artifact into ``run_dir``.

    ``choices`` are the config groups' options (``{"model": "resnext50", ...}``), which the
    caller reads from Hydra; they name the model and dataset in the results. ``on_start`` is
    called once the run may start, before its first write (the CLI saves ``.hydra/`` there).

    Whatever happens, the run dir keeps what was written so far and ``metrics.json`` ends with
    a status: ``completed``; ``interrupted`` (SIGINT/SIGTERM, with the command that resumes
    it); ``diverged`` (NaN/inf loss, with epoch, step and a hint); or ``failed`` with the
    message, the traceback in ``error.txt``. Only SIGKILL or a power cut leave ``running``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    # The CLI takes this lock before Hydra writes .hydra/ (har_bench.runs.resume.lock_run_dir);
    # taken here too for callers from Python. The other process's status must stay its own.
    rundir.claim(run_dir)
    try:
        with stop_on_signals():
            _check_resume(cfg, run_dir)
            if on_start is not None:
                on_start()
            return _run_with_status(cfg, run_dir, Choices.of(choices))
    finally:
        rundir.release(run_dir)


def _check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """A resume whose checkpoint cannot be loaded is refused before anything is written: the
    stopped run keeps its status, its resume command and its saved config."""
    resume = cfg.trainer.get("resume")
    if (
        resume not in (None, "")
        and Path(str(resume)).expanduser().resolve() == run_dir.resolve()
        # Stopped while selection=kfold scored its folds: no final checkpoint yet.
        and not rundir.stopped_in_selection(run_dir)
    ):
        check_resume_state(rundir.checkpoint_dir(run_dir))


def _run_with_status(cfg: DictConfig, run_dir: Path, choices: Choices) -> dict[str, Any]:
    rundir.write_status(
        run_dir,
        "running",
        clear=rundir.ENDING_KEYS,
        run_dir=str(run_dir),
        # Lets a resume refuse a run that is still alive (see har_bench.runs.resume).
        pid=os.getpid(),
        host=socket.gethostname(),
    )
    try:
        experiment = from_config(cfg, choices)
        return _run(experiment, run_dir, selection_from_config(cfg, choices))
    except KeyboardInterrupt as e:
        name = e.signal_name if isinstance(e, Interrupted) else "SIGINT"
        rundir.write_status(
            run_dir,
            "interrupted",
            error=f"interrupted by {name}",
            interrupted={
                "signal": name,
                "checkpoint": e.saved if isinstance(e, Interrupted) else None,
            },
            resume_command=rundir.resume_command(run_dir),
        )
        raise
    except DivergedError as e:
        rundir.write_status(
            run_dir,
            "diverged",
            error=str(e),
            diverged={"epoch": e.epoch, "step": e.step, "loss": str(e.loss)},
            hint=DivergedError.HINT,
        )
        raise
    except BaseException as e:
        # Best effort: on a full or read-only disk these writes fail too, and the run's own
        # error must still reach the console.
        with contextlib.suppress(OSError):
            rundir.write_error(run_dir, traceback.format_exc())
        with contextlib.suppress(OSError):
            rundir.write_status(
                run_dir,
                "failed",
                error=f"{type(e).__name__}: {e}",
                user_error=as_user_error(e) is not None,
            )
        raise


def _run(
    experiment: Experiment, run_dir: Path, selection: Selection | None = None
) -> dict[str, Any]:
    """The stages, in order; returns metrics.json's content. With ``selection`` the settings
    are chosen by k-fold cross-validation on the training part first, and the chosen
    candidate's experiment is the one trained and tested."""
    if experiment.tracking is not None:
        require_mlflow()  # before anything is read or trained
    seed_everything(experiment.seed)
    training, choices = experiment.training, experiment.choices
    trainer = training.trainer
    resume = load_resume(experiment.resume, run_dir)
    write_environment(run_dir, str(trainer.device), resume)
    weights = experiment.weights
    make_split = experiment.make_split
    if selection is not None:
        make_split = merged_validation(make_split)
    data = prepare_data(experiment.load_data, make_split, choices.split, run_dir, weights)
    selected = None
    if selection is not None:
        selected = select(selection, data, run_dir, resuming=experiment.resume not in (None, ""))
        experiment = selected.chosen.experiment
        training, weights = experiment.training, experiment.weights
        trainer = training.trainer
        seed_everything(experiment.seed)  # the final model starts as a run of these settings
    built = build_model(experiment.make_model, data, choices.model, run_dir, weights)
    check_selection(training, data, built.trained_by_loop)
    step_budget = None
    if built.trained_by_loop:
        training, step_budget = apply_step_budget(training, len(data.train))
        trainer = training.trainer
    resumed_history = resume["history"] if resume is not None else None
    with default_reporters(
        run_dir, experiment.hparams, resumed_history, experiment.tracking
    ) as reporters:
        refitted, score_test, held_out = None, None, None
        val_held_out = True  # a refit's first phase never trains on the validation part
        if built.trained_by_loop:
            fitted = fit(training, built.model, data, run_dir, resume, reporters.on_epoch)
            score = best_weights_scorer(trainer, built.model, fitted, data.prepare)
            if training.refit:
                refitted = refit(training, experiment.make_model, data, fitted, run_dir, weights)
                score_test = best_weights_scorer(
                    trainer, refitted.model, refitted.fitted, data.prepare
                )
        else:
            fitted = fit_estimator(built, data, run_dir, training.refit)
            score = estimator_scorer(built.model)
            if training.refit:
                # Fitted on train + validation: its validation windows are not held out from it,
                # so its temperature must not be fitted on them as if they were.
                score_test, val_held_out = score, False
            if hasattr(built.model, "held_out_scores"):
                held_out = partial(estimator_held_out_scores, built.model, data, training.refit)

        evaluation = evaluate(score, data, score_test)
        calibration = calibrate(
            score, evaluation, data, score_test, val_held_out=val_held_out, held_out=held_out
        )
        tested = refitted.model if refitted is not None else built.model
        timings = measure(
            trainer,
            tested,
            data,
            fitted,
            evaluation,
            repeats=experiment.latency_repeats,
            warmup=experiment.latency_warmup,
        )
        result = collect_result(
            fitted,
            evaluation,
            built,
            timings,
            data,
            monitor=trainer.monitor,
            choices=choices,
            run_dir=run_dir,
            resume=resume,
            refitted=refitted,
            finetune=finetune_record(training, built, fitted),
            step_budget=step_budget,
            calibration=calibration,
            selection=selected.metrics if selected is not None else None,
        )
        reporters.on_end(result)
        # metrics.json last: its status "completed" means every other artifact is in place.
        rundir.write_json(run_dir / rundir.METRICS, result.metrics)
    return result.metrics
