"""The product's packages depend downwards only (README, "Layout and dependency direction"):
no import circles, no app importing an app above it, and no product code importing the
dev tools. Read from the source's import statements, function-local ones included."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("mageagent", "openai_api", "tasks", "routing", "tools", "providers")
# Bottom to top: a package may import the ones before it, never one after it.
LAYERS = ("providers", "tools", "routing", "tasks", "openai_api")
# mageagent is the ground every app stands on, except for the project's wiring, which
# imports the apps' entry points (urls, ASGI routes, health and metrics).
WIRING = {"mageagent.urls", "mageagent.asgi", "mageagent.health", "mageagent.metrics"}


def modules() -> dict[str, Path]:
    found = {}
    for package in (*PRODUCT, "devtools"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules `name` imports (`from x import y` counts x, and x.y when a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_back_through_others():
    assert circles(graph()) == []


def test_no_app_imports_an_app_above_it():
    upward = defaultdict(list)
    for name, targets in graph().items():
        top = name.split(".")[0]
        for target in targets:
            below = target.split(".")[0]
            if top in LAYERS and below in LAYERS and LAYERS.index(below) > LAYERS.index(top):
                upward[name].append(target)
            if top == "mageagent" and name not in WIRING and below in LAYERS:
                upward[name].append(target)

    assert dict(upward) == {}


def test_the_product_never_imports_the_dev_tools():
    reaching = {name: sorted(t for t in targets if t.startswith("devtools"))
                for name, targets in graph().items() if name.split(".")[0] in PRODUCT}

    assert {name: targets for name, targets in reaching.items() if targets} == {}


def test_the_reader_sees_circles_and_function_local_imports(tmp_path):
    # The checks above are only as good as this reader: it must find a circle hidden
    # behind an import inside a function.
    source = tmp_path / "services.py"
    source.write_text("def f():\n    from .tasks import task_execute_job\n")
    known = {"tasks.services": source, "tasks.tasks": tmp_path / "tasks.py"}

    assert imports("tasks.services", source, known) == {"tasks.tasks"}
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
