"""``selection=kfold``: a grid of settings chosen by k-fold cross-validation inside the training
cases, before the chosen settings are trained on all of them (by the run's own stages).

Each candidate x fold is a plain training with the run's stages (a new model, the step budget,
``Trainer.fit``) on the fold's training cases, for the candidate's whole schedule; the last
epoch's weights (their moving average with ``trainer.ema_decay``) score the fold's held-out
cases. Nothing is picked inside a fold: a best epoch chosen on a handful of held-out cases is
what makes a small validation part optimistic. The test part is in no fold.

Every fold's score is written to ``checkpoints/selection/scores.json`` as soon as it is known,
with digests of the fold's cases and of the candidate's settings and metric; a resumed run
(``trainer.resume``) reuses only the scores whose digests are unchanged and continues an
interrupted fold from its own checkpoint (kept under the same digests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from har_bench.core.errors import UserError
from har_bench.core.metrics import classification_metrics
from har_bench.core.seeding import seed_everything
from har_bench.data.base import HARData
from har_bench.data.splits import Split
from har_bench.experiment.build import new_model
from har_bench.experiment.evaluate import best_weights_scorer, estimator_scorer
from har_bench.experiment.fit import apply_step_budget, train_model
from har_bench.experiment.prepare import PreparedData, tensors
from har_bench.experiment.spec import Candidate, Selection
from har_bench.runs import rundir
from har_bench.training.checkpoint import LAST_CHECKPOINT, load_resume_state
from har_bench.training.session import DivergedError

log = logging.getLogger(__name__)


def merged_validation(make_split: Callable[[HARData], Split]) -> Callable[[HARData], Split]:
    """``make_split`` with its validation part joined to the training part: under selection the
    folds hold cases out, and the chosen settings train on every training case."""

    def split(data: HARData) -> Split:
        s = make_split(data)
        if len(s.val) == 0:
            return s
        info = s.info | {
            "val_subjects": [],
            "validation_joined_training": (
                f"selection=kfold: the split's {len(s.val)} validation windows train with the "
                "rest; the folds hold cases out instead"
            ),
        }
        train = np.concatenate([s.train, s.val])
        return dataclasses.replace(s, train=train, val=s.val[:0], info=info)

    return split


@dataclass(frozen=True)
class Fold:
    train: np.ndarray  # the dataset's window indices the fold trains on
    held: np.ndarray  # and those it scores

    def digest(self) -> str:
        """Identifies the fold's cases, trained on and held out: a resume reuses a score, or
        continues a fold's training, only for the same fold."""
        parts = [np.sort(p).astype(np.int64).tobytes() for p in (self.held, self.train)]
        return _short(b"|".join(parts))


def make_folds(data: PreparedData, folds: int, seed: int) -> list[Fold]:
    """``folds`` folds of the training part, stratified by class and grouped by subject."""
    idx = np.asarray(data.split.train, dtype=np.int64)
    y = np.asarray(data.data.y)[idx]
    groups = np.asarray(data.data.subjects)[idx]
    subjects = len(np.unique(groups))
    # Folds are grouped by subject, so a class is in as many folds as it has subjects at most.
    classes = np.unique(y)
    per_class = [len(np.unique(groups[y == c])) for c in classes]
    rarest = int(np.argmin(per_class))
    smallest = per_class[rarest]
    if folds > smallest and smallest < subjects:
        name = data.class_names[int(classes[rarest])]
        windows = int(np.count_nonzero(y == classes[rarest]))
        raise UserError(
            f"selection.folds={folds} is more than the {smallest} training subjects (cases) "
            f"that have class {name} ({windows} windows of it): folds are grouped by subject "
            f"and every fold must hold out cases of each class; set selection.folds to at "
            f"most {smallest}"
        )
    if folds > subjects:
        raise UserError(
            f"selection.folds={folds} is more than the {subjects} subjects of the training "
            f"part: folds are grouped by subject; set selection.folds to at most {subjects}"
        )
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [Fold(idx[tr], idx[te]) for tr, te in cv.split(idx, y, groups)]


@dataclass
class Selected:
    """The chosen candidate and what the run records of the selection."""

    chosen: Candidate
    record: dict[str, Any]  # split_report.json's ``selection``
    metrics: dict[str, Any]  # metrics.json's ``selection``


def select(selection: Selection, data: PreparedData, run_dir: Path, resuming: bool) -> Selected:
    """Score every candidate on every fold, choose the best mean (ties: the first in grid
    order) and record it all in ``split_report.json``."""
    folds = make_folds(data, selection.folds, selection.seed)
    saved = rundir.selection_dir(run_dir) / rundir.SELECTION_SCORES
    previous = rundir.read_json(saved) if resuming and saved.is_file() else {}
    scores: dict[str, Any] = {"folds": [f.digest() for f in folds], "entries": {}}
    n, k = len(selection.candidates), len(folds)
    # What each score depends on besides the fold: the candidate's settings and the metric.
    configs = [_config_digest(c, selection.metric) for c in selection.candidates]
    fold_dirs = {
        (ci, fi): rundir.selection_fold_dir(run_dir, ci, fi, _short(configs[ci] + fold.digest()))
        for ci in range(n)
        for fi, fold in enumerate(folds)
    }
    _remove_stale_fold_dirs(rundir.selection_dir(run_dir), set(fold_dirs.values()))
    log.info(
        "selection: %d candidates x %d folds of %d training windows, scored by %s",
        n,
        k,
        len(data.split.train),
        selection.metric,
    )
    for ci, candidate in enumerate(selection.candidates):
        for fi, fold in enumerate(folds):
            key = f"{ci}/{fi}"
            entry = previous.get("entries", {}).get(key)
            if (
                entry is not None
                and entry.get("config") == configs[ci]
                and entry.get("fold") == fold.digest()
            ):
                scores["entries"][key] = entry
                log.info("selection: candidate %d/%d, fold %d/%d: recorded", ci + 1, n, fi + 1, k)
                continue
            if entry is not None:
                log.info(
                    "selection: candidate %d/%d, fold %d/%d: the recorded score is of other "
                    "settings, metric or cases; scoring it again",
                    ci + 1,
                    n,
                    fi + 1,
                    k,
                )
            checkpoints = fold_dirs[ci, fi]
            resume = (
                load_resume_state(checkpoints)
                if resuming and (checkpoints / LAST_CHECKPOINT).is_file()
                else None
            )
            entry = score_fold(candidate, data, fold, selection.metric, checkpoints, resume)
            scores["entries"][key] = entry | {"config": configs[ci], "fold": fold.digest()}
            rundir.write_json(saved, scores)
            # The score is recorded; the fold's model is never used again.
            shutil.rmtree(checkpoints, ignore_errors=True)
            log.info(
                "selection: candidate %d/%d (%s), fold %d/%d: %s %.4f (%.1f s)%s",
                ci + 1,
                n,
                candidate.describe(),
                fi + 1,
                k,
                selection.metric,
                entry["score"],
                entry["train_seconds"],
                " diverged" if entry.get("diverged") else "",
            )
    selected = _choose(selection, data, folds, scores["entries"])
    chosen = _plain(selected.chosen.overrides)
    trained = previous.get("chosen")
    if resuming and rundir.last_checkpoint(run_dir).is_file() and trained not in (None, chosen):
        # The final training's checkpoint holds another candidate's model: continuing it under
        # these settings would test a model of neither.
        raise UserError(
            f"trainer.resume: the stopped run's final training is of "
            f"{_describe(trained)}, but the folds, scored again, now choose {_describe(chosen)}; "
            "start the run afresh with trainer.overwrite=true (instead of trainer.resume)"
        )
    scores["chosen"] = chosen
    rundir.write_json(saved, scores)
    path = run_dir / rundir.SPLIT_REPORT
    rundir.write_json(path, rundir.read_json(path) | {"selection": selected.record})
    return selected


def _config_digest(candidate: Candidate, metric: str) -> str:
    text = json.dumps(
        {"settings": candidate.settings, "metric": metric}, sort_keys=True, default=str
    )
    return _short(text)


def _short(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def _remove_stale_fold_dirs(base: Path, expected: set[Path]) -> None:
    """Fold checkpoints of other settings or other cases (a stopped run whose folds or
    settings differ): resumed, they would score a model that trained on held-out cases."""
    if not base.is_dir():
        return
    stale = [p for p in base.iterdir() if p.is_dir() and p not in expected]
    for path in stale:
        shutil.rmtree(path)
    if stale:
        log.warning(
            "selection: removed %d fold checkpoint(s) of other folds or settings than this run's",
            len(stale),
        )


def _describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def score_fold(
    candidate: Candidate,
    data: PreparedData,
    fold: Fold,
    metric: str,
    checkpoints: Path,
    resume: dict[str, Any] | None,
) -> dict[str, Any]:
    """Train ``candidate`` on the fold's training cases and score its held-out ones."""
    experiment = candidate.experiment
    split = Split(fold.train, fold.held, fold.held[:0], kind="fold")
    part = tensors(data.data, split, experiment.weights)
    seed_everything(experiment.seed)
    model, _ = new_model(experiment.make_model, part, experiment.weights, experiment.choices.model)
    entry: dict[str, Any] = {"overrides": _plain(candidate.overrides)}
    t0 = time.perf_counter()
    if isinstance(model, nn.Module):
        training, _ = apply_step_budget(experiment.training, len(part.train))
        try:
            fitted = train_model(training, model, part, part.train, None, checkpoints, resume)
        except DivergedError as e:
            # A candidate whose loss blows up scores nothing; the others are still compared.
            return entry | {
                "score": 0.0,
                "train_seconds": time.perf_counter() - t0,
                "epochs": e.epoch,
                "diverged": str(e),
            }
        seconds = float(sum(fitted.train_seconds_per_epoch))
        entry["epochs"] = len(fitted.history)
        score = best_weights_scorer(training.trainer, model, fitted, part.prepare)
    else:
        model.fit(part.train.X.numpy(), part.train.y.numpy())
        seconds = time.perf_counter() - t0
        score = estimator_scorer(model)
    result = score(part.val)
    value = classification_metrics(result["y_true"], result["y_pred"], data.class_names)[metric]
    return entry | {"score": float(value), "train_seconds": seconds}


def _choose(
    selection: Selection, data: PreparedData, folds: list[Fold], entries: dict[str, Any]
) -> Selected:
    subjects = np.asarray(data.data.subjects)
    candidates, best = [], 0
    for ci, candidate in enumerate(selection.candidates):
        rows = [entries[f"{ci}/{fi}"] for fi in range(len(folds))]
        values = [r["score"] for r in rows]
        candidates.append(
            {
                "overrides": _plain(candidate.overrides),
                "scores": values,
                "mean": statistics.mean(values),
                "std": statistics.stdev(values),
                "train_seconds": sum(r["train_seconds"] for r in rows),
                "diverged_folds": [fi for fi, r in enumerate(rows) if r.get("diverged")],
            }
        )
        if candidates[ci]["mean"] > candidates[best]["mean"]:  # ties: the first
            best = ci
    chosen = candidates[best]
    test = np.asarray(data.split.test)
    in_folds = np.concatenate([np.concatenate([f.train, f.held]) for f in folds])
    held = np.concatenate([f.held for f in folds])
    test_subjects = set(np.unique(subjects[test]).tolist())
    seconds = sum(c["train_seconds"] for c in candidates)
    record = {
        "method": "kfold",
        "folds": len(folds),
        "metric": selection.metric,
        "seed": selection.seed,
        "grid": _plain(selection.grid),
        "training_windows": len(data.split.train),
        "training_subjects": len(np.unique(subjects[data.split.train])),
        "fold_sizes": [
            {
                "held_out_windows": len(f.held),
                "held_out_subjects": len(np.unique(subjects[f.held])),
                "train_windows": len(f.train),
                "train_subjects": len(np.unique(subjects[f.train])),
            }
            for f in folds
        ],
        "candidates": candidates,
        "chosen": {"index": best} | chosen,
        # The proof: no test window or subject in any fold, each training window held out once.
        "test_windows_in_folds": int(np.isin(in_folds, test).sum()),
        "test_subjects_in_folds": sorted(test_subjects & set(subjects[in_folds].tolist())),
        "training_windows_held_out_once": bool(
            len(held) == len(np.unique(held))
            and set(held.tolist()) == set(np.asarray(data.split.train).tolist())
        ),
        "trainings": len(candidates) * len(folds),
        "train_seconds": seconds,
    }
    log.info(
        "selection: chose %s (%s %.4f ± %.4f over %d folds); training it on all %d training "
        "windows",
        selection.candidates[best].describe(),
        selection.metric,
        chosen["mean"],
        chosen["std"],
        len(folds),
        len(data.split.train),
    )
    metrics = {
        "method": "kfold",
        "folds": len(folds),
        "metric": selection.metric,
        "chosen": chosen["overrides"],
        "cv_mean": chosen["mean"],
        "cv_std": chosen["std"],
        "candidates": len(candidates),
        # Every fold's training; the final training is the run's own (timings.json).
        "train_seconds": seconds,
    }
    return Selected(selection.candidates[best], record, metrics)


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists), so recorded and new compare."""
    return json.loads(json.dumps(value, default=str))
