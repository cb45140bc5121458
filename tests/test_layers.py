"""The package's four levels (docs/ARCHITECTURE.md): every import, function-local ones included, points
to the same level or below, and no modules import each other in a circle."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "poegen"

# the level of each module or subpackage (dotted, without the leading "poegen."); the longest prefix decides
LEVELS = {
    "__init__": 4,  # re-exports the public API lazily
    "images": 1, "particles": 1, "resampling": 1, "schedules": 1, "product": 1, "samplers": 1, "hardware": 1,
    "validation": 1, "memory": 1, "defaults": 1, "certificate": 1, "anytime": 1,
    "experts": 2,
    "layout": 3, "specs": 3, "families": 3, "pipeline": 3, "job": 3, "edit": 3, "interop": 3,
    "cli": 4, "__main__": 4, "batch": 4, "jobs": 4, "compare": 4, "report": 4, "envinfo": 4, "evaluate": 4,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def level(name: str) -> int:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in LEVELS:
            return LEVELS[".".join(parts[:k])]
    raise AssertionError(f"poegen.{name} has no level in tests/test_layers.py: give it one")


def imports(path: Path):
    """Modules of poegen that ``path`` imports, anywhere in it (dotted names without 'poegen.')."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name[len("poegen."):] for a in node.names if a.name.startswith("poegen.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("poegen"):
                mod = node.module[len("poegen."):] if node.module != "poegen" else ""
            else:
                continue
            for a in node.names:  # `from . import x` imports the module x when there is one
                sub = f"{mod}.{a.name}" if mod else a.name
                found.add(sub if _exists(sub) else mod)
    return {m for m in found if m}


def _exists(name: str) -> bool:
    p = PACKAGE.joinpath(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def graph():
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_import_points_down():
    upward = [f"poegen.{a} (level {level(a)}) imports poegen.{b} (level {level(b)})"
              for a, targets in sorted(graph().items()) for b in sorted(targets) if level(b) > level(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    g = graph()
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in g.get(n, ()):
            m = m if m in g else next((k for k in g if m.startswith(k + ".")), m)
            if m not in g or m == n or n.startswith(m + ".") and m.count(".") < n.count("."):
                continue  # a package's own __init__ or a subpackage importing its parent package
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    assert not cycles, "\n".join(cycles)
