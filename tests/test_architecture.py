"""The import rules of docs/INTERFACES.md, checked on the source (imports inside functions too):
data and edge never import TensorFlow, Keras, train, convert or benchmark; convert never imports
train; no module imports a private name from another package."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_ON_DEVICE = (
    "tensorflow",
    "keras",
    "dermedge.train",
    "dermedge.convert",
    "dermedge.benchmark",
)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def _package(path: Path) -> str:
    rel = path.relative_to(REPO).parts
    return ".".join(rel[:2]) if rel[0] == "dermedge" and len(rel) > 2 else rel[0]


def test_data_and_edge_never_import_the_heavy_stages() -> None:
    offenders = [
        f"{p.relative_to(REPO)}:{line} {mod}"
        for pkg in ("data", "edge")
        for p in sorted((REPO / "dermedge" / pkg).rglob("*.py"))
        for line, mod, _ in _imports(p)
        if any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN_ON_DEVICE)
    ]
    assert not offenders, offenders


def test_convert_never_imports_train() -> None:
    """`dermedge card` (convert) once imported dermedge.train.external: convert runs where the
    trainer's extra is not installed, so what both need lives in edge or a neutral module."""
    offenders = [
        f"{p.relative_to(REPO)}:{line} {mod}"
        for p in sorted((REPO / "dermedge" / "convert").rglob("*.py"))
        for line, mod, _ in _imports(p)
        if mod == "dermedge.train" or mod.startswith("dermedge.train.")
    ]
    assert not offenders, offenders


def test_no_private_name_is_imported_across_packages() -> None:
    offenders = []
    for p in sorted([*(REPO / "dermedge").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]):
        here = _package(p)
        for line, mod, names in _imports(p):
            if not mod.startswith("dermedge"):
                continue
            there = ".".join(mod.split(".")[:2])
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and there != here:
                offenders.append(
                    f"{p.relative_to(REPO)}:{line} from {mod} import {', '.join(private)}"
                )
    assert not offenders, offenders


def test_no_private_attribute_of_another_packages_module_is_used() -> None:
    """`from dermedge.edge import card as fb; fb._root(...)` is a private import too."""
    offenders = []
    for p in sorted([*(REPO / "dermedge").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]):
        here, tree = _package(p), ast.parse(p.read_text())
        modules = {}  # local name -> package of a dermedge module bound to it
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("dermedge")
                and not node.level
            ):
                for a in node.names:
                    target = REPO / Path(*node.module.split("."), a.name)
                    if target.with_suffix(".py").is_file() or (target / "__init__.py").is_file():
                        modules[a.asname or a.name] = ".".join(
                            [*node.module.split("."), a.name][:2]
                        )
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and modules[node.value.id] != here
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                offenders.append(f"{p.relative_to(REPO)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not offenders, offenders


def test_every_package_is_named_in_the_interfaces_doc() -> None:
    doc = (REPO / "docs" / "INTERFACES.md").read_text()
    packages = [d.name for d in (REPO / "dermedge").iterdir() if (d / "__init__.py").is_file()]
    assert all(f"dermedge.{name}" in doc or f"`{name}`" in doc for name in packages), packages


def test_tests_import_no_top_level_name_another_package_can_own() -> None:
    """`tests` and `conftest` can be owned by an installed package (tf2onnx installs a top-level
    `tests`, which then wins over this folder under plain `pytest`): the suite's own helpers are
    imported as `dermedge_testing`."""
    tests = Path(__file__).resolve().parent
    bad = []
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [
                f"{path.relative_to(tests)}: {n}"
                for n in names
                if n.split(".")[0] in {"tests", "conftest"}
            ]
    assert not bad, bad
