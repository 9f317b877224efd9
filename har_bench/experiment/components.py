"""From the composed config to a :class:`~har_bench.experiment.spec.Experiment` of typed objects.

Hydra's ``instantiate`` and OmegaConf stop here. The trainer, optimizer and scheduler are built
(and tried on a dummy parameter) at once, so that a bad setting fails before any data is read;
dataset, split and model become factories the stages call. A constructor's error reaches the
user as its own one-line message, tagged with the config key it came from.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from har_bench.config import BOOKKEEPING_KEYS, flatten, key_in, nearest_key
from har_bench.core.errors import (
    UserError,
    check_finite_settings,
    check_int,
    check_optional_int,
)
from har_bench.experiment.pretrained import WeightsSource
from har_bench.experiment.spec import (
    Candidate,
    Choices,
    Experiment,
    Selection,
    Tracking,
    Training,
    selection_metrics,
)
from har_bench.runs.tracking import MlflowTracking
from har_bench.training.finetune import FineTune
from har_bench.training.schedules import StepSchedule

log = logging.getLogger(__name__)

# Keys of the model group that say how a network starts and is fine-tuned, not how it is
# built: they go to the weights loader and the loop, not to the model's constructor.
FINETUNE_KEYS = ("weights", "weights_sha256", "freeze", "unfreeze_after", "backbone_lr")
# Keys of the trainer group that the runner acts on around the loop, not the loop itself.
RUNNER_KEYS = ("resume", "overwrite", "refit", "max_steps")


def from_config(cfg: DictConfig, choices: Choices) -> Experiment:
    values = settings(cfg)
    check_finite_settings(values)
    seed = check_int("seed", cfg.seed, 0)
    trainer = build(cfg, "trainer", exclude=RUNNER_KEYS)
    refit = cfg.trainer.get("refit", False)
    if not isinstance(refit, bool):
        raise UserError(f"trainer.refit={refit!r} is invalid: expected true or false")
    max_steps = check_optional_int("trainer.max_steps", cfg.trainer.get("max_steps"))
    optimizer_factory = build(cfg, "optimizer")
    scheduler_factory = build(cfg, "scheduler") if cfg.get("scheduler") else None
    check_optimizer(optimizer_factory, scheduler_factory)
    augment = build(cfg, "augment") if cfg.get("augment") else None
    finetune, weights = fine_tuning(cfg)
    return Experiment(
        seed=seed,
        training=Training(
            trainer,
            optimizer_factory,
            scheduler_factory,
            seed,
            augment=augment if augment is not None and augment.enabled else None,
            refit=refit,
            finetune=finetune,
            max_steps=max_steps,
        ),
        load_data=lambda: build(cfg, "dataset"),
        make_split=lambda data: build(cfg, "split")(data),
        make_model=lambda in_channels, num_classes: model_from_config(
            cfg, in_channels, num_classes
        ),
        choices=choices,
        # Checked now: a bad value must not fail the run after it has trained.
        latency_repeats=check_int("efficiency.latency_repeats", cfg.efficiency.latency_repeats),
        latency_warmup=check_int("efficiency.latency_warmup", cfg.efficiency.latency_warmup, 0),
        resume=cfg.trainer.get("resume"),
        hparams=hparams_for_tensorboard(cfg, choices),
        weights=weights,
        tracking=tracking_from_config(cfg, choices, values),
    )


# Keys a selection grid may not vary: the folds are cut from one dataset and split, with one
# seed, and the bookkeeping keys and runner's switches say how a run is kept, not what it trains.
FIXED_FOR_SELECTION = (
    "dataset",
    "split",
    "selection",
    "seed",
    "hydra",
    "trainer.refit",
    *BOOKKEEPING_KEYS,
)


def selection_from_config(cfg: DictConfig, choices: Choices) -> Selection | None:
    """``selection=kfold``'s settings and every candidate of its grid built as an experiment
    (so a bad candidate value fails before any data is read); None for ``selection=none``."""
    node = cfg.get("selection")
    if not node or node.get("method", "none") == "none":
        return None
    method = node.get("method")
    if method != "kfold":
        raise UserError(f"selection.method={method!r} is invalid: expected none or kfold")
    folds = check_int("selection.folds", node.get("folds"), 2)
    metric = node.get("metric")
    if metric not in selection_metrics():
        raise UserError(
            f"selection.metric={metric!r} is invalid: expected one of "
            f"{', '.join(selection_metrics())}"
        )
    seed = check_int("selection.seed", node.get("seed"), 0)
    grid = selection_grid(cfg)
    if cfg.trainer.get("refit"):
        raise UserError(
            "selection=kfold trains the chosen settings on every training case itself: "
            "set trainer.refit=false (the refit's validation part is one of the folds' cases)"
        )
    candidates = []
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values, strict=True))
        candidate_cfg = with_overrides(cfg, overrides)
        experiment = from_config(candidate_cfg, choices)
        if experiment.training.trainer.patience is not None:
            raise UserError(
                "selection=kfold trains every candidate for its whole schedule and scores the "
                f"last epoch: set trainer.patience=null (it is {experiment.training.trainer.patience})"
            )
        identity = {
            k: v
            for k, v in flatten(settings(candidate_cfg)).items()
            if not key_in(k, (*BOOKKEEPING_KEYS, "selection"))
        }
        candidates.append(Candidate(overrides, experiment, identity))
    return Selection(folds, metric, seed, grid, tuple(candidates))


def with_overrides(cfg: DictConfig, overrides: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with each dotted key set to its value: a selection candidate's config,
    or a finished selection run's chosen one (``metrics.json`` ``selection.chosen``)."""
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


def selection_grid(cfg: DictConfig) -> dict[str, list[Any]]:
    """``selection.grid`` as ``{config key: candidate values}``, each key checked against the
    config (nested and dotted keys both read as the dotted key)."""
    raw = cfg.selection.get("grid")
    example = "e.g. 'selection.grid={optimizer.lr:[0.001,0.003]}'"
    if raw is None or (isinstance(raw, Mapping) and not raw):
        raise UserError(
            f"selection=kfold needs selection.grid, the settings to choose among ({example})"
        )
    if not isinstance(raw, Mapping):
        raise UserError(f"selection.grid={raw!r} is invalid: expected a mapping ({example})")
    grid = flatten(OmegaConf.to_container(raw, resolve=True))
    known = flatten(settings(cfg))
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        fixed = next((f for f in FIXED_FOR_SELECTION if key == f or key.startswith(f + ".")), None)
        if fixed is not None:
            raise UserError(
                f"selection.grid: {key} cannot be selected: the folds are cut from one "
                "dataset, split and seed, and the runner's switches are not settings; choose "
                "among model, optimizer, scheduler, augment or trainer keys"
            )
        if key not in known:
            close = nearest_key(key, list(known))
            group = key.partition(".")[0]
            has = sorted(k for k in known if k.startswith(group + ".") and "._" not in k)
            hint = (
                f"; did you mean {close}?"
                if close
                else (f"; {group} has: {', '.join(has)}" if has else "")
            )
            raise UserError(f"selection.grid: {key} is not a config key{hint}")
        if not isinstance(values, list):
            raise UserError(
                f"selection.grid: {key}={values!r} is invalid: expected a list of candidate "
                f"values, e.g. {key}=[{values!r}]"
            )
        if not values:
            raise UserError(f"selection.grid: {key} has no candidate values: list at least one")
        out[key] = values
    return out


def tracking_from_config(cfg: DictConfig, choices: Choices, values: Any) -> Tracking | None:
    """The tracking group's tracker with the run's params and tags; None for tracking=none.
    MLflow itself is not needed here: a tracked run is exported where MLflow is not installed."""
    if not cfg.get("tracking"):
        return None
    tracker = build(cfg, "tracking")
    if not isinstance(tracker, MlflowTracking):
        target = cfg.tracking.get("_target_")
        raise UserError(
            f"tracking._target_={target!r} is invalid: expected {MlflowTracking.__module__}.{MlflowTracking.__qualname__}"
        )
    # Hydra's own groups (hydra/launcher, ...) say how the run was launched, not what it is.
    tags = {g: option for g, option in choices.groups if g.partition("/")[0] != "hydra"}
    return Tracking(tracker, flatten(values), tags)


def settings(cfg: DictConfig) -> Any:
    """The config as plain values, interpolations resolved where they resolve; one that does
    not is left to fail where its group is built, with that group's message."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


def model_from_config(cfg: DictConfig, in_channels: int, num_classes: int) -> Any:
    """The model group's network (its fine-tuning keys left to :func:`fine_tuning`)."""
    return build(
        cfg, "model", exclude=FINETUNE_KEYS, in_channels=in_channels, num_classes=num_classes
    )


def fine_tuning(cfg: DictConfig) -> tuple[FineTune | None, WeightsSource | None]:
    """``model.freeze`` / ``unfreeze_after`` / ``backbone_lr`` and ``model.weights``, checked
    now (a missing weights file fails before any data is read); None for what is off."""
    model = cfg.get("model") or {}
    try:
        finetune = FineTune(
            freeze=model.get("freeze", "none"),
            unfreeze_after=model.get("unfreeze_after"),
            backbone_lr=model.get("backbone_lr", 1.0),
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    weights = WeightsSource.from_config(
        model.get("weights"), model.get("weights_sha256"), Path(cfg.paths.data_dir) / "weights"
    )
    if finetune.freeze != "none" and weights is None:
        log.warning(
            "model.freeze=%s without model.weights: the frozen part keeps its random "
            "initialisation",
            finetune.freeze,
        )
    return (finetune if finetune.enabled else None), weights


def _unexpected_keyword(error: BaseException) -> str | None:
    """The keyword a call rejected (``... got an unexpected keyword argument 'x'``), or None."""
    m = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    return m[1] if m else None


def build(cfg: DictConfig, group: str, exclude: Sequence[str] = (), **kwargs: Any) -> Any:
    """``instantiate(cfg[group])``, with the constructor's own error instead of Hydra's wrapper;
    the keys in ``exclude`` are not passed to the constructor.

    Hydra wraps a :class:`UserError` raised by a loader or model in an InstantiationException
    whose text is a traceback summary; the user should see the original one-line message, tagged
    with the config group it came from. Any other error from the constructor stays a bug.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node: Any = cfg[group]
    if exclude and any(key in node for key in exclude):
        node = {
            k: v
            for k, v in OmegaConf.to_container(node, resolve=True).items()  # type: ignore[union-attr]
            if k not in exclude
        }
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, TypeError):
            # A key the constructor does not take, e.g. +trainer.foo=1.
            key = _unexpected_keyword(cause)
            if key:
                target = cfg[group].get("_target_", group)
                raise UserError(f"{group}.{key} is not a parameter of {target}") from None
        if isinstance(cause, UserError):
            msg = str(cause)
            if not msg.startswith(f"{group}."):
                msg = f"{group}: {msg}"
            raise UserError(msg) from cause
        raise


# torch.optim's wording -> (config key, what it takes). torch checks these only when an
# optimizer is created; check_optimizer does that before any data is read.
_OPTIMIZER_CHECKS = {
    "Invalid learning rate": ("lr", "a number >= 0"),
    "Invalid epsilon value": ("eps", "a number >= 0"),
    "Invalid weight_decay value": ("weight_decay", "a number >= 0"),
    "Invalid momentum value": ("momentum", "a number >= 0"),
    "Invalid beta parameter": ("betas", "two numbers in [0, 1)"),
    "Invalid alpha value": ("alpha", "a number >= 0"),
}


def check_optimizer(optimizer_factory: Any, scheduler_factory: Any) -> None:
    """Create the optimizer and scheduler on a dummy parameter, turning torch's errors into
    messages that name the config key (``optimizer.lr=-0.1 is invalid: ...``)."""
    keywords = dict(getattr(optimizer_factory, "keywords", {}) or {})
    target = getattr(getattr(optimizer_factory, "func", None), "__name__", "the optimizer")
    for key, value in keywords.items():
        # A typo such as optimizer.lr=1e-3x arrives as a string; torch's error would not say so.
        if key in ("lr", "eps", "weight_decay", "momentum", "alpha") and isinstance(value, str):
            raise UserError(f"optimizer.{key}={value!r} is invalid: expected a number")
    try:
        optimizer = optimizer_factory([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as e:
        msg = str(e)
        key = _unexpected_keyword(e)
        if key:
            raise UserError(f"optimizer.{key} is not a parameter of {target}") from None
        for prefix, (key, expected) in _OPTIMIZER_CHECKS.items():
            if msg.startswith(prefix):
                value = keywords.get(key, msg.rpartition(":")[2].strip())
                raise UserError(
                    f"optimizer.{key}={value} is invalid: expected {expected}"
                ) from None
        raise UserError(f"optimizer ({target}): {msg}") from None
    if scheduler_factory is not None:
        try:
            if isinstance(scheduler_factory, StepSchedule):
                scheduler_factory(optimizer, steps_per_epoch=1)
            else:
                scheduler_factory(optimizer)
        except (ValueError, TypeError, ZeroDivisionError) as e:
            key = _unexpected_keyword(e)
            if key:
                raise UserError(f"scheduler.{key} is not a parameter of the scheduler") from None
            raise UserError(f"scheduler: {e}") from None


def hparams_for_tensorboard(cfg: DictConfig, choices: Choices) -> dict[str, Any]:
    """Scalar config values that identify a run in TensorBoard's HPARAMS tab."""
    out: dict[str, Any] = {"model": choices.model, "dataset": choices.dataset, "seed": cfg.seed}
    for group in ("model", "optimizer", "trainer", "split"):
        node = OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) else {}
        for key, value in (node or {}).items():  # type: ignore[union-attr]
            if key.startswith("_"):
                continue
            if isinstance(value, list):
                value = "x".join(map(str, value))
            if isinstance(value, bool | int | float | str):
                out[f"{group}.{key}"] = value
    return out
