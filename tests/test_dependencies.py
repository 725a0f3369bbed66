"""Dependency hygiene: every third-party import of the shipped code is a declared dependency, and
every declared dependency is imported (or named below with the reason it is needed without one)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("arm", "flows", "services", "eval_modules")
OWN = {"arm", "flows", "services", "eval_modules"}

# Declared without an import of their own: each is loaded by name by another library at run time.
LOADED_BY_NAME = {
    "dvc-s3": "DVC's s3:// remote plugin (`dvc push/pull` to S3)",
    "s3fs": "fsspec's s3:// driver, picked by protocol in arm/fs.py",
    "dask": "prefect-dask's DaskTaskRunner (curate.executor=dask)",
    "distributed": "prefect-dask's DaskTaskRunner (curate.executor=dask)",
}


def declared(section: str | None = None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] if section is None else project["optional-dependencies"][section]
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def imported_distributions() -> dict[str, set[str]]:
    """distribution -> files of the shipped code importing it (absolute imports, any nesting)."""
    by_module = md.packages_distributions()
    found: dict[str, set[str]] = {}
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in OWN:
                        continue
                    for dist in by_module.get(top, [f"<no distribution provides {top!r}>"]):
                        found.setdefault(canonicalize_name(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_of_the_shipped_code_is_declared():
    undeclared = {d: sorted(f)[:3] for d, f in imported_distributions().items() if d not in declared()}
    assert not undeclared, f"imported but not in [project.dependencies]: {undeclared}"


def test_every_declared_dependency_is_used():
    used = set(imported_distributions()) | {canonicalize_name(n) for n in LOADED_BY_NAME}
    unused = sorted(declared() - used)
    assert not unused, f"pinned in [project.dependencies] but never imported or loaded: {unused}"
