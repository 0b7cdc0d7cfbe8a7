"""No import circles in the service's source: a module that imports, directly or through others,
one that imports it back works only in some import orders, and a function-level import that
dodges the circle hides the knot instead of untying it.

The graph is read from the source (``ast``, nothing imported), every ``import`` counted wherever
it is (in a function too) except under ``if TYPE_CHECKING:``. Importing ``a.b.c`` runs the
``__init__`` of ``a.b`` too, so that is an edge as well (not to the importer's own packages,
which are always loaded first).
"""

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(root: Path) -> dict[str, Path]:
    """Every module under ``root`` by dotted name (a package by the name of its ``__init__``)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _import_nodes(child))
        else:
            yield from _import_nodes(node)


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that importing ``name`` (at ``path``) loads."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        targets.add(base)
        # ``from pkg import module`` loads the submodule.
        targets.update(f"{base}.{alias.name}" for alias in node.names)
    loaded = set()
    for target in targets:
        parts = target.split(".")
        for end in range(1, len(parts) + 1):
            module = ".".join(parts[:end])
            # The importer's own packages are already loaded when it runs.
            if module in known and not (name == module or name.startswith(module + ".")):
                loaded.add(module)
    return loaded


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = _modules(root)
    return {name: _imported(name, path, set(modules)) for name, path in modules.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (circle := visit(target)):
                return circle
        on_path.discard(path.pop())
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done and (circle := visit(module)):
            return circle
    return None


def test_the_service_imports_nothing_in_a_circle() -> None:
    graph = import_graph(SRC)
    assert len(graph) > 20  # the whole service was read
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


# The app's wiring: what the data layer (db/) must never import, so that queries stay usable from
# the CLI, jobs and tests without an app.
WIRING = ("main", "cli", "lifespan", "deps", "api")


def test_the_data_layer_imports_no_app_wiring() -> None:
    graph = import_graph(SRC)
    service = next(name for name in graph if "." not in name and not name.endswith("_bench"))
    wiring = {f"{service}.{name}" for name in WIRING}
    found = {
        module: sorted(t for t in targets if t in wiring or t.rpartition(".")[0] in wiring)
        for module, targets in graph.items()
        if module.startswith(f"{service}.db")
    }

    assert {module: targets for module, targets in found.items() if targets} == {}


def test_a_planted_circle_is_found(tmp_path: Path) -> None:
    package = tmp_path / "service"
    (package / "api").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text("import os\n")
    (package / "api" / "__init__.py").write_text("from . import items\n")
    (package / "api" / "items.py").write_text("from ..db import queries\n")
    (package / "db" / "queries.py").parent.mkdir()
    (package / "db" / "__init__.py").write_text("")
    # Dodged in a function, as circles often are: still a circle.
    (package / "db" / "queries.py").write_text(
        "def wiring():\n    from ..api.items import router\n"
    )

    circle = find_circle(import_graph(tmp_path))

    assert circle == ["service.api", "service.api.items", "service.db.queries", "service.api"]
