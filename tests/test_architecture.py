"""The package's shape: no import cycles, layers that only import downwards, families behind their seam.

Every ``import`` in ``crab_jax`` counts, function-local ones included (a function-local import
is still a dependency). The graph is read from the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "crab_jax"

# Layers, bottom to top: a module may import its own layer and the ones below. The top-level
# modules (``crab_jax.train``, ``crab_jax.infer``, ...) are entry points above everything.
LAYERS = (
    ("io", "parallel"),
    ("models",),
    ("config",),
    ("data",),
    ("metrics",),
    ("checkpoints",),
    ("families",),
    ("evaluation",),
    ("training",),
    ("study",),
    ("cli",),
)
# The public commands' modules (``python -m ...``): thin entry points above every layer, wherever
# their spelling puts them.
ENTRY_POINTS = ("crab_jax.train", "crab_jax.infer", "crab_jax.evaluate", "crab_jax.aot_compile", "crab_jax.data.prepare",
                "crab_jax.data.check", "crab_jax.data.synthetic.__main__", "crab_jax.study.__main__")
# Modules of ``crab_jax.families`` that are the seam itself, not a family's internals.
SEAM = ("crab_jax.families", "crab_jax.families.base")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The ``crab_jax`` modules ``name`` imports (the longest known prefix of each import)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".") if is_pkg else name.split(".")[:-1]
                parent = parent[:len(parent) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != name:
                out.add(".".join(parts))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(name: str) -> int | None:
    if name in ENTRY_POINTS:
        return len(LAYERS)
    parts = name.split(".")
    if len(parts) < 2 or parts[1] not in {p for layer in LAYERS for p in layer}:
        return None if len(parts) < 2 or (PACKAGE / parts[1]).is_dir() else len(LAYERS)  # entry points on top
    return next(i for i, layer in enumerate(LAYERS) if parts[1] in layer)


def family_of(name: str) -> str | None:
    """``crab`` for ``crab_jax.families.crab.model``; None for the seam and other packages."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "families" and name not in SEAM else None


def test_the_graph_is_read(graph):
    # The walker must see the package (a broken walker would make every other test vacuous).
    assert len(graph) > 50
    assert "crab_jax.training.loop" in graph and graph["crab_jax.training.loop"]
    assert any(family_of(m) == "crab" for m in graph)


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles (function-local imports count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_package_has_a_layer(graph):
    unplaced = sorted({m.split(".")[1] for m in graph if len(m.split(".")) > 2 and layer_of(m) is None})
    assert not unplaced, f"packages not in tests/test_architecture.py LAYERS: {unplaced}"


def test_layers_only_import_downwards(graph):
    bad = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
           for m, targets in graph.items() for t in sorted(targets)
           if layer_of(m) is not None and layer_of(t) is not None and layer_of(t) > layer_of(m)]
    assert not bad, "imports upwards:\n" + "\n".join(bad)


def test_shared_code_never_imports_a_family(graph):
    bad = [f"{m} imports {t}" for m, targets in graph.items() for t in sorted(targets)
           if family_of(t) is not None and family_of(m) != family_of(t)]
    assert not bad, ("modules outside crab_jax/families/<name>/ import a family's internals (use "
                     "crab_jax.families.get(name) and the Family hooks):\n" + "\n".join(bad))


def test_the_checks_catch_what_they_are_for():
    # A cycle, an upward import and a family import in a made-up graph are all reported.
    fake = {"crab_jax.models.a": {"crab_jax.models.b"}, "crab_jax.models.b": {"crab_jax.models.a"}}
    assert cycles(fake) == [["crab_jax.models.a", "crab_jax.models.b"]]
    assert layer_of("crab_jax.training.loop") > layer_of("crab_jax.models.llama")
    assert family_of("crab_jax.families.crab.model") == "crab" and family_of("crab_jax.families.base") is None
