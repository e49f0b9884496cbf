"""The layer rules of DESIGN.md, checked by scanning every import of every module.

Imports flow one way: schemas <- inference <- transforms <- pipelines; ``train`` and ``evals``
read shards and schemas only (``evals`` also runs models through ``inference``, the model
inference that a step and an eval both need, which lives below both). Imports inside functions
count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

#: The project's top-level packages that are layers, and which other layers each may import.
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "inference": {"schemas"},
    "transforms": {"schemas", "inference", "templates"},
    "pipelines": {"schemas", "inference", "transforms", "templates", "evals"},
    "train": {"schemas", "templates"},
    "evals": {"schemas", "inference"},
    "templates": set(),
}
#: Layers that run without Beam (DESIGN.md: nothing in schemas/ imports Beam; training, evaluation
#: and the shared inference need no pipeline runtime).
BEAM_FREE = {"schemas", "inference", "train", "evals"}
PROJECT = set(ALLOWED) | {"bench", "tests"}


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module that ``source`` (the module ``module``) imports, at any depth.

    Relative imports are resolved against ``module``; ``is_package`` says ``module`` is an
    ``__init__``.
    """
    names: set[str] = set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    names.add(".".join([*base, node.module]))
                else:
                    names.update(".".join([*base, alias.name]) for alias in node.names)
            elif node.module:
                names.add(node.module)
    return names


def layer_imports() -> dict[Path, tuple[str, set[str]]]:
    """Every module of every layer: its layer and the top-level names it imports."""
    found: dict[Path, tuple[str, set[str]]] = {}
    for layer in ALLOWED:
        for path in sorted((REPO / layer).rglob("*.py")):
            relative = path.relative_to(REPO).with_suffix("")
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            names = imported_modules(path.read_text(encoding="utf-8"), ".".join(parts), relative.name == "__init__")
            found[path.relative_to(REPO)] = (layer, {name.split(".")[0] for name in names})
    return found


def test_the_scanner_sees_lazy_and_relative_imports():
    source = "import os\nfrom . import sibling\n\ndef f():\n    from transforms.responders import X\n"
    assert imported_modules(source, "train.hallucination") == {"os", "train.sibling", "transforms.responders"}
    assert imported_modules("from .data import x\n", "train", is_package=True) == {"train.data"}


def test_every_layer_imports_only_the_layers_below_it():
    wrong = [
        f"{path}: {layer} imports {other}"
        for path, (layer, tops) in layer_imports().items()
        for other in sorted(tops & PROJECT - ALLOWED[layer] - {layer})
    ]
    assert not wrong, "imports against the layer rules of DESIGN.md:\n" + "\n".join(wrong)


@pytest.mark.parametrize("layer", sorted(BEAM_FREE))
def test_layers_below_the_pipelines_need_no_beam(layer):
    wrong = [str(path) for path, (owner, tops) in layer_imports().items() if owner == layer and "apache_beam" in tops]
    assert not wrong, f"{layer} imports apache_beam: {wrong}"


def test_train_reads_shards_and_schemas_only():
    """The rule issue 14 restored: no module of train/ imports transforms/ or pipelines/ (nor evals/)."""
    tops = set().union(*(t for layer, t in layer_imports().values() if layer == "train"))
    assert not tops & {"transforms", "pipelines", "evals", "inference"}
