"""The package's layout: every import inside src/gradpruner goes to the same or a lower layer
(`LAYERS`, read from the source, nothing imported), and no modules import each other in a circle,
lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gradpruner"

# the top-level modules and folders of the package, lowest first; a module may import from its
# own layer and those below it
LAYERS = [
    {"errors"},
    {"catalog", "outputs", "progress", "plan", "provenance", "removal", "distributed", "assets"},
    {"model"},
    {"tasks"},
    {"training", "evaluation"},
    {"criteria", "merging"},
    {"search"},
    {"config"},
    {"reports"},
    {"export"},
    {"workflows"},
    {"cli", "interrupt", "__init__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The gradpruner modules `path` imports (relative imports resolved; `from . import x`
    counts x when x is a module)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] if node.level > 1 else package
            target = [p for p in base if p] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join(target + [alias.name])
                found.add(candidate if candidate in MODULES else ".".join(target))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update(n.removeprefix("gradpruner.") for n in names if n.startswith("gradpruner."))
    return {m for m in found if m != name}


MODULES = {module_name(p) for p in SRC.rglob("*.py")}


def layer(module: str) -> int:
    top = module.split(".")[0] or "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_has_a_layer():
    assert all(isinstance(layer(m), int) for m in MODULES)


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{module_name(p) or '__init__'} -> {target}"
                    for p in SRC.rglob("*.py") for target in imports(p)
                    if target in MODULES and layer(target) > layer(module_name(p)))
    assert upward == []


def test_no_import_cycle():
    graph = {module_name(p): {t for t in imports(p) if t in MODULES} for p in SRC.rglob("*.py")}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []
