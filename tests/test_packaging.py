"""pyproject.toml names every module and data file that a plain (non-editable) `pip install .` must carry."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "agents", "moe_runtime", "kernels", "telemetry")


@pytest.fixture(scope="module")
def setuptools_table() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_top_level_module_is_listed(setuptools_table):
    on_disk = {p.stem for p in REPO.glob("*.py")}
    assert set(setuptools_table["py-modules"]) == on_disk


def test_every_package_is_found(setuptools_table):
    include = setuptools_table["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in include) == sorted(PACKAGES)
    for name in PACKAGES:
        assert (REPO / name / "__init__.py").is_file(), f"{name} is not a package"


def test_package_data_covers_every_data_file(setuptools_table):
    """Each package's files other than code and its READMEs (tuned tables, the cost table, hyperparameters)."""
    data = setuptools_table["package-data"]
    for name in PACKAGES:
        package = REPO / name
        shipped = {
            p.relative_to(package).as_posix()
            for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc", ".md") and "__pycache__" not in p.parts
        }
        covered = {p.relative_to(package).as_posix() for pattern in data.get(name, ()) for p in package.glob(pattern)}
        assert shipped <= covered, f"{name}: files outside package-data: {sorted(shipped - covered)}"
        for pattern in data.get(name, ()):
            assert list(package.glob(pattern)), f"{name}/{pattern} matches no file"
