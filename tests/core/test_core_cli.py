"""The CLI lists the stages that exist and turns config errors into one-line exit-2 messages."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from onbrand.cli import STAGE_MODULES, build_parser, main


def test_help_lists_existing_stages(capsys):
    help_text = build_parser().format_help()
    assert "models" in help_text and "run" in help_text
    for module in STAGE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        stage = module.split(".")[1] if module.count(".") >= 1 else module
        stage = {"training": "train", "pipeline": "run"}.get(stage, stage)
        assert stage in help_text, f"{module} exists but `{stage}` is not in onbrand --help"


def test_unknown_key_in_run_config_exits_2(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: x\nmodle: embedded:smollm2-135m-instruct\n")
    assert main(["run", str(cfg)]) == 2
    out = capsys.readouterr()
    err = out.err
    assert "modle" in err and "valid keys:" in err and "model" in err and f"{cfg}:2" in err
    assert err.startswith("onbrand: config error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out.out


def test_missing_run_config_is_one_line(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"onbrand: config error: {tmp_path / 'nope.yaml'}: config file not found"


def test_run_has_a_verbose_switch():
    parser = build_parser()
    assert parser.parse_args(["run", "x.yaml", "-v"]).verbose
    assert parser.parse_args(["run", "x.yaml", "--verbose"]).verbose
    assert not parser.parse_args(["run", "x.yaml"]).verbose


def test_cli_starts_child_interpreters_with_safe_path(monkeypatch, repo_root):
    """From the checkout's root a child ``python -m`` (vLLM's model-registry probe) imported the
    repository's ``kernels/`` instead of PyPI's; the CLI sets PYTHONSAFEPATH for every child."""

    def child_imports_repo_kernels() -> bool:
        cmd = [sys.executable, "-c", "import kernels"]
        proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True)  # inherits os.environ
        return "onbrand's kernels folder" in proc.stderr

    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    assert child_imports_repo_kernels()  # the trap exists without the variable
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["PYTHONSAFEPATH"] == "1"
    assert not child_imports_repo_kernels()
