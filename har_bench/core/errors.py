"""Bad input versus bugs: the one classification the CLI's exit code and a sweep's verdict share.

A user error is shown as one ``error:`` line (exit code 2, no traceback) and recorded in the run's
``metrics.json`` as ``user_error: true``; anything else is a bug: exit code 1, its traceback in
the run's ``error.txt``, ``user_error: false``. Input is recognised where it is checked: the code
that knows a value, a file or a shape came from the user raises :class:`UserError` (or
:class:`MissingInputError`) there. An exception of any other type, a ValueError deep in a library
included, is a bug, whatever its type. :func:`har_bench.config.as_user_error` adds only
OmegaConf's errors about a config at the edge. Standard library only, so that every module may
import it.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import traceback
from collections.abc import Mapping


class UserError(ValueError):
    """Bad input: the message names the bad value and what was expected.

    A ValueError too, so that Python callers catching ValueError for a bad setting keep working
    whichever module raised it.
    """


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named (or that their setting implies) is not there.

    A FileNotFoundError too, so that code falling back when an optional file is absent keeps
    catching it.
    """


class MissingExtraError(UserError):
    """An optional dependency is not installed; the message names the extra to install."""


def bug_message(e: BaseException, traceback_at: object | None = None) -> str:
    """The one line shown for an exception that is not bad input."""
    where = f"; the traceback is in {traceback_at}" if traceback_at is not None else ""
    return (
        f"internal error (a bug in har-bench, not a problem with your input): "
        f"{type(e).__name__}: {e}{where}"
    )


def save_traceback(e: BaseException) -> str:
    """``e``'s traceback in a new file of the temp folder, for a command without a run dir to
    keep it in; returns the file's path."""
    fd, path = tempfile.mkstemp(prefix="har-bench-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("".join(traceback.format_exception(e)))
    return path


def is_number(value: object) -> bool:
    """A real number and not a bool: what a numeric setting must be before it is compared
    (an override such as ``key=abc`` arrives as a string)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int_at_least(value: object, minimum: int) -> bool:
    """An integer (not a bool) >= ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def check_int(key: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else a UserError naming ``key=value`` and the range."""
    if not is_int_at_least(value, minimum):
        raise UserError(f"{key}={value!r} is invalid: expected an integer >= {minimum}")
    return int(value)


def check_optional_int(key: str, value: object, minimum: int = 1) -> int | None:
    """:func:`check_int` for a setting that may also be null."""
    if value is None:
        return None
    if not is_int_at_least(value, minimum):
        raise UserError(f"{key}={value!r} is invalid: expected null or an integer >= {minimum}")
    return int(value)


def check_float(key: str, value: object) -> float:
    """``value`` as a finite float (not a bool), else a UserError naming ``key=value``: NaN or
    inf in a setting only shows up later, as a diverged run or an endless loop."""
    if not is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        raise UserError(f"{key}={value!r} is invalid: expected a finite number")
    return float(value)  # type: ignore[arg-type]


def check_finite_settings(settings: object, prefix: str = "") -> None:
    """Every float in a nested dict/list of settings finite, else :func:`check_float`'s error
    for the first one, named by its dotted key (``optimizer.lr``, ``dataset.mean[1]``)."""
    if isinstance(settings, Mapping):
        for k, v in settings.items():
            check_finite_settings(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(settings, list | tuple):
        for i, v in enumerate(settings):
            check_finite_settings(v, f"{prefix}[{i}]")
    elif isinstance(settings, float):
        check_float(prefix, settings)


def available_memory() -> int | None:
    """Bytes a new allocation can take without swapping: ``MemAvailable`` of /proc/meminfo,
    lowered to a cgroup (v2) memory limit's headroom when a container sets one; elsewhere the
    free physical pages; None where the platform does not say."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return available


def format_bytes(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def check_memory(what: str, nbytes: float, hint: str) -> None:
    """A UserError when ``what`` (about ``nbytes``) cannot fit in the memory available now,
    before it is allocated: a MemoryError half-way, or swapping for hours, says less."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise UserError(
            f"{what} needs about {format_bytes(nbytes)} of memory, but {format_bytes(available)} "
            f"is available; {hint}"
        )
