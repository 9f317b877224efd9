"""The ``har-bench`` command.

``har-bench [overrides]`` trains through Hydra; non-training verbs (``har-bench compare ...``)
are dispatched before Hydra sees the command line. Heavy imports (torch) happen only once a run
starts, so ``har-bench --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# Verbs other than training: name -> callable taking the remaining argv, returning an exit code.
VERBS: dict[str, Callable[[Sequence[str]], int]] = {}

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


def config_dir() -> Path:
    """``configs/`` inside an installed wheel, else the repository's top-level ``configs/``."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"


def _train(cfg: object) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from har_bench.run import run

    hc = HydraConfig.get()
    try:
        result = run(cfg, Path(hc.runtime.output_dir))  # type: ignore[arg-type]
    except USER_ERRORS as e:
        if hc.mode == RunMode.MULTIRUN:
            raise  # the launcher records the failed job and the sweep goes on
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    # Returned to Hydra (and to sweepers such as Optuna): the validation metric, never test.
    return result.get("best_val_metric")


def main(argv: Sequence[str] | None = None) -> int | None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in VERBS:
        return VERBS[args[0]](args[1:])
    import hydra

    if argv is not None:
        sys.argv = [sys.argv[0], *args]
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(_train)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
