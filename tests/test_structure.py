"""The house rules that keep the code readable: no import cycle between our modules, no module
longer than a sitting, and the rover package never reaching for the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def modules() -> dict[str, Path]:
    found = {}
    for package in ("edge", "trainer"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Our modules that ``path`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def test_no_import_cycle():
    found = modules()
    graph = {name: imports(path, set(found)) - {name} for name, path in found.items()}
    cycles = []

    def visit(name, stack, on_stack, done):
        on_stack.add(name)
        stack.append(name)
        for dep in sorted(graph[name]):
            if dep in on_stack:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in done:
                visit(dep, stack, on_stack, done)
        stack.pop()
        on_stack.discard(name)
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [], set(), done)
    # a package's __init__ importing its own modules is how a package shows its API
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") for m in c[1:-1])]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_edge_never_imports_the_trainer():
    found = modules()
    edge = {n: p for n, p in found.items() if n.split(".")[0] == "edge"}
    reaching = {n: sorted(d for d in imports(p, set(found)) if d.startswith("trainer"))
                for n, p in edge.items()}  # fmt: skip
    assert not {n: d for n, d in reaching.items() if d}


def test_no_module_is_longer_than_a_sitting():
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}, f"over {MAX_LINES} lines"
