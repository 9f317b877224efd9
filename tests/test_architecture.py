"""The import rules of docs/architecture.md, read from the source with ``ast``: who may import
whom, where Hydra may appear, which modules load without torch, no cycles (function-level imports
included) and no private name taken from another module."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "har_bench"

# Layer -> its package or module: the tree shows the layers. Keep in step with
# docs/architecture.md.
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("har_bench.core",),
    "models": ("har_bench.models",),
    "data": ("har_bench.data",),
    "training": ("har_bench.training",),
    "config": ("har_bench.config",),
    "runs": ("har_bench.runs",),
    "experiment": ("har_bench.experiment",),
    "analysis": ("har_bench.analysis",),
    "deploy": ("har_bench.deploy",),
    "cli": ("har_bench.cli",),
    "api": ("har_bench.api",),
}
# Layer -> the layers it may import from (its own always). The package itself (``__version__``)
# may be imported by anyone.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "models": {"core"},
    "data": {"core"},
    "training": {"core"},
    "config": {"core"},
    "runs": {"core", "config", "training"},  # training: the checkpoint file names
    "experiment": {"core", "config", "models", "data", "training", "runs"},
    "analysis": {"core", "config", "runs"},
    "deploy": {"core", "config", "models", "data", "training", "runs", "experiment"},
    "cli": {"core", "config", "runs", "experiment", "analysis", "training", "deploy"},
    "api": {"core", "config", "runs", "experiment", "analysis", "training", "deploy"},
}
# The modules that may know Hydra (never its internals), and OmegaConf; a name covers its
# submodules.
HYDRA_MODULES = (
    "har_bench.config",
    "har_bench.experiment.components",
    "har_bench.experiment.run",
    "har_bench.runs.resume",
    "har_bench.analysis.sweep",
    "har_bench.cli",
    "har_bench.api",
)
# rundir reads and writes the YAML of .hydra/; deploy rebuilds a finished run from it.
OMEGACONF_MODULES = (*HYDRA_MODULES, "har_bench.runs.rundir", "har_bench.deploy")
# Loaded without torch (module-level imports, followed through har_bench): the CLI's start,
# `har-bench compare` and the sweep summary answer in a fraction of a second.
TORCH_FREE = (
    "har_bench",
    "har_bench.api",
    "har_bench.cli",
    "har_bench.analysis.compare",
    "har_bench.analysis.grouping",
    "har_bench.analysis.tables",
    "har_bench.analysis.sweep",
    "har_bench.runs.resume",
)


def covered(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


@dataclass(frozen=True)
class Import:
    module: str  # the module imported (resolved; for ``from m import name`` m.name if a module)
    names: tuple[str, ...]  # the names taken by ``from m import ...``
    line: int
    module_level: bool  # runs when the importing module is imported


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _absolute(node: ast.ImportFrom, importer: str) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package(importer) else base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _walk(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        # Function bodies run when called; `if TYPE_CHECKING:` blocks never do.
        deferred = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
            isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
        )
        if deferred:
            yield from _walk(child, False)
        else:
            yield child, module_level
            yield from _walk(child, module_level)


def imports_of(name: str) -> list[Import]:
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    found = []
    for node, module_level in _walk(tree, True):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, (), node.lineno, module_level))
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            source = _absolute(node, name)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target = sub if sub in MODULES else source
                found.append(Import(target, (alias.name,), node.lineno, module_level))
    return found


def internal(module: str) -> str | None:
    """The har_bench module an import loads (for ``a.b.c`` that is the longest known name)."""
    parts = module.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def layer_of(module: str) -> str | None:
    for layer, names in LAYERS.items():
        if covered(module, names):
            return layer
    return None


def ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def edges(name: str, module_level_only: bool = False) -> set[str]:
    """The har_bench modules importing ``name`` runs, parent packages included (importing
    ``a.b.c`` runs ``a.b``'s ``__init__``) except ``name``'s own, which are already loading."""
    out = set()
    for imp in imports_of(name):
        if module_level_only and not imp.module_level:
            continue
        target = internal(imp.module)
        if target is None:
            continue
        out |= {target, *ancestors(target)} - ancestors(name) - {name}
    return {m for m in out if m in MODULES}


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if m != "har_bench" and layer_of(m) is None]
    assert not unplaced, f"add {unplaced} to a layer here and in docs/architecture.md"


@pytest.mark.parametrize("name", [m for m in MODULES if m != "har_bench"])
def test_layer_rules(name):
    layer = layer_of(name)
    allowed = MAY_IMPORT[layer] | {layer}
    bad = []
    for imp in imports_of(name):
        top = imp.module.split(".")[0]
        if top == "hydra" and not covered(name, HYDRA_MODULES):
            bad.append(f"line {imp.line}: {imp.module} (no Hydra in layer {layer})")
        if top == "omegaconf" and not covered(name, OMEGACONF_MODULES):
            bad.append(f"line {imp.line}: {imp.module} (no OmegaConf in layer {layer})")
        if top == "hydra" and "_internal" in imp.module.split("."):
            bad.append(f"line {imp.line}: {imp.module} (Hydra internals)")
        target = internal(imp.module)
        if target is None or target == "har_bench":
            continue
        if layer_of(target) not in allowed:
            bad.append(f"line {imp.line}: {target} (layer {layer_of(target)} not in {allowed})")
    assert not bad, f"{name} imports " + "; ".join(bad)


@pytest.mark.parametrize("name", [m for m in MODULES if m != "har_bench"])
def test_no_private_name_across_modules(name):
    bad = []
    for imp in imports_of(name):
        target = internal(imp.module)
        if target is None:
            continue
        for private in [n for n in imp.names if n.startswith("_") and not n.startswith("__")]:
            bad.append(f"line {imp.line}: {private} from {target}")
        # A private module (data/_io.py) serves its own package only.
        parts = target.split(".")
        for i, part in enumerate(parts):
            package = ".".join(parts[:i])
            private = part.startswith("_") and not part.startswith("__")
            if private and not (name == package or name.startswith(package + ".")):
                bad.append(f"line {imp.line}: private module {target}")
    assert not bad, f"{name} imports " + "; ".join(bad)


def test_no_import_cycles():
    graph = {m: edges(m) for m in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n) :] + [n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", TORCH_FREE)
def test_torch_free_at_import(name):
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for imp in imports_of(m):
            if imp.module_level:
                assert imp.module.split(".")[0] != "torch", f"{m}:{imp.line} imports torch"
        todo += edges(m, module_level_only=True)


def test_the_rules_catch_what_they_are_for(tmp_path, monkeypatch):
    """The checker itself: a cycle hidden in a function, a private name and Hydra in a model."""
    fake = {
        "har_bench.models.bad": "def f():\n    import hydra\n    from har_bench.experiment.run import x\n",
        "har_bench.experiment.run": "from har_bench.models.bad import _helper\n",
    }
    for name, text in fake.items():
        path = tmp_path / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        monkeypatch.setitem(MODULES, name, path)
    with pytest.raises(AssertionError, match="no Hydra"):
        test_layer_rules("har_bench.models.bad")
    with pytest.raises(AssertionError, match="_helper from har_bench.models.bad"):
        test_no_private_name_across_modules("har_bench.experiment.run")
    with pytest.raises(AssertionError, match="har_bench.models.bad -> har_bench.experiment.run"):
        test_no_import_cycles()
