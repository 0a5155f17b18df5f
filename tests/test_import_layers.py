"""The packages import one another downward only (agents -> envs -> moe_runtime -> kernels -> telemetry, DESIGN.md),
and only through each package's public surface: `from kernels import name` with the name in `kernels.__all__`."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["agents", "envs", "moe_runtime", "kernels", "telemetry"]  # each may import those after it


def cross_package_imports(package: str) -> list[tuple[str, int, str, list[str]]]:
    """(file, line, imported module, names) for every import of another package, lazy ones inside functions too."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [(node.module, [a.name for a in node.names])]
            elif isinstance(node, ast.Import):
                modules = [(a.name, []) for a in node.names]
            else:
                continue
            for module, names in modules:
                top = module.split(".")[0]
                if top in LAYERS and top != package:
                    found.append((str(path.relative_to(ROOT)), node.lineno, module, names))
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_imports_go_downward_through_public_names(package):
    problems = []
    for where, line, module, names in cross_package_imports(package):
        top = module.split(".")[0]
        if LAYERS.index(top) < LAYERS.index(package):
            problems.append(f"{where}:{line}: {package} imports {module}, a layer above it")
        elif module != top:
            problems.append(f"{where}:{line}: imports the submodule {module}; import from {top} instead")
        else:
            public = set(importlib.import_module(top).__all__)
            problems += [f"{where}:{line}: {top}.{n} is not in {top}.__all__" for n in names if n not in public]
    assert not problems, "\n".join(problems)


def test_every_public_name_exists():
    for package in LAYERS:
        module = importlib.import_module(package)
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{package}.__all__ names {missing}, which it lacks"
