"""The package's layers: no import cycles, and no module imports one above it.

Bottom to top: shared records and utilities; the method (pure torch); the losses, verifier,
data and tiny tasks; the config; the engines; the run's files and checks; the actors; the
controller; the commands. The method layer never imports Ray (tested too).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pte_ray"
LAYERS = {  # first dotted part under pte_ray -> layer
    "records": 0,
    "atomic": 0,
    "env": 0,
    "progress": 0,
    "allocator": 0,
    "method": 1,
    "rl": 2,
    "tiny": 2,
    "config": 3,
    "config_sections": 3,
    "engines": 4,
    "run": 5,
    "evalsets": 5,
    "actors": 6,
    "controller": 7,
    "commands": 8,
    "bench": 8,
    "cli": 9,
    "__init__": 9,
}


def _graph() -> dict[str, set[str]]:
    """module -> the pte_ray modules it imports (anywhere in it, TYPE_CHECKING included)."""
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    out: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pte_ray"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("pte_ray")}
        out[name] = {d for d in deps if d in mods and d != name}
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(path[path.index(d) :] + [d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_import_points_up_the_layers():
    graph = _graph()
    assert all(m.split(".")[1] in LAYERS for m in graph if "." in m), "a module with no layer"
    up = sorted((m, d) for m, ds in graph.items() for d in ds if _layer(d) > _layer(m))
    assert not up, up


def test_the_method_layer_never_imports_ray():
    for f in (PKG / "method").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            assert not any(n.split(".")[0] == "ray" for n in [*names, mod or ""]), f
