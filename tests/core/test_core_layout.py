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
    "onbrand.annotate": "annotate",
    "onbrand.export": "export",
    "onbrand.serve": "serve",
}
STAGE_FOLDERS = [v for v in MAPPED.values() if v != "onbrand"]


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
    # Also listed: data-only folders (no Python at all), so setuptools installs them quietly.
    data_only = {
        name
        for name in listed - found
        if (folder := _folder_of(name)) is not None and folder.is_dir() and not any(folder.rglob("*.py"))
    }
    assert found == listed - data_only, (
        f"not listed: {sorted(found - listed)}; listed but absent: {sorted(listed - found - data_only)}"
    )


def _folder_of(package: str) -> Path | None:
    for pkg, folder in sorted(MAPPED.items(), key=lambda kv: -len(kv[0])):
        if package == pkg or package.startswith(pkg + "."):
            return (
                REPO / folder / Path(*package[len(pkg) + 1 :].split(".")) if package != pkg else REPO / folder
            )
    return None


@pytest.mark.parametrize("name", STAGE_FOLDERS)
def test_bare_import_fails_in_safe_mode(name):
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    r = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert r.returncode != 0
    assert "ModuleNotFoundError" in r.stderr or "ImportError" in r.stderr


@pytest.mark.parametrize("name", STAGE_FOLDERS)
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
        [sys.executable, "-c", "import " + ", ".join(MAPPED)],
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
    assert set(STAGE_FOLDERS) <= set(banned)
    assert "TID" in cfg["ruff"]["lint"]["select"]
    assert "PYTHONSAFEPATH := 1" in (REPO / "Makefile").read_text()


def test_configs_hold_yaml_only():
    others = [p for p in (REPO / "configs").rglob("*") if p.is_file() and p.suffix not in {".yaml", ".yml"}]
    assert not others, others


def test_test_basenames_unique():
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"test file names must be unique with --import-mode=importlib: {dupes}"


# ----------------------------------------------------------------------------- layering
# Lowest first. A module may import its own layer and the layers below it, never one above. The
# core is ``onbrand/`` itself (config, artifacts, lineage, models, adapters, engines, stats,
# scoring); the pipeline and the ``onbrand`` command sit on top of every stage.
LAYERS = ("kernels", "core", "data", "annotate", "training", "eval", "export", "serve", "pipeline")
TOP = {"cli": "pipeline", "pipeline": "pipeline", "pipeline_stages": "pipeline", "stages": "pipeline"}
# (importer, imported) pairs allowed to go up, each with its reason. Keep it empty if you can.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    return parts[1] if parts[1] in LAYERS else TOP.get(parts[1], "core")


def _module_files():
    for pkg, folder in MAPPED.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("").parts
            if pkg == "onbrand" and rel[0] in MAPPED.values():
                continue  # not a package folder under onbrand/
            if rel[-1] == "__init__":
                rel = rel[:-1]
            yield ".".join((pkg, *rel)), path


def onbrand_imports(module: str, source: str) -> list[tuple[str, int]]:
    """Every ``onbrand.*`` module that ``source`` imports, at module level or inside functions."""
    import ast

    package = module.split(".") if module.count(".") == 0 else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names = [".".join([*base, *([node.module] if node.module else [])])]
            names += [f"{names[0]}.{a.name}" for a in node.names]  # `from onbrand import eval`
        else:
            continue
        found += [(n, node.lineno) for n in names if n == "onbrand" or n.startswith("onbrand.")]
    return found


def upward_imports(modules) -> list[str]:
    bad = []
    for module, path in modules:
        flagged: set[int] = set()
        for target, line in onbrand_imports(module, path.read_text(encoding="utf-8")):
            lo, hi = layer_of(module), layer_of(target)
            if line in flagged or (module, target) in ALLOWED_UPWARD:
                continue
            if LAYERS.index(hi) > LAYERS.index(lo):
                flagged.add(line)
                where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                bad.append(f"{where}:{line}: {module} ({lo}) imports {target} ({hi})")
    return bad


def test_no_upward_imports():
    bad = upward_imports(_module_files())
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)


def test_layering_check_catches_a_planted_upward_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from onbrand.eval.runner import run_eval\n")
    bad = upward_imports([("onbrand.training.planted", planted)])
    assert (
        len(bad) == 1 and "onbrand.training.planted (training) imports onbrand.eval.runner (eval)" in bad[0]
    )
    assert upward_imports([("onbrand.export.planted", planted)]) == []
