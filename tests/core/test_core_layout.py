"""The required layout and the shadowing traps stay closed."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAPPED = {
    "onbrand": "onbrand",
    "onbrand.training": "training",
    "onbrand.data": "data",
    "onbrand.eval": "eval",
    "onbrand.kernels": "kernels",
}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_package_dir_maps_required_folders():
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == MAPPED


def test_every_package_folder_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set()
    for pkg, folder in MAPPED.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((pkg, *rel)))
    assert found == listed, (
        f"not listed: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
    )


@pytest.mark.parametrize("name", ["kernels", "data", "eval", "training"])
def test_bare_import_fails_in_safe_mode(name):
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    r = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert r.returncode != 0
    assert "ModuleNotFoundError" in r.stderr or "ImportError" in r.stderr


@pytest.mark.parametrize("name", ["kernels", "data", "eval", "training"])
def test_bare_import_fails_even_from_repo_root(name):
    # Without PYTHONSAFEPATH the repo root is on sys.path; the folder's own guard refuses.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    r = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert r.returncode != 0
    assert f"import onbrand.{name}" in r.stderr


def test_subpackages_import_under_onbrand():
    r = subprocess.run(
        [sys.executable, "-c", "import onbrand.kernels, onbrand.data, onbrand.eval, onbrand.training"],
        cwd="/",
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_traps_configured():
    assert not (REPO / "tests" / "__init__.py").exists()
    cfg = _pyproject()["tool"]
    assert "--import-mode=importlib" in cfg["pytest"]["ini_options"]["addopts"]
    banned = cfg["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"]
    assert {"kernels", "data", "eval", "training"} <= set(banned)
    assert "TID" in cfg["ruff"]["lint"]["select"]
    assert "PYTHONSAFEPATH := 1" in (REPO / "Makefile").read_text()


def test_configs_hold_yaml_only():
    others = [p for p in (REPO / "configs").rglob("*") if p.is_file() and p.suffix not in {".yaml", ".yml"}]
    assert not others, others


def test_test_basenames_unique():
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"test file names must be unique with --import-mode=importlib: {dupes}"
