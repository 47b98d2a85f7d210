"""The package's layers: every module imports only from its own package or from lower layers, so
there are no import cycles between packages and no back-arrows. Checked on the source (every
``import`` / ``from ... import``, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import ropelab

#: lowest first; a package may import from its own package and from packages of lower layers
LAYERS = (
    ("errors",),
    ("core",),
    ("pe", "tokenizer"),
    ("model",),
    ("code", "data", "hf"),
    ("eval",),
    ("analysis",),
    ("train",),
    ("cli", "__main__", "__init__"),
)
ROOT = Path(ropelab.__file__).parent


def _package(path: Path) -> str:
    relative = path.relative_to(ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> set[str]:
    """The ropelab packages a file imports (``from ropelab import pe`` counts as ``pe``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
