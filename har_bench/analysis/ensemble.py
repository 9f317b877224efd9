"""``har-bench ensemble RUN_DIR [RUN_DIR ...] [-o OUT_DIR]``: finished runs averaged into one.

The published form of several models (InceptionTime is five networks trained from different
seeds): the members' calibrated class probabilities on the shared test set are averaged window by
window and the class of the highest mean is the ensemble's prediction. The result is written as
a run directory of its own (``metrics.json``, the confusion matrix, ``.hydra/config.yaml`` naming
its members), so ``har-bench compare`` and ``har-bench results`` read it as a row.

The members' probabilities are their ``test_predictions.csv`` (written by every run since it
exists): nothing is run again. A run from before has its tested model run once more on its test
windows, rebuilt from its own config (the ``recompute`` callable the command passes in, from
:mod:`har_bench.deploy.loaded`). Members must be completed runs tested on the same windows:
same dataset and split settings, same test part in ``split_report.json`` and the same windows
and labels in their predictions; anything else is one error line naming the member. A run
whose evaluation was capped (``trainer.limit_eval_batches``) scored only part of its test set
and is refused the same way.

With ``--by KEY`` (``seed``, ``split.fold``) the runs are grouped by their value of that config
key and one ensemble per group is written to ``OUT_DIR/<value>``: a network and MiniRocket
paired seed by seed, or fold by fold where each fold has its own test windows.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from har_bench.analysis.grouping import IGNORED, find_run_dirs, load_run
from har_bench.config import flatten, key_in, report_error
from har_bench.core.calibration import expected_calibration_error, nll, reject_curve
from har_bench.core.errors import MissingInputError, UserError, is_number
from har_bench.core.metrics import classification_metrics, confusion_counts
from har_bench.runs import artifacts, rundir
from har_bench.runs.artifacts import TestPredictions

# Where an ensemble goes without -o: a new folder per call, as Hydra's run dirs.
DEFAULT_ROOT = Path("outputs") / "ensembles"
DEFAULT_NAME = "%Y-%m-%d/%H-%M-%S-%f"
COMBINE = (
    "the mean of the members' calibrated test probabilities (each member's softmax of its "
    "logits divided by its calibration temperature); the predicted class is its argmax"
)
# The config groups whose settings decide which windows a run is tested on.
SAME_DATA = ("dataset", "split")
# Split settings that draw the validation part only, which each member may draw its own of (the
# seed draws split=random's test windows too: the check of the test windows catches that).
VALIDATION_ONLY = ("split.seed", "split.val_fraction", "split.val_subjects")
# In split_report.json, what makes the test part the same windows.
TEST_PART_KEYS = ("windows", "subjects", "per_class")
# How a member's probabilities were obtained, in metrics.json.
FROM_FILE, RECOMPUTED = rundir.TEST_PREDICTIONS, "recomputed from the tested checkpoint"

Recompute = Callable[[Path], TestPredictions]


@dataclass
class Member:
    path: Path
    record: rundir.RunRecord
    values: dict[str, float]  # har_bench.analysis.grouping's metrics of the run
    settings: dict[str, Any]  # dataset.* and split.*, resolved
    predictions: TestPredictions | None = None
    source: str = FROM_FILE

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.documents[rundir.METRICS]


# -- the members -------------------------------------------------------------------------------


def find_members(paths: Sequence[str]) -> list[Path]:
    """Run dirs named, or found below the folders named (a sweep dir: its jobs); globs are
    expanded here too. An ensemble found below a folder is left out (named, it is refused)."""
    found: dict[Path, None] = {}
    for raw in paths:
        matches = sorted(glob.glob(os.path.expanduser(raw))) if glob.has_magic(raw) else [raw]
        if not matches:
            raise MissingInputError(f"{raw}: no such file or directory")
        for match in matches:
            path = Path(match).expanduser()
            if not path.exists():
                raise MissingInputError(f"{raw}: no such file or directory")
            if rundir.is_run_dir(path) or (path / rundir.METRICS).is_file():
                found.setdefault(path.resolve(), None)
                continue
            if path.name == rundir.METRICS and path.is_file():
                found.setdefault(path.parent.resolve(), None)
                continue
            if not path.is_dir():
                # A file a glob matched (a log beside the runs) names no run: its folder holds
                # runs the user did not name.
                if glob.has_magic(raw):
                    continue
                raise UserError(f"{raw}: not a run directory or a folder of runs")
            for run_dir in find_run_dirs([path]):
                if is_ensemble(run_dir):
                    print(f"note: {run_dir} is an ensemble: not a member", file=sys.stderr)
                    continue
                found.setdefault(run_dir, None)
    if not found:
        raise UserError(
            f"no runs (folders with {rundir.METRICS}) under {', '.join(paths)}: give the run "
            "directories (or a sweep directory) to ensemble"
        )
    return list(found)


def is_ensemble(run_dir: Path) -> bool:
    return isinstance(rundir.read_status(run_dir).get("ensemble"), Mapping)


def read_member(run_dir: Path) -> Member:
    """A completed run that is not itself an ensemble; a UserError naming it otherwise."""
    problem = rundir.not_a_run(run_dir)
    if problem is not None:
        raise UserError(f"member {problem}")
    record = rundir.read_record(run_dir)
    metrics = record.documents[rundir.METRICS]
    if record.status != "completed":
        raise UserError(
            f"member {run_dir} is not a finished run: {rundir.why_unfinished(run_dir, metrics)}"
        )
    if is_ensemble(run_dir):
        raise UserError(
            f"member {run_dir} is itself an ensemble (har-bench ensemble): give its members "
            "(listed in its metrics.json) instead"
        )
    return Member(
        path=run_dir,
        record=record,
        values=load_run(run_dir).values,
        settings={
            k: v
            for k, v in rundir.resolved_settings(record.config, SAME_DATA).items()
            if not key_in(k, (*IGNORED, *VALIDATION_ONLY))
        },
    )


def show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def differs(member: Member, first: Member, what: str, value: Any, expected: Any) -> UserError:
    text = f"{show(value)}, but {first.path} has {show(expected)}"
    if len(text) > 200:  # a long list (subjects): the values would bury the line
        text = f"not what {first.path} has"
    return UserError(
        f"member {member.path} differs from the first member in {what}: {text}; an ensemble's "
        "members must be tested on the same windows (same dataset, split and test part)"
    )


def check_same_data(member: Member, first: Member) -> None:
    """Same dataset and split (choices and settings) and the same recorded test part."""
    for group in SAME_DATA:
        a, b = first.record.choices.get(group), member.record.choices.get(group)
        if a != b:
            raise differs(member, first, group, b, a)
    missing = "<unset>"
    for key in dict.fromkeys([*first.settings, *member.settings]):
        a, b = first.settings.get(key, missing), member.settings.get(key, missing)
        if a != b:
            raise differs(member, first, key, b, a)
    reports = [split_report(m.path) for m in (first, member)]
    if reports[0] is None or reports[1] is None:
        return  # a run from before split reports: the predictions are still compared
    a_test, b_test = (r.get("parts", {}).get("test", {}) for r in reports)
    for key in TEST_PART_KEYS:
        if a_test.get(key) != b_test.get(key):
            where = f"its test part's {key} ({rundir.SPLIT_REPORT})"
            raise differs(member, first, where, b_test.get(key), a_test.get(key))


def split_report(run_dir: Path) -> dict[str, Any] | None:
    try:
        report = rundir.read_json(run_dir / rundir.SPLIT_REPORT)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def load_predictions(member: Member, recompute: Recompute | None) -> None:
    """The member's test probabilities: its test_predictions.csv, else its model run again."""
    if (member.path / rundir.TEST_PREDICTIONS).is_file():
        member.predictions = TestPredictions.read(member.path)
        return
    capped = capped_evaluation(member)
    if capped is not None:
        raise UserError(
            f"member {member.path} {capped}, so it has no {rundir.TEST_PREDICTIONS} and its test "
            "metrics are partial: run it again without trainer.limit_eval_batches"
        )
    model = member.metrics.get("model")
    if member.metrics.get("weights") == "fitted" or recompute is None:
        raise UserError(
            f"member {member.path} has no {rundir.TEST_PREDICTIONS} (it ran before runs saved "
            f"them) and model={model} keeps no fitted model to compute them again: run it "
            "again with this version"
        )
    print(
        f"note: {member.path} has no {rundir.TEST_PREDICTIONS} (it ran before runs saved "
        "them): running its tested model on its test windows",
        file=sys.stderr,
    )
    member.predictions = recompute(member.path)
    member.source = RECOMPUTED


def capped_evaluation(member: Member) -> str | None:
    """How much of its test part a run with trainer.limit_eval_batches scored (such a run saves
    no test predictions, by design), or None for a run that scored it all (a limit that never
    bound included)."""
    key = "trainer.limit_eval_batches"
    limit = rundir.resolved_settings(member.record.config, ("trainer",)).get(key)
    if limit is None:
        return None
    scored = (member.metrics.get("test") or {}).get("num_samples")
    total = ((split_report(member.path) or {}).get("parts", {}).get("test") or {}).get("windows")
    if isinstance(scored, int) and isinstance(total, int):
        if scored >= total:
            return None
        return f"evaluated only {scored} of its {total} test windows ({key}={limit})"
    return f"evaluated only part of its test set ({key}={limit})"


def check_same_windows(member: Member, first: Member) -> None:
    a, b = first.predictions, member.predictions
    assert a is not None and b is not None
    if a.class_names != b.class_names:
        raise differs(member, first, "its classes", b.class_names, a.class_names)
    if len(a) != len(b):
        raise differs(member, first, "its number of test windows", len(b), len(a))
    if not np.array_equal(a.window, b.window):
        n = int(np.count_nonzero(a.window != b.window))
        raise differs(
            member,
            first,
            "its test windows",
            f"{n} of {len(b)} window indices",
            "others (their split or the data they were drawn from differs, e.g. a split or "
            "dataset drawn from the seed)",
        )
    if not np.array_equal(a.y_true, b.y_true):
        n = int(np.count_nonzero(a.y_true != b.y_true))
        raise differs(member, first, "its test labels", f"{n} of {len(b)} labels", "others")


def read_members(paths: Sequence[str], recompute: Recompute | None) -> list[Member]:
    return checked([read_member(p) for p in find_members(paths)], recompute)


def checked(members: list[Member], recompute: Recompute | None) -> list[Member]:
    """``members`` with their test predictions, once they are known to share their test windows."""
    first = members[0]
    for member in members[1:]:
        check_same_data(member, first)
    for member in members:
        load_predictions(member, recompute)
        if member is not first:
            check_same_windows(member, first)
    return members


def config_value(member: Member, key: str) -> Any:
    """``key``'s value in the member's saved config, interpolations resolved."""
    if not key.strip():
        raise UserError("--by '': expected a config key, e.g. seed or split.fold")
    settings = rundir.resolved_settings(member.record.config, (key.split(".")[0],))
    if key not in settings and any(k.startswith(key + ".") for k in settings):
        raise UserError(
            f"--by {key}: {key} is a group of settings, not one value: give one key, e.g. "
            "seed or split.fold"
        )
    if key not in settings:
        raise UserError(
            f"--by {key}: member {member.path} has no {key} in its config "
            f"({rundir.SAVED_CONFIG}): give a key every member has, e.g. seed or split.fold"
        )
    return settings[key]


def folder_name(value: Any) -> str:
    """A value as the name of its ensemble's folder: path separators and the like become _, and
    so do the dots of "." and "..", which would name OUT_DIR or its parent."""
    name = re.sub(r"[^\w.=+-]", "_", str(value))
    return name.replace(".", "_") if not name.strip(".") else name


def read_groups(
    paths: Sequence[str], key: str, recompute: Recompute | None
) -> dict[str, list[Member]]:
    """The runs named, by their value of ``key``, each group checked as one ensemble's members;
    keyed by folder name, in the order of the values (numbers by size)."""
    values: dict[str, Any] = {}
    groups: dict[str, list[Member]] = {}
    for run_dir in find_members(paths):
        member = read_member(run_dir)
        value = config_value(member, key)
        name = folder_name(value)
        if values.setdefault(name, value) != value:
            raise UserError(
                f"--by {key}: the values {values[name]!r} and {value!r} would share the "
                f"folder {name}: group by a key with plainer values"
            )
        groups.setdefault(name, []).append(member)
    sizes = {name: len(members) for name, members in groups.items()}
    counts = ", ".join(f"{key}={show(values[n])}: {c}" for n, c in sizes.items())
    if len(set(sizes.values())) > 1:
        raise UserError(
            f"--by {key}: the values have different numbers of runs ({counts}): give every "
            f"{key} the same runs, e.g. one network and one MiniRocket run each"
        )
    if min(sizes.values()) < 2:
        raise UserError(
            f"--by {key}: every {key} has one run ({counts}), nothing to average: give each "
            f"{key} two or more runs, e.g. one network and one MiniRocket run each"
        )

    def order(name: str) -> tuple[int, float, str]:
        value = values[name]
        return (0, float(value), name) if is_number(value) else (1, 0.0, name)

    return {name: checked(groups[name], recompute) for name in sorted(groups, key=order)}


# -- the ensemble's run directory --------------------------------------------------------------


def common(values: Sequence[Any]) -> Any:
    """The members' shared value, or None when they differ."""
    return values[0] if all(v == values[0] for v in values) else None


def label(values: Sequence[Any]) -> str | None:
    """One name for the members' choices: theirs when shared, else each once, joined by +."""
    names = [str(v) for v in dict.fromkeys(values) if v is not None]
    return "+".join(names) or None


def ensemble_config(members: Sequence[Member]) -> dict[str, Any]:
    """The first member's config, a key the members disagree on (seed) holding the list of their
    values, and ``ensemble``: its size and members."""
    config = json.loads(json.dumps(members[0].record.config, default=str))
    flats = [flatten(m.record.config) for m in members]
    for key in flats[0]:
        values = [f.get(key) for f in flats]
        if any(v != values[0] for v in values):
            node: Any = config
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and parts[-1] in node:
                node[parts[-1]] = values
    config["ensemble"] = {"size": len(members), "members": [str(m.path) for m in members]}
    return config


def ensemble_choices(members: Sequence[Member]) -> dict[str, str]:
    groups = dict.fromkeys(g for m in members for g in m.record.choices)
    chosen = {g: label([m.record.choices.get(g) for m in members]) for g in groups}
    return {g: v for g, v in chosen.items() if v is not None}


def summed(values: Sequence[Any]) -> float | None:
    """The sum when every member has a number, else None."""
    numbers = [v for v in values if is_number(v)]
    return float(sum(numbers)) if len(numbers) == len(values) else None


def averaged(members: Sequence[Member]) -> TestPredictions:
    """The ensemble's test predictions: the members' windows, their mean probabilities."""
    first = members[0].predictions
    assert first is not None
    probs = np.mean([m.predictions.probs for m in members if m.predictions is not None], axis=0)
    return TestPredictions(first.window, first.subject, first.y_true, probs, first.class_names)


def build(
    members: Sequence[Member], predictions: TestPredictions, run_dir: Path
) -> dict[str, dict[str, Any]]:
    """metrics.json, model_summary.json and timings.json of the ensemble, by file name."""
    probs, y, class_names = predictions.probs, predictions.y_true, predictions.class_names
    pred = predictions.y_pred
    # The cross-entropy of the averaged probabilities: log-probabilities are logits whose
    # softmax gives them back.
    log_probs = np.log(np.clip(probs, np.finfo(np.float64).tiny, None))
    choices = ensemble_choices(members)
    member_rows = [
        {
            "run_dir": str(m.path),
            "model": m.metrics.get("model"),
            "seed": m.record.config.get("seed"),
            "test_accuracy": m.values.get("accuracy"),
            "test_macro_f1": m.values.get("macro_f1"),
            "train_seconds": m.values.get("train_seconds"),
            "probabilities": m.source,
        }
        for m in members
    ]
    train_seconds = [m.values.get("train_seconds") for m in members]
    metrics = {
        "status": "completed",
        "model": choices.get("model", label([m.metrics.get("model") for m in members])),
        "dataset": choices.get("dataset", members[0].metrics.get("dataset")),
        "run_dir": str(run_dir),
        # What was tested: no weights of its own, the members' probabilities averaged.
        "weights": "ensemble",
        "tested": "ensemble",
        "ensemble": {
            "size": len(members),
            "combine": COMBINE,
            "members": member_rows,
            "train_seconds_total": summed(train_seconds),
            "test_ece": expected_calibration_error(probs, y),
        },
        # Each member selected on a validation part of its own (drawn by its seed): there is
        # no validation part common to them to score the ensemble on.
        "val": None,
        "test": {"loss": nll(log_probs, y), **classification_metrics(y, pred, class_names)},
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    summaries = [m.record.documents[rundir.MODEL_SUMMARY] for m in members]
    timings = [m.record.documents[rundir.TIMINGS] for m in members]
    latency = {
        p: summed([(t.get("inference_latency_ms") or {}).get(p) for t in timings])
        for p in ("p50", "p95")
    }
    return {
        rundir.METRICS: metrics,
        rundir.MODEL_SUMMARY: {
            "model": f"ensemble of {len(members)}: {metrics['model']}",
            "params": summed([s.get("params") for s in summaries]),
            "trainable_params": summed([s.get("trainable_params") for s in summaries]),
            "flops_per_sample": summed([s.get("flops_per_sample") for s in summaries]),
            "members": [
                {k: s.get(k) for k in ("model", "params", "flops_per_sample")} for s in summaries
            ],
        },
        rundir.TIMINGS: {
            # Training every member, one after another (refits included).
            "train_seconds_total": summed(train_seconds),
            "train_seconds_per_member": train_seconds,
            # The members run one after another on one window: the sum of their latencies.
            "inference_latency_ms": latency if None not in latency.values() else None,
            "device": common([t.get("device") for t in timings]),
            "torch_threads": common([t.get("torch_threads") for t in timings]),
        },
    }


def check_output(out: Path, members: Sequence[Member]) -> None:
    """``out`` must be new, or an empty folder, and outside every member."""
    if out.is_symlink():
        raise UserError(f"-o {out} is a symbolic link: give a new folder for the ensemble")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(
            f"-o {out} already exists and is not an empty folder: give a new folder (har-bench "
            "ensemble never writes over anything)"
        )
    for m in members:
        if rundir.overlaps(out, m.path):
            raise UserError(
                f"-o {out} is, holds or lies inside the member {m.path}: give a folder outside "
                "the members' run directories"
            )


def default_output() -> Path:
    return DEFAULT_ROOT / datetime.now().strftime(DEFAULT_NAME)


def write(members: Sequence[Member], out: Path) -> dict[str, Any]:
    """The ensemble's run directory, made in a hidden folder beside ``out`` and renamed into
    place: ``out`` appears complete or not at all."""
    out = out.expanduser().absolute()
    check_output(out, members)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"-o {out}: cannot create the folder ({e.strerror or e})") from e
    try:
        predictions = averaged(members)
        docs = build(members, predictions, out)
        class_names = predictions.class_names
        rundir.save_record(
            tmp,
            ensemble_config(members),
            {"hydra": {"runtime": {"choices": ensemble_choices(members), "cwd": os.getcwd()}}},
            [],
        )
        predictions.write(tmp)
        y = predictions.y_true
        cm = confusion_counts(y, predictions.y_pred, len(class_names))
        artifacts.write_confusion_matrix(tmp, cm, class_names)
        artifacts.write_reject_curve(tmp, reject_curve(predictions.probs, y))
        for name in (rundir.MODEL_SUMMARY, rundir.TIMINGS, rundir.METRICS):  # metrics.json last
            rundir.write_json(tmp / name, docs[name])
        try:
            os.rename(tmp, out)  # onto nothing, or onto an empty folder
        except OSError as e:
            raise UserError(
                f"-o {out}: cannot put the ensemble there ({e.strerror}); give a new folder"
            ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return docs[rundir.METRICS]


# -- command -----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="har-bench ensemble",
        description=(
            "Average the calibrated test probabilities of finished runs (e.g. one model trained "
            "from several seeds) and write the ensemble as a run directory of its own, which "
            "compare and results read like any run. Members must be tested on the same windows."
        ),
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="completed runs, or folders holding them (a sweep dir: its jobs); globs work",
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        help=(
            "the ensemble's run directory (with --by, the folder of the ensembles), new or empty "
            f"(default: {DEFAULT_ROOT}/<date>/<time>)"
        ),
    )
    p.add_argument(
        "--by",
        metavar="KEY",
        help=(
            "one ensemble per value of the config key KEY (seed, split.fold): the runs sharing "
            "a value are averaged into OUT_DIR/<value>; every value needs the same number of "
            "runs, two or more (a network and MiniRocket per seed, or per fold)"
        ),
    )
    return p


def print_result(metrics: Mapping[str, Any], size: int, prefix: str = "") -> None:
    """One ensemble's line on stdout: its test accuracy beside its members'."""
    test = metrics["test"]
    accs = ", ".join(
        f"{100 * r['test_accuracy']:.2f}"
        for r in metrics["ensemble"]["members"]
        if r["test_accuracy"] is not None
    )
    print(
        f"{prefix}ensemble of {size} runs: test accuracy {100 * test['accuracy']:.2f}% "
        f"(members: {accs}), macro-F1 {100 * test['macro_f1']:.2f}%"
    )


def write_groups(groups: Mapping[str, Sequence[Member]], key: str, out: Path) -> None:
    """One ensemble per group in ``out/<value>``; ``out`` new or empty, checked before any is
    written, each appearing complete or not at all."""
    out = out.expanduser().absolute()
    check_output(out, [m for members in groups.values() for m in members])
    for name, members in groups.items():
        metrics = write(members, out / name)
        print_result(metrics, len(members), prefix=f"{key}={name}: ")
    print(
        f"run directories: {out}/<{key}>, {len(groups)} of them; mean ± std over them: "
        f"har-bench compare {out}"
    )


def main(argv: Sequence[str], recompute: Recompute | None = None) -> int:
    """``recompute``: a member's test predictions from its tested model, for runs that saved
    none (the command passes :func:`har_bench.deploy.loaded.recompute_test_predictions`)."""
    args = parser().parse_args(list(argv))
    out = args.out if args.out is not None else default_output()
    try:
        if args.by is not None:
            write_groups(read_groups(args.run_dirs, args.by, recompute), args.by, out)
            return 0
        members = read_members(args.run_dirs, recompute)
        if len(members) == 1:
            print(
                f"note: one member ({members[0].path}): the ensemble's figures are its own",
                file=sys.stderr,
            )
        metrics = write(members, out)
    except Exception as e:
        return report_error(e)
    print_result(metrics, len(members))
    print(f"run directory: {metrics['run_dir']}")
    return 0
