"""The shape of the code (docs/architecture.md): imports run one way, never in a circle,
and the domain stays pure."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sla_monitor"
DOMAIN_MAY_IMPORT = {"holidays"}  # besides the standard library and itself


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path) -> set[str]:
    """Every module this one imports, anywhere in it (late imports too: they still make a
    cycle), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {i for i in imports(p) if i in known and i != m} for m, p in known.items()}


def test_no_module_imports_itself_back_through_others() -> None:
    edges = graph()
    cycles = []
    # Tarjan's strongly connected components: any with more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_domain_imports_only_itself_and_the_standard_library() -> None:
    outside = {}
    for name, path in modules().items():
        if not name.startswith("sla_monitor.domain"):
            continue
        for imported in imports(path):
            top = imported.split(".")[0]
            if imported.startswith("sla_monitor.domain") or top in DOMAIN_MAY_IMPORT:
                continue
            if top == "sla_monitor" or top not in sys.stdlib_module_names:
                outside.setdefault(name, set()).add(imported)
    assert outside == {}


def test_layers_import_only_downwards() -> None:
    """adapters and sources know nothing of the service layer, publishing or entrypoints;
    the service layer nothing of publishing or entrypoints; nothing below imports bootstrap."""
    forbidden = {
        "sla_monitor.domain": ("sla_monitor.",),
        "sla_monitor.adapters": (
            "sla_monitor.service_layer",
            "sla_monitor.publishing",
            "sla_monitor.entrypoints",
            "sla_monitor.sources",
            "sla_monitor.bootstrap",
            "sla_monitor.config",
        ),
        "sla_monitor.sources": (
            "sla_monitor.service_layer",
            "sla_monitor.publishing",
            "sla_monitor.entrypoints",
            "sla_monitor.adapters",
            "sla_monitor.bootstrap",
            "sla_monitor.config",
        ),
        "sla_monitor.service_layer": (
            "sla_monitor.publishing",
            "sla_monitor.entrypoints",
            "sla_monitor.bootstrap",
        ),
        "sla_monitor.publishing": ("sla_monitor.entrypoints", "sla_monitor.bootstrap"),
        "sla_monitor.config": ("sla_monitor.sources", "sla_monitor.adapters"),
        "sla_monitor.bootstrap": ("sla_monitor.entrypoints",),
    }
    wrong = []
    for name, targets in graph().items():
        for layer, banned in forbidden.items():
            if name == layer or name.startswith(layer + "."):
                for t in targets:
                    own = t.startswith(layer)
                    if not own and any(t.startswith(b) for b in banned):
                        wrong.append(f"{name} -> {t}")
    assert wrong == []
