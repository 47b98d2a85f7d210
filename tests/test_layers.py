"""The package's layers: every module imports only from its own package or from lower layers, so
there are no import cycles between packages and no back-arrows. Checked on the source (every
``import`` / ``from ... import``, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import ropelab

#: lowest first; a package may import from its own package and from packages of lower layers
LAYERS = (
    ("core",),
    ("pe",),
    ("model",),
    ("pretrained",),
    ("hierarchy", "data", "integrations"),
    ("eval",),
    ("analysis", "train"),
    ("reporting",),
    ("experiments",),
    ("cli",),
    ("__main__", "__init__"),
)
ROOT = Path(ropelab.__file__).parent


def _package(path: Path) -> str:
    relative = path.relative_to(ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _runtime_nodes(path: Path):
    """Every AST node of a file except those under ``if TYPE_CHECKING:`` (imports for annotations
    only, never run)."""
    stack = [ast.parse(path.read_text())]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _imports(path: Path) -> set[str]:
    """The ropelab packages a file imports (``from ropelab import pe`` counts as ``pe``)."""
    found = set()
    for node in _runtime_nodes(path):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "ropelab":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(
                    alias.name if (ROOT / alias.name).exists() or (ROOT / f"{alias.name}.py").exists() else "__init__"
                    for alias in node.names
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ropelab":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def _layer(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"package {package!r} is in no layer of tests/test_layers.py; add it")


def test_every_package_imports_only_from_lower_layers():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        package = _package(path)
        own = _layer(package)
        for target in sorted(_imports(path) - {package}):
            if _layer(target) >= own:
                violations.append(f"{path.relative_to(ROOT)} ({package}) imports {target}")
    assert not violations, "back-arrows or same-layer imports:\n" + "\n".join(violations)


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ropelab.train.trainer import train\n    from ropelab import pe\n")
    assert _imports(source) == {"train", "pe"}


def _module_name(path: Path) -> str:
    parts = ("ropelab", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the ropelab modules it imports (``from ropelab.train import state`` is an edge to
    ``ropelab.train.state``, not to the package), also imports inside functions."""
    modules = {_module_name(path): path for path in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in _runtime_nodes(path):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
                submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                edges |= submodules
                if len(submodules) < len(node.names):
                    edges.add(node.module)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ropelab."):
                edges.add(node.module)
        graph[name] = edges - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (depth-first search), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_through_a_cycle():
    cycle = _cycle(_module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_for_annotations_only_do_not_count(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ropelab.train import x\nimport ropelab.pe\n"
    )
    assert _imports(source) == {"pe"}
