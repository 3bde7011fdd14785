"""The house stays one you can see and change (docs/ARCHITECTURE.md): no import cycles in
``src/pemarith`` (function-local imports count, ``TYPE_CHECKING`` ones do not), no module imports
another package's ``_private`` names, and no source file grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pemarith"
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) of every import in ``path`` outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.append((base, [a.name for a in node.names]))
    return found


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, names in imports(p):
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            for t in subs or [target]:
                if t in mods and t != m:
                    edges[m].add(t)
    return edges


def test_no_import_cycles():
    edges = graph()
    # a module imports its package's __init__ implicitly; only explicit edges count here
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_names_from_another_package():
    bad = []
    for p in SRC.rglob("*.py"):
        me = module_name(p)
        my_package = me if p.name == "__init__.py" else me.rpartition(".")[0]
        for target, names in imports(p):
            if not target.startswith("pemarith"):
                continue
            target_package = (
                target.rpartition(".")[0] if not (SRC.parent / target.replace(".", "/")).is_dir() else target
            )
            for n in names:
                if n.startswith("_") and not n.startswith("__") and target_package != my_package:
                    bad.append(f"{me} imports {target}.{n}")
    assert bad == []


def test_files_stay_small():
    long = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    over = {k: n for k, n in long.items() if n > MAX_LINES}
    assert over == {}, f"split these files (one concept each): {over}"
