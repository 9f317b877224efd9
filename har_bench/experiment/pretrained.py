"""Pretrained weights for a model (``model.weights``): where they come from, and loading them.

``model.weights`` is one of

* ``imagenet`` / ``imagenet_v2``: torchvision's ImageNet file for this architecture (found from
  the model's own settings, see :data:`TORCHVISION_ARCHS`), or ``imagenet:<arch>`` to name it;
* an ``http(s)://`` URL: downloaded once into ``paths.data_dir/weights/`` by the project's
  downloader (:func:`har_bench.core.download.download`), checked against
  ``model.weights_sha256`` when given, else against the hash recorded at first download;
* a file: torchvision's plain state dict, a har-bench ``best.pt``/``last.pt`` or any
  ``{"model" | "state_dict": state dict}``; or a har-bench run directory (its
  ``checkpoints/best.pt``).

Loading is strict for everything but the classifier head: every other tensor must exist on
both sides with the same shape, else one line names the first differences. The head is loaded
when its shapes match and re-created (kept at its fresh initialisation) when they do not, e.g.
ImageNet's 1000 classes for CIFAR-10's 10, or when the weights come from a har-bench run whose
classes (recorded in its ``model_summary.json``) are not the dataset's: five digits are not
five other digits.

torchvision publishes its files under ``https://download.pytorch.org/models/`` with the first
8 hex digits of their SHA-256 in the name (``resnet18-f37072fd.pth``); that prefix is the hash
it checks (``load_state_dict_from_url(check_hash=True)``) and the one checked here. The full
SHA-256 is recorded at first download and verified on every later use; pin it with
``model.weights_sha256``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from har_bench.core.download import DownloadError, download, filename_from_url, sha256_file
from har_bench.core.errors import MissingInputError, UserError
from har_bench.runs import rundir
from har_bench.training.checkpoint import BEST_CHECKPOINT, load_checkpoint
from har_bench.training.image_transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

TORCHVISION_URL = "https://download.pytorch.org/models/"

# torchvision's ResNet family as har-bench ResNet settings (model.*). Besides these, torchvision's
# networks take 3 input channels, model.layout=2d_image and the default stem and kernels.
TORCHVISION_ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": {"block": "basic", "layers": [2, 2, 2, 2], "cardinality": 1, "base_width": 64},
    "resnet34": {"block": "basic", "layers": [3, 4, 6, 3], "cardinality": 1, "base_width": 64},
    "resnet50": {"block": "bottleneck", "layers": [3, 4, 6, 3], "cardinality": 1, "base_width": 64},
    "resnet101": {
        "block": "bottleneck",
        "layers": [3, 4, 23, 3],
        "cardinality": 1,
        "base_width": 64,
    },
    "resnet152": {
        "block": "bottleneck",
        "layers": [3, 8, 36, 3],
        "cardinality": 1,
        "base_width": 64,
    },
    "resnext50_32x4d": {
        "block": "bottleneck",
        "layers": [3, 4, 6, 3],
        "cardinality": 32,
        "base_width": 4,
    },
    "resnext101_32x8d": {
        "block": "bottleneck",
        "layers": [3, 4, 23, 3],
        "cardinality": 32,
        "base_width": 8,
    },
    "wide_resnet50_2": {
        "block": "bottleneck",
        "layers": [3, 4, 6, 3],
        "cardinality": 1,
        "base_width": 128,
    },
}
TORCHVISION_FIXED = {
    "in_channels": 3,
    "layout": "2d_image",
    "stem_width": 64,
    "kernel_size": 3,
    "stem_kernel_size": 7,
    "stem_stride": 2,
    "stem_pool": True,
    "depthwise": False,
}
# File names from torchvision 0.28's models/resnet.py (<Arch>_Weights.IMAGENET1K_V1 / _V2).
# V1 are the files torchvision's old ``pretrained=True`` loaded (evaluated at resize 256, crop
# 224); V2 come from its 2021 training recipe (evaluated at resize 232, crop 224).
TORCHVISION_FILES: dict[str, dict[str, str]] = {
    "imagenet": {
        "resnet18": "resnet18-f37072fd.pth",
        "resnet34": "resnet34-b627a593.pth",
        "resnet50": "resnet50-0676ba61.pth",
        "resnet101": "resnet101-63fe2227.pth",
        "resnet152": "resnet152-394f9c45.pth",
        "resnext50_32x4d": "resnext50_32x4d-7cdf4587.pth",
        "resnext101_32x8d": "resnext101_32x8d-8ba56ff5.pth",
        "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
    },
    "imagenet_v2": {
        "resnet50": "resnet50-11ad3fa6.pth",
        "resnet101": "resnet101-cd907fc2.pth",
        "resnet152": "resnet152-f82ba261.pth",
        "resnext50_32x4d": "resnext50_32x4d-1a0047aa.pth",
        "resnext101_32x8d": "resnext101_32x8d-110c445d.pth",
        "wide_resnet50_2": "wide_resnet50_2-9ba9bcbe.pth",
    },
}
# Errors name this many differing tensors.
SHOWN_DIFFERENCES = 3


def hash_prefix(file_name: str) -> str:
    """The SHA-256 prefix torchvision puts in a file name (``resnet18-f37072fd.pth``)."""
    return file_name.rsplit("-", 1)[1].split(".", 1)[0]


def torchvision_arch(model: nn.Module) -> str | None:
    """The torchvision architecture ``model`` is (by its settings), or None."""
    arch = getattr(model, "arch", None)
    if not isinstance(arch, Mapping):
        return None
    for name, settings in TORCHVISION_ARCHS.items():
        if all(arch.get(k) == v for k, v in (settings | TORCHVISION_FIXED).items()):
            return name
    return None


def _nearest_arch(model: nn.Module) -> str:
    """How ``model`` differs from the torchvision architecture it is closest to."""
    arch = getattr(model, "arch", None)
    if not isinstance(arch, Mapping):
        return f"{type(model).__name__} is not a ResNet"

    def differences(name: str) -> list[str]:
        wanted = TORCHVISION_ARCHS[name] | TORCHVISION_FIXED
        return [f"{k}={arch.get(k)!r} (not {v!r})" for k, v in wanted.items() if arch.get(k) != v]

    name = min(TORCHVISION_ARCHS, key=lambda n: len(differences(n)))
    return f"nearest is {name}: " + ", ".join(differences(name))


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file, computed once per process and file version (a run loads the
    same file for the model and again for a refit)."""
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class WeightsSource:
    """``model.weights`` (+ ``model.weights_sha256``), checked and ready to fetch.

    Args:
        value: as configured.
        sha256: the expected SHA-256 of the file, or None.
        cache_dir: where downloads go (``paths.data_dir/weights``).
    """

    value: str
    sha256: str | None
    cache_dir: Path

    @classmethod
    def from_config(
        cls, value: object, sha256: object, cache_dir: str | Path
    ) -> WeightsSource | None:
        """None when no weights are configured; a bad value fails here, before data is read."""
        if value is None or str(value).strip() == "":
            if sha256 not in (None, ""):
                raise UserError("model.weights_sha256 is set but model.weights is not")
            return None
        expected = None
        if sha256 not in (None, ""):
            expected = str(sha256).strip().lower()
            if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
                raise UserError(
                    f"model.weights_sha256={sha256!r} is invalid: expected 64 hex characters"
                )
        source = cls(str(value).strip(), expected, Path(cache_dir).expanduser())
        if source.kind == "torchvision":
            tag, _, arch = source.value.partition(":")
            if arch and arch not in TORCHVISION_FILES[tag]:
                raise UserError(
                    f"model.weights={source.value}: torchvision publishes {tag} weights for "
                    f"{', '.join(TORCHVISION_FILES[tag])}"
                )
        elif source.kind == "path":
            source.local_file()  # a missing file or run dir fails now
        return source

    @property
    def kind(self) -> str:
        """``torchvision``, ``url`` or ``path``."""
        if self.value.partition(":")[0] in TORCHVISION_FILES:
            return "torchvision"
        if self.value.lower().startswith(("http://", "https://")):
            return "url"
        return "path"

    def local_file(self) -> Path:
        """The file a ``path`` value names (a run directory: its ``checkpoints/best.pt``)."""
        path = Path(self.value).expanduser()
        if path.is_dir():
            best = rundir.checkpoint_dir(path) / BEST_CHECKPOINT
            if best.is_file():
                return best
            if (path / BEST_CHECKPOINT).is_file():
                return path / BEST_CHECKPOINT
            raise MissingInputError(
                f"model.weights={self.value}: a folder without {best.relative_to(path)}: "
                "expected a weights file, a har-bench run directory, a URL or imagenet"
            )
        if not path.is_file():
            raise MissingInputError(
                f"model.weights={self.value}: no such file; expected a weights file, a "
                "har-bench run directory, a URL or imagenet"
            )
        return path

    def torchvision_file(self, model: nn.Module) -> tuple[str, str]:
        """(architecture, file name) of torchvision's file for ``model``."""
        tag, _, arch = self.value.partition(":")
        if not arch:
            found = torchvision_arch(model)
            if found is None:
                raise UserError(
                    f"model.weights={self.value}: torchvision publishes ImageNet weights for "
                    f"{', '.join(TORCHVISION_FILES[tag])} and this model is none of them "
                    f"({_nearest_arch(model)})"
                )
            arch = found
        if arch not in TORCHVISION_FILES[tag]:
            raise UserError(
                f"model.weights={self.value}: torchvision publishes no {tag} weights for {arch} "
                f"(it does for {', '.join(TORCHVISION_FILES[tag])})"
            )
        return arch, TORCHVISION_FILES[tag][arch]

    def fetch(self, model: nn.Module, progress: bool = True) -> Path:
        """The weights file on disk: downloaded (once) or local, its hash checked."""
        if self.kind == "path":
            path = self.local_file()
            if self.sha256 is not None and file_sha256(path) != self.sha256:
                raise UserError(
                    f"model.weights={self.value}: sha256 {file_sha256(path)} is not the "
                    f"expected model.weights_sha256={self.sha256}"
                )
            return path
        if self.kind == "url":
            url = self.value
            # One folder per URL: two URLs ending in the same file name do not collide.
            folder = hashlib.sha1(url.encode()).hexdigest()[:12]
            dest = self.cache_dir / folder / filename_from_url(url, "weights.pt")
            return self._download(url, dest, progress)
        _, name = self.torchvision_file(model)
        dest = self._download(
            TORCHVISION_URL + name, self.cache_dir / "torchvision" / name, progress
        )
        actual = file_sha256(dest)
        if not actual.startswith(hash_prefix(name)):
            dest.unlink(missing_ok=True)
            dest.with_name(dest.name + ".sha256").unlink(missing_ok=True)
            raise UserError(
                f"model.weights={self.value}: {name} has sha256 {actual}, not the "
                f"{hash_prefix(name)}... torchvision publishes; the file was discarded"
            )
        return dest

    def _download(self, url: str, dest: Path, progress: bool) -> Path:
        try:
            return download(url, dest, self.sha256, progress=progress)
        except DownloadError as e:
            reason = e.__cause__ if e.__cause__ is not None else e
            reason = getattr(reason, "reason", reason)
            raise UserError(
                f"model.weights={self.value}: could not download {url} ({reason}); fetch it "
                f"where there is a connection and give the file: model.weights=PATH"
            ) from None
        except ValueError as e:  # a hash that does not match
            raise UserError(f"model.weights={self.value}: {e}") from None

    def source_run(self) -> tuple[Path, dict[str, Any]] | None:
        """(run dir, its model_summary.json) when the weights are a har-bench run's."""
        return source_run(self.local_file()) if self.kind == "path" else None

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...], str]:
        """(mean, std, where from) the images must be normalised with for these weights: the
        pretrained run's own when they are a har-bench run's and it recorded them, else
        ImageNet's (torchvision's weights, and the convention for other files)."""
        run = self.source_run()
        if run is not None:
            recorded = run[1].get("input") or {}
            if recorded.get("mean") and recorded.get("std"):
                return tuple(recorded["mean"]), tuple(recorded["std"]), f"pretrained run {run[0]}"
        return IMAGENET_MEAN, IMAGENET_STD, "imagenet"


def source_run(checkpoint: Path) -> tuple[Path, dict[str, Any]] | None:
    """The har-bench run holding ``checkpoint`` (``<run>/checkpoints/[refit/]best.pt``) and
    its ``model_summary.json``, or None."""
    for folder in list(checkpoint.resolve().parents)[:3]:
        path = folder / rundir.MODEL_SUMMARY
        if path.is_file():
            try:
                summary = rundir.read_json(path)
            except (OSError, ValueError):
                return None
            return (folder, summary) if isinstance(summary, dict) else None
    return None


def state_dict_in(obj: Any, what: str) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: plain (torchvision), or under ``model``
    (har-bench's best.pt / last.pt) or ``state_dict``; a ``module.`` prefix (saved from DDP)
    is dropped."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise UserError(f"{what}: holds no state dict (parameter names -> tensors)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def load_weights(
    model: nn.Module,
    source: WeightsSource,
    class_names: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``source`` into ``model`` (strict but for the head, which is loaded only for the
    same classes); what was loaded, for the run's records."""
    path = source.fetch(model, progress)
    what = f"model.weights={source.value}"
    state = state_dict_in(load_checkpoint(path, what=what), what)
    own = model.state_dict()
    head = getattr(model, "head_name", None)

    def in_head(key: str) -> bool:
        return head is not None and key.startswith(head + ".")

    differences = []
    for key, tensor in own.items():
        if in_head(key):
            continue
        if key not in state:
            differences.append(f"{key} {_shape(tensor)} missing from the checkpoint")
        elif state[key].shape != tensor.shape:
            differences.append(f"{key}: checkpoint {_shape(state[key])}, model {_shape(tensor)}")
    differences += [
        f"{key} {_shape(t)} not in the model"
        for key, t in state.items()
        if key not in own and not in_head(key)
    ]
    if differences:
        raise UserError(
            f"{what} does not fit this model: {len(differences)} tensors differ, first "
            + "; ".join(differences[:SHOWN_DIFFERENCES])
            + " (another architecture, or model.* settings that differ from the weights')"
        )
    head_keys = [k for k in own if in_head(k)]
    head_fits = all(k in state and state[k].shape == own[k].shape for k in head_keys)
    run = source.source_run()
    their_classes = run[1].get("classes") if run is not None else None
    other_classes = (
        their_classes is not None and class_names is not None and their_classes != class_names
    )
    head_fits = head_fits and not other_classes
    load = {k: v for k, v in state.items() if k in own and (head_fits or not in_head(k))}
    missing, unexpected = model.load_state_dict(load, strict=False)
    assert not unexpected and set(missing) <= set(head_keys), (missing, unexpected)
    info: dict[str, Any] = {
        "weights": source.value,
        "file": str(path),
        "sha256": file_sha256(path),
        "tensors_loaded": len(load),
    }
    if source.kind == "torchvision":
        arch, name = source.torchvision_file(model)
        info |= {"torchvision": arch, "url": TORCHVISION_URL + name}
    if not head_keys:
        info["head"] = "none (strict load)"
    elif head_fits:
        info["head"] = "loaded"
    else:
        weight = state.get(f"{head}.weight")
        before = f"{weight.shape[0]} outputs" if weight is not None else "none"
        if other_classes:
            before = f"classes {their_classes}"
        outputs = own[f"{head}.weight"].shape[0] if f"{head}.weight" in own else "?"
        info["head"] = f"re-created for {outputs} classes (checkpoint: {before})"
    log.info("model.weights: %d tensors from %s; head %s", len(load), path, info["head"])
    return info
