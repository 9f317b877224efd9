"""The configuration: where the YAML lives, how a command line composes it, which keys matter,
and which errors are bad input (:func:`as_user_error`).

The CLI, ``trainer.resume`` and the tests compose through :func:`compose`, so a config composed
outside a run equals the one Hydra hands a run. Hydra is imported only inside the functions
that need it: the CLI imports this module before it knows whether a run starts at all.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from har_bench.core.errors import UserError, bug_message, save_traceback

CONFIG_NAME = "config"
VERSION_BASE = "1.3"

# Keys that say where a run's files go or how it is watched, not what it computes. A resume may
# change them, and runs that differ only in them are the same experiment.
BOOKKEEPING_KEYS = (
    "trainer.resume",
    "trainer.overwrite",
    "trainer.progress",
    "paths",
    "efficiency",
    "dataset.progress",
    "dataset.data_dir",
    "tracking",
)


# Keys added to the configs after runs were saved without them, with the value that does what
# those runs did: a saved run without the key equals a new one that has it at this value (a key
# added with a null default needs no entry).
ADDED_KEYS: dict[str, Any] = {
    "trainer.compile": False,
    "dataset.nan_policy": "error",
    "selection.method": "none",
}


def setting(flat: Mapping[str, Any], key: str, missing: Any = None) -> Any:
    """``key``'s value in a flattened config, or what a run saved before it existed did."""
    return flat.get(key, ADDED_KEYS.get(key, missing))


# Modules that moved when the package took its layered layout. A run directory saved before
# names the old ones in its config's ``_target_``s and must still resume, export and predict.
MOVED_MODULES = {
    "har_bench.engine": "har_bench.training.engine",
    "har_bench.augment": "har_bench.training.augment",
    "har_bench.image_transforms": "har_bench.training.image_transforms",
    "har_bench.schedules": "har_bench.training.schedules",
    "har_bench.sweep": "har_bench.analysis.sweep",
}


def upgrade_targets(obj: Any) -> Any:
    """``obj`` (a saved config as plain dicts and lists) with moved ``_target_`` modules renamed."""
    if isinstance(obj, dict):
        out = {k: upgrade_targets(v) for k, v in obj.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            module, _, name = target.rpartition(".")
            out["_target_"] = f"{MOVED_MODULES.get(module, module)}.{name}"
        return out
    if isinstance(obj, list):
        return [upgrade_targets(v) for v in obj]
    return obj


def config_dir() -> Path:
    """``configs/`` inside an installed wheel, else the repository's top-level ``configs/``."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"


def override_key(override: str) -> str:
    """``model.layers`` for ``+model.layers=[1,1]`` (the key or group an override sets)."""
    return override.split("=", 1)[0].lstrip("+~")


def compose(overrides: Sequence[str] = (), *, return_hydra_config: bool = False) -> Any:
    """The config (an OmegaConf ``DictConfig``, interpolations unresolved) these overrides give.

    Without ``return_hydra_config`` the ``hydra.*`` overrides are left out: they configure
    Hydra, not the task, and a launcher's keys would fail to compose without its group.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not return_hydra_config:
        overrides = [o for o in overrides if not override_key(o).startswith("hydra.")]
    # Hydra keeps one global instance; a CLI call, a resume check and a test each start afresh.
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=VERSION_BASE):
            return hydra_compose(
                config_name=CONFIG_NAME,
                overrides=list(overrides),
                return_hydra_config=return_hydra_config,
            )
    finally:
        GlobalHydra.instance().clear()


def compose_container(overrides: Sequence[str]) -> dict[str, Any]:
    """:func:`compose` as plain dicts and lists, as ``.hydra/config.yaml`` reads back."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(overrides), resolve=False)  # type: ignore[return-value]


@dataclass(frozen=True)
class CommandLine:
    """A ``har-bench`` command line split as Hydra splits it."""

    overrides: list[str]
    multirun: bool
    flags: list[str]  # everything that is not an override, in order


def _hydra_flags() -> argparse.ArgumentParser:
    # The flags of Hydra 1.3's own parser (hydra.main), so that a flag's value (--cfg job,
    # -cn NAME) is never taken for an override; Hydra itself still parses the command line.
    p = argparse.ArgumentParser(add_help=False, prog="har-bench")
    p.add_argument("overrides", nargs="*")
    for flag in ("--help/-h", "--hydra-help", "--version", "--resolve", "--run/-r"):
        p.add_argument(*flag.split("/"), action="store_true")
    p.add_argument("--multirun", "-m", action="store_true")
    p.add_argument("--shell-completion", "-sc", action="store_true")
    p.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    for flag in ("--package/-p", "--config-path/-cp", "--config-name/-cn", "--config-dir/-cd"):
        p.add_argument(*flag.split("/"))
    p.add_argument("--experimental-rerun")
    p.add_argument(
        "--info",
        "-i",
        nargs="?",
        const="all",
        choices=["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"],
    )
    return p


def parse_command_line(args: Sequence[str]) -> CommandLine:
    """The overrides and the ``-m`` flag of a command line, as Hydra will read them."""
    ns, _ = _hydra_flags().parse_known_args(list(args))
    overrides = [str(o) for o in ns.overrides or []]
    return CommandLine(
        overrides=overrides,
        multirun=bool(ns.multirun),
        flags=[a for a in args if a not in overrides],
    )


def hydra_choices() -> dict[str, str]:
    """The option chosen per config group (``model: resnext50``) of the running Hydra job, or
    an empty dict outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {str(k): str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b": value}``; lists stay values (a layer list is one setting)."""
    out: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for k, v in node.items():
            full = f"{prefix}{k}"
            if isinstance(v, Mapping) and v:
                out.update(flatten(v, full + "."))
            else:
                out[full] = v
    return out


def key_in(key: str, keys: Sequence[str]) -> bool:
    """Whether ``key`` is one of ``keys`` or lies below one of them (``paths.data_dir`` in
    ``paths``)."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def as_user_error(e: BaseException) -> UserError | None:
    """``e`` as bad input with its one-line message, or None for a bug.

    The one classification of user errors: the CLI exits 2 on them and ``metrics.json``
    records them (``user_error``) for the sweep summary. Bad input is what the code that checked
    it raised as :class:`UserError`, and OmegaConf's errors about the config; an exception of any
    other type is a bug, a ValueError or a missing file deep in a library included.
    """
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    if isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    if isinstance(e, UserError):
        return e
    if isinstance(e, MissingMandatoryValue):
        key = e.full_key or "a config value"
        return UserError(f"{key} is required (it is ??? in the config): set it, e.g. {key}=...")
    if isinstance(e, OmegaConfBaseException):
        # Interpolation and type errors: OmegaConf's first line names the key.
        return UserError(str(e).strip().splitlines()[0])
    return None


def report_error(e: BaseException) -> int:
    """A verb's failure as its one ``error:`` line on stderr and its exit code: 2 for bad input,
    1 for a bug (whose traceback is saved and named in the line)."""
    import sys

    user_error = as_user_error(e)
    if user_error is None:
        print(f"error: {bug_message(e, save_traceback(e))}", file=sys.stderr)
        return 1
    print(f"error: {user_error}", file=sys.stderr)
    return 2


# -- composition errors as one line -----------------------------------------------------------


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
            elif close:
                hint = f"; did you mean {close}?"
            else:
                siblings = _children(key.rpartition(".")[0], _config_keys(args))
                hint = f"; {key.rpartition('.')[0]} has: {', '.join(siblings)}" if siblings else ""
            return f"{key} is not a config key{hint} (har-bench --help lists every key)"
        if m and cause is not None:
            return f"cannot set {m[1]}: {str(cause).strip().splitlines()[0]}"
        return " ".join(line.strip() for line in text.splitlines()[:2])
    if isinstance(e, HydraException | OmegaConfBaseException):
        return first
    if isinstance(e, ValueError) and first.startswith("Only one of --run, --multirun"):
        # Hydra's own check of its flags, raised as a plain ValueError.
        return f"{first} (e.g. print a sweep's config with --cfg job and no -m)"
    return None


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    import difflib

    by_lower = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


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
    return nearest_key(key, _config_keys(args))


def nearest_key(key: str, keys: Sequence[str]) -> str | None:
    """The key of ``keys`` (dotted, ``optimizer.lr``) nearest to a misspelled ``key``,
    siblings first; None when none is close."""
    parent, _, leaf = key.rpartition(".")
    siblings = _children(parent, keys)
    if parent and siblings:
        # Only a sibling: the whole path would match on the shared prefix alone
        # (model.groups -> model.dropout).
        close = _closest(leaf, siblings)
        return f"{parent}.{close}" if close else None
    return _closest(key, keys)


def _children(parent: str, keys: Sequence[str]) -> list[str]:
    """The keys directly under ``parent``, without Hydra's own (``_target_``, ...)."""
    leaves = [k.rpartition(".")[2] for k in keys if parent and k.rpartition(".")[0] == parent]
    return [leaf for leaf in leaves if not leaf.startswith("_")]


def _config_keys(args: Sequence[str]) -> list[str]:
    """Every key (dotted) of the config the command's group choices compose; [] when even
    the default config does not compose."""
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
        return []
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k in node:
            full = f"{prefix}{k}"
            keys.append(full)
            child = OmegaConf.select(node, str(k), throw_on_resolution_failure=False)
            if OmegaConf.is_dict(child):
                walk(child, full + ".")

    walk(cfg, "")
    return keys
