"""Runs grouped by configuration: which config keys differ, and mean ± std (n) per group.

A run's saved config (``.hydra/config.yaml`` plus the group choices of ``.hydra/hydra.yaml``) is
flattened; the keys whose values differ between runs define the groups, except the replicate
keys (``seed``, ``split.fold``), over which the mean, the sample standard deviation (ddof=1) and
n are taken. Only ``completed`` runs enter the statistics; the others are counted per group.
Nothing here imports torch.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from har_bench.config import BOOKKEEPING_KEYS, flatten, key_in, setting
from har_bench.core.errors import MissingInputError
from har_bench.runs import rundir

# Runs that differ only by these are repeats of one configuration (two ensembles of 5 seeds
# each are two repeats of the 5-network ensemble).
REPLICATE_KEYS = ("seed", "split.fold", "ensemble.members")
# Where the data was read from does not change what was computed either.
IGNORED = (*BOOKKEEPING_KEYS, "dataset.root")
# Group choices worth a column of their own (model=resnet18 says more than its 12 keys).
CHOICE_GROUPS = ("model", "dataset", "split", "optimizer", "scheduler", "trainer", "experiment")
SKIP_DIRS = {rundir.CHECKPOINTS, rundir.HYDRA_DIR, ".submitit", "__pycache__"}


@dataclass(frozen=True)
class Metric:
    label: str
    source: str  # file in the run dir (a har_bench.runs.rundir name)
    path: tuple[str, ...]  # keys into that file's JSON
    higher_is_better: bool
    kind: str  # "fraction" (shown in %), "count", "flops", "rate", "ms"


METRICS: dict[str, Metric] = {
    "accuracy": Metric("test acc %", rundir.METRICS, ("test", "accuracy"), True, "fraction"),
    "macro_f1": Metric("test F1 %", rundir.METRICS, ("test", "macro_f1"), True, "fraction"),
    "balanced_accuracy": Metric(
        "test bal-acc %", rundir.METRICS, ("test", "balanced_accuracy"), True, "fraction"
    ),
    "val_accuracy": Metric("val acc %", rundir.METRICS, ("val", "accuracy"), True, "fraction"),
    "val_macro_f1": Metric("val F1 %", rundir.METRICS, ("val", "macro_f1"), True, "fraction"),
    "params": Metric("params", rundir.MODEL_SUMMARY, ("params",), False, "count"),
    "flops": Metric("FLOPs", rundir.MODEL_SUMMARY, ("flops_per_sample",), False, "flops"),
    "train_sps": Metric("train sps", rundir.TIMINGS, ("train_samples_per_second",), True, "rate"),
    "latency_ms": Metric(
        "latency ms", rundir.TIMINGS, ("inference_latency_ms", "p50"), False, "ms"
    ),
    "train_seconds": Metric("train s", rundir.TIMINGS, ("train_seconds_total",), False, "rate"),
    "epochs": Metric("epochs", rundir.METRICS, ("epochs_trained",), True, "count"),
}
LEGEND = (
    "mean ± sample std (ddof=1) over the n completed runs of each group; test acc/F1 on the "
    "test set with the best-on-validation weights, in %; FLOPs per sample (a multiply-add = 2); "
    "train sps = training samples/s (median epoch); train s = training time of every phase "
    "(selection and refit); latency = p50 ms at batch size 1."
)
DEFAULT_METRICS = ("accuracy", "macro_f1", "params", "flops", "train_sps", "latency_ms")


@dataclass
class Run:
    path: Path
    status: str
    config: dict[str, Any]  # flattened dot keys, plus the group choices under their group name
    values: dict[str, float]  # metric name -> value (only those the run has)
    error: str | None = None
    overrides: list[str] = field(default_factory=list)
    user_error: bool = False  # failed on bad input (see har_bench.core.errors)


@dataclass
class Group:
    key: dict[str, Any]  # the differing (non-replicate) config values shared by the group
    runs: list[Run]

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    def stats(self, metric: str) -> tuple[float, float, int]:
        """(mean, sample std, n) over the completed runs that have the metric."""
        return mean_std([r.values[metric] for r in self.completed if metric in r.values])


@dataclass
class Comparison:
    runs: list[Run]
    groups: list[Group]
    keys: list[str]  # differing config keys that define the groups, in display order
    replicates: list[str]  # replicate keys that do vary
    constant_choices: dict[str, Any]


# -- finding and reading runs ------------------------------------------------------------------


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run dir (a folder with metrics.json) at or below each path; globs are expanded
    here too, so a quoted pattern works the same as one the shell expanded."""
    found: dict[Path, None] = {}
    for raw in paths:
        raw = str(raw)
        matches = sorted(glob.glob(os.path.expanduser(raw))) if glob.has_magic(raw) else [raw]
        for m in matches:
            p = Path(m).expanduser()
            if not p.exists():
                raise MissingInputError(f"{raw}: no such file or directory")
            if p.is_file():
                p = p.parent  # e.g. .../metrics.json
            for run_dir in _walk_runs(p):
                found.setdefault(run_dir.resolve(), None)
    return list(found)


def _walk_runs(root: Path) -> Iterable[Path]:
    if (root / rundir.METRICS).is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden folders are not runs: a copy being made (results' temporary folders), .git;
        # and runs that trainer.overwrite moved aside.
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS and not d.startswith(".") and not rundir.set_aside(Path(d))
        )
        if rundir.METRICS in filenames:
            dirnames[:] = []  # a run dir holds no further runs
            yield Path(dirpath)


def load_run(run_dir: Path) -> Run:
    record = rundir.read_record(run_dir)
    values: dict[str, float] = {}
    for name, m in METRICS.items():
        v: Any = record.documents[m.source]
        for k in m.path:
            v = v.get(k) if isinstance(v, Mapping) else None
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            values[name] = float(v)
    # A refit trains a second model after the selection phase: both are the run's training time.
    refit = record.documents[rundir.METRICS].get("refit")
    if "train_seconds" in values and isinstance(refit, Mapping):
        values["train_seconds"] += sum(float(r["train_seconds"]) for r in refit.get("history", []))
    # selection=kfold trains every candidate on every fold before the final training.
    selection = record.documents[rundir.METRICS].get("selection")
    if "train_seconds" in values and isinstance(selection, Mapping):
        values["train_seconds"] += float(selection.get("train_seconds", 0.0))
    config = flatten(record.config)
    for group in CHOICE_GROUPS:
        if record.choices.get(group) is not None:
            config[group] = record.choices[group]
    # Where and on how many threads a run was timed: runs measured differently are not
    # repeats of one another for the speed columns (trainer.num_threads=null hides this).
    timings = record.documents[rundir.TIMINGS]
    for key in ("device", "torch_threads"):
        if timings.get(key) is not None:
            config[key] = timings[key]
    return Run(
        path=record.path,
        status=record.status,
        config=config,
        values=values,
        error=record.error,
        overrides=record.overrides,
        user_error=record.user_error,
    )


def _ignored(key: str) -> bool:
    return key_in(key, IGNORED)


# -- grouping ----------------------------------------------------------------------------------


def hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, list | dict) else v


MISSING = "<unset>"


def differing_keys(runs: Sequence[Run]) -> list[str]:
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r.config))
    out = []
    for k in keys:
        if _ignored(k):
            continue
        if len({hashable(setting(r.config, k, MISSING)) for r in runs}) > 1:
            out.append(k)
    return out


def _explained_by_choice(key: str, choice: str, runs: Sequence[Run]) -> bool:
    """Whether runs with the same ``choice`` (e.g. model=resnet18) all have the same ``key``:
    then the key only follows the preset and needs no column of its own."""
    seen: dict[Any, Any] = {}
    for r in runs:
        c = hashable(setting(r.config, choice, MISSING))
        v = hashable(setting(r.config, key, MISSING))
        if seen.setdefault(c, v) != v:
            return False
    return True


def compare(runs: Sequence[Run]) -> Comparison:
    diff = differing_keys(runs)
    replicates = [k for k in REPLICATE_KEYS if k in diff]
    keys = []
    for k in diff:
        if k in REPLICATE_KEYS:
            continue
        group = k.split(".", 1)[0]
        if "." in k and group in diff and _explained_by_choice(k, group, runs):
            continue
        keys.append(k)
    # Choices first (model, dataset, ...), then the other keys in config order.
    keys.sort(key=lambda k: (k not in CHOICE_GROUPS, 0))
    groups: dict[tuple[Any, ...], Group] = {}
    for r in runs:
        ident = tuple(hashable(setting(r.config, k, MISSING)) for k in keys)
        g = groups.get(ident)
        if g is None:
            groups[ident] = g = Group({k: setting(r.config, k, MISSING) for k in keys}, [])
        g.runs.append(r)
    constant = {
        c: runs[0].config[c]
        for c in CHOICE_GROUPS
        if runs and c in runs[0].config and c not in diff and runs[0].config[c] is not None
    }
    ordered = sorted(groups.values(), key=lambda g: [sort_value(g.key[k]) for k in keys])
    return Comparison(list(runs), ordered, keys, replicates, constant)


def sort_value(v: Any) -> tuple[int, Any]:
    # Numbers before strings, each in natural order; None/unset last.
    if isinstance(v, bool):
        return (1, str(v))
    if isinstance(v, int | float):
        return (0, v)
    if v is None or v == MISSING:
        return (2, "")
    return (1, str(v))


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan, 1
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var), n


def sort_groups(groups: list[Group], metric: str, reverse: bool = False) -> list[Group]:
    """Best first by ``metric`` (higher or lower, as the metric says); groups without it last."""
    higher = METRICS[metric].higher_is_better

    def key(g: Group) -> tuple[bool, float]:
        mean, _, n = g.stats(metric)
        if n == 0:
            return (True, 0.0)
        return (False, -mean if higher != reverse else mean)

    return sorted(groups, key=key)
