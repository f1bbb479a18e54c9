"""The package's layers and import graph, read from the code: checks that imports only run down the layers and
never in a circle, and writes the module map of docs/architecture.md.

    python scripts/module_map.py            # check; exit 1 listing every cycle and upward import
    python scripts/module_map.py --write    # also rewrite docs/architecture.md's map from the code

The graph is read with the stdlib ``ast`` (every ``import`` of the package, at the top of a file or inside a
function, since a lazy import is still a dependency), so it needs nothing installed and imports nothing.
tests/test_imports.py runs the same checks in CI.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "dualanodiff"
DOC = REPO / "docs" / "architecture.md"

# Top to bottom: a module may import its own layer's modules and those below, never those above. The root
# ``dualanodiff/__init__.py`` is the public face (the pipeline class), so it stands with the pipeline.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("command line", ("cli", "commands")),
    ("how work runs, and its front ends", ("executors", "app", "demo")),
    ("the protocol", ("benchmark",)),
    ("the tasks", ("generate", "training", "evaluate", "baselines", "export")),
    (
        "pipeline, masks, datasets",
        ("__init__", "pipeline", "masks", "data", "backgrounds", "placement", "synthetic"),
    ),
    ("the model", ("model",)),
    ("foundations", ("errors", "io", "checks", "locking", "sharding", "progress", "weights", "report")),
)
MAP_START = "<!-- module map: written by scripts/module_map.py --write -->"
MAP_END = "<!-- end of module map -->"


@dataclass(frozen=True)
class Graph:
    """Modules (dotted names) of a package, their files, and which modules each imports."""

    root: str
    files: dict[str, Path]
    imports: dict[str, set[str]]


def read_graph(package: Path = PACKAGE) -> Graph:
    """Every module of ``package`` and the package modules it imports (an imported name that is a submodule
    counts as that submodule; any other name as the module that defines it)."""
    root = package.name
    files = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    imports = {}
    for module, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(module, path.name == "__init__.py", node, files, root):
                while target not in files:  # a name inside a module: the module
                    target = target.rsplit(".", 1)[0]
                if target != module:
                    found.add(target)
        imports[module] = found
    return Graph(root, files, imports)


def _targets(module: str, is_package: bool, node: ast.AST, files: dict[str, Path], root: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == root or a.name.startswith(root + ".")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".")[: None if is_package else -1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if not (source == root or source.startswith(root + ".")):
        return []
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]


def top(graph: Graph, module: str) -> str:
    """The first-level package or module a module belongs to (``__init__`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cycles(graph: Graph) -> list[list[str]]:
    """Every set of modules that import each other in a loop (strongly connected components, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (about 100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.imports[v]):
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
            if len(component) > 1 or v in graph.imports[v]:
                found.append(sorted(component))

    for v in sorted(graph.imports):
        if v not in index:
            visit(v)
    return found


def layer_of(layers=LAYERS) -> dict[str, int]:
    """{first-level name: layer number}, 0 at the top."""
    return {name: i for i, (_, names) in enumerate(layers) for name in names}


def upward_imports(graph: Graph, layers=LAYERS) -> list[str]:
    """``a -> b`` for every import of a module from a higher layer than the importer's."""
    rank = layer_of(layers)
    unknown = len(layers)  # an unplaced module (`unplaced` names it) counts as below every layer
    return [
        f"{a} -> {b}"
        for a in sorted(graph.imports)
        for b in sorted(graph.imports[a])
        if rank.get(top(graph, b), unknown) < rank.get(top(graph, a), unknown)
    ]


def unplaced(graph: Graph, layers=LAYERS) -> list[str]:
    """First-level packages and modules that no layer names (a new one must be placed)."""
    rank = layer_of(layers)
    return sorted({top(graph, m) for m in graph.files} - set(rank))


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring: what the package is for, in its own words (for a package
    without one, its modules)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    if first:
        return first.split(". ")[0].rstrip(".")
    if path.name == "__init__.py":
        return "modules " + ", ".join(
            p.stem for p in sorted(path.parent.glob("*.py")) if p.stem != "__init__"
        )
    return ""


def module_map(graph: Graph, layers=LAYERS) -> str:
    """The map as Markdown: one line per first-level package or module, layer by layer, top down, each with
    the first sentence of its docstring (what the imports are, `python scripts/module_map.py` checks; listing
    them here would make the map stale at every new import)."""
    lines = []
    for i, (title, names) in enumerate(layers):
        lines += [f"**{i + 1}. {title}**", ""]
        for name in names:
            module = graph.root if name == "__init__" else f"{graph.root}.{name}"
            if module not in graph.files:
                continue
            path = graph.files[module]
            shown = f"{name}/" if path.name == "__init__.py" and name != "__init__" else f"{name}.py"
            lines.append(f"- `{shown}`: {_summary(path)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def documented_map(doc: Path = DOC) -> str | None:
    """The map as docs/architecture.md holds it now (None without its markers)."""
    text = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    if MAP_START not in text or MAP_END not in text:
        return None
    return text.split(MAP_START, 1)[1].split(MAP_END, 1)[0].strip("\n") + "\n"


def write_map(graph: Graph, doc: Path = DOC) -> None:
    text = doc.read_text(encoding="utf-8")
    head, rest = text.split(MAP_START, 1)
    tail = rest.split(MAP_END, 1)[1]
    doc.write_text(f"{head}{MAP_START}\n{module_map(graph)}{MAP_END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the module map in docs/architecture.md")
    args = parser.parse_args(argv)
    graph = read_graph()
    problems = [f"cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    problems += [f"upward import: {u}" for u in upward_imports(graph)]
    problems += [f"not in any layer: {n} (add it to LAYERS)" for n in unplaced(graph)]
    if args.write and not unplaced(graph):
        write_map(graph)
        print(f"wrote the module map in {DOC}")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(graph.files)} modules, {sum(map(len, graph.imports.values()))} imports: "
          + ("no cycle, no upward import" if not problems else f"{len(problems)} problem(s)"))  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
