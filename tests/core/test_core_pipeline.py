"""`onbrand run`: stages are skipped when their inputs are unchanged, re-run when forced or when
an upstream artefact changes, and a failure names the stage and how to resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from onbrand import pipeline_stages
from onbrand.pipeline import RunConfig, run_pipeline


@pytest.fixture
def toy_stages(monkeypatch, tmp_path):
    """Replace model/data/sft with toy stages that write files and count their runs."""
    calls: dict[str, int] = {}
    content = {"data": "pairs-v1"}

    def runner(name):
        def run(cfg, stage_cfg, ctx):
            calls[name] = calls.get(name, 0) + 1
            out = Path(cfg.out_dir) / name
            out.mkdir(parents=True, exist_ok=True)
            (out / "out.txt").write_text(content.get(name, name))
            return {"run_dir": str(out)}

        return run

    def fp(name):
        def fingerprint(cfg, ctx):
            f = Path(cfg.out_dir) / name / "out.txt"
            return f.read_text() if f.exists() else "missing"

        return fingerprint

    for name in ("model", "data", "sft"):
        stage = pipeline_stages.STAGES[name]
        monkeypatch.setitem(
            pipeline_stages.STAGES,
            name,
            replace(stage, config_kind=None, run=runner(name), fingerprint=fp(name)),
        )
    cfg = RunConfig(out_dir=str(tmp_path / "run"), stages=["model", "data", "sft"])
    return cfg, calls, content


def test_rerun_skips_unchanged_stages(toy_stages, capsys):
    cfg, calls, _ = toy_stages
    assert run_pipeline(cfg) == 0
    assert run_pipeline(cfg) == 0
    assert calls == {"model": 1, "data": 1, "sft": 1}
    assert "skipped (inputs unchanged)" in capsys.readouterr().out
    summary = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    assert summary["timings"]["sft"]["status"] == "skipped"


def test_force_and_upstream_change_rerun(toy_stages):
    cfg, calls, content = toy_stages
    run_pipeline(cfg)
    run_pipeline(cfg, force=("sft",))
    assert calls == {"model": 1, "data": 1, "sft": 2}
    content["data"] = "pairs-v2"  # the data stage now produces a different artefact
    run_pipeline(cfg, force=("data",))
    assert calls["data"] == 2 and calls["sft"] == 3  # sft re-runs because its upstream changed


def test_changed_input_file_or_brand_card_reruns(toy_stages, tmp_path, monkeypatch):
    """The config naming a file is unchanged, its content is not: the stage must not be skipped."""
    _, calls, _ = toy_stages
    pairs, card = tmp_path / "pairs.jsonl", tmp_path / "card.yaml"
    pairs.write_text("v1")
    card.write_text("name: a")
    data = pipeline_stages.STAGES["data"]
    monkeypatch.setitem(pipeline_stages.STAGES, "data", replace(data, input_files=lambda _cfg: [str(pairs)]))
    cfg = RunConfig(out_dir=str(tmp_path / "run2"), stages=["model", "data", "sft"], brand=str(card))
    run_pipeline(cfg)
    run_pipeline(cfg)
    assert calls == {"model": 1, "data": 1, "sft": 1}
    pairs.write_text("v2")
    run_pipeline(cfg)
    assert calls == {"model": 1, "data": 2, "sft": 1}  # the toy data artefact is the same: sft skips
    card.write_text("name: b")
    run_pipeline(cfg)
    assert calls == {"model": 1, "data": 3, "sft": 2}  # the card feeds every stage after model


def test_tampered_output_reruns(toy_stages):
    cfg, calls, _ = toy_stages
    run_pipeline(cfg)
    (Path(cfg.out_dir) / "sft" / "out.txt").write_text("edited by hand")
    run_pipeline(cfg)
    assert calls["sft"] == 2


def test_failure_names_stage_and_resume(toy_stages, monkeypatch, capsys):
    cfg, calls, _ = toy_stages

    def boom(cfg, stage_cfg, ctx):
        raise RuntimeError("disk full")

    monkeypatch.setitem(pipeline_stages.STAGES, "sft", replace(pipeline_stages.STAGES["sft"], run=boom))
    assert run_pipeline(cfg, config_path="configs/x.yaml") == 1
    err = capsys.readouterr().err
    assert "stage 'sft' failed: RuntimeError: disk full" in err
    assert "onbrand run configs/x.yaml --force sft" in err
    assert calls == {"model": 1, "data": 1}


def test_unknown_stage_rejected():
    with pytest.raises(ValueError, match="unknown stage"):
        RunConfig(stages=["data", "tune"])


def test_failed_gate_makes_the_run_exit_1(toy_stages, monkeypatch, capsys, repo_root):
    """The eval stage's gate (the run config's gate YAML, applied by check_gate) decides the exit."""
    from onbrand.eval.runner import apply_gate

    cfg, _, _ = toy_stages
    gates = str(repo_root / "configs/eval/gates.yaml")
    verdict = {"win": 0.6}

    def fake_eval(cfg, stage_cfg, ctx):
        ci = lambda v: {"value": v, "low": v - 0.05, "high": v + 0.05}  # noqa: E731
        rep = {"metrics": {"win_rate": {"win_rate": ci(verdict["win"]), "lc_win_rate": ci(0.6), "gap": 0.0}}}
        return {"report_dir": "x", "gate": apply_gate(rep, gates)}

    eval_stage = replace(pipeline_stages.STAGES["eval"], config_kind=None, depends_on=(), run=fake_eval,
                         fingerprint=lambda cfg, ctx: str(verdict))  # fmt: skip
    monkeypatch.setitem(pipeline_stages.STAGES, "eval", eval_stage)
    cfg = replace(cfg, stages=["model", "eval"], gate=gates)
    assert run_pipeline(cfg) == 1  # the toy report lacks most metrics: a release gate fails on them
    out = capsys.readouterr()
    assert "GATE FAILED" in out.err and "FAIL  compliance_no_worse" in out.out
    assert "PASS  win_rate_ci_low" in out.out


def test_data_stage_hashes_every_split_file(repo_root, monkeypatch):
    """A changed dev or judge file must re-run the data stage, like a changed train or test file."""
    from onbrand.config import load_config
    from onbrand.data.config import DataConfig

    monkeypatch.chdir(repo_root)
    cfg = load_config(DataConfig, "configs/data/demo.yaml")
    files = {Path(p).name for p in pipeline_stages.STAGES["data"].input_files(cfg)}
    assert {
        "dev.canonical.jsonl",
        "judge.canonical.jsonl",
        "test.canonical.jsonl",
        "social_email.csv",
    } <= files
    assert len(files) == len(cfg.inputs) + 3


def test_sample_prompt_comes_from_the_brands_own_data(repo_root, monkeypatch):
    from onbrand.config import load_config
    from onbrand.pipeline_stages import _brand_sample_prompt

    monkeypatch.chdir(repo_root)
    ember = load_config(RunConfig, "configs/runs/ember.yaml")
    prompt = _brand_sample_prompt(ember)
    assert prompt and "lamp" not in prompt.lower()  # the coffee brand's own prompt, not the demo's


# ----------------------------------------------------------------------------- the stage table
def test_one_stage_table_feeds_config_kinds_cli_and_pipeline():
    from onbrand.cli import STAGE_MODULES
    from onbrand.config import CONFIG_KINDS, OTHER_CONFIG_KINDS
    from onbrand.stage_table import STAGE_TABLE

    run_stages = [s.name for s in STAGE_TABLE if s.runner]
    assert list(pipeline_stages.STAGES) == run_stages  # pipeline order = table order
    assert CONFIG_KINDS == {
        **{s.name: s.config_kind for s in STAGE_TABLE if s.config_kind},
        **OTHER_CONFIG_KINDS,
    }
    assert STAGE_MODULES == (*dict.fromkeys(s.cli for s in STAGE_TABLE if s.cli), "onbrand.pipeline")
    fields = RunConfig.__dataclass_fields__
    for spec in STAGE_TABLE:
        stage = pipeline_stages.STAGES.get(spec.name)
        if stage is not None:
            assert (stage.title, stage.config_kind, stage.depends_on) == (
                spec.title,
                spec.config_kind,
                spec.depends_on,
            )
            assert set(spec.depends_on) <= set(run_stages[: run_stages.index(spec.name)])
            if spec.config_kind:  # the run config names the stage's YAML under the stage's name
                assert fields[spec.name].type == "str", spec.name


# ----------------------------------------------------------------------------- the terminal
NOISE = {
    "print": "engine config: max_model_len=1024",
    "transformers": "RewardModel LOAD REPORT: score.weight MISSING",
    "warning": "failed to load from kernels-community",
    "vllm": "Initializing a V1 LLM engine",
}


def _noisy_stage(cfg, stage_cfg, ctx):
    import logging
    import sys
    import warnings

    print(NOISE["print"])
    logging.getLogger("transformers").warning(NOISE["transformers"])
    logging.getLogger("vllm.engine").info(NOISE["vllm"])
    warnings.warn(NOISE["warning"], stacklevel=1)
    sys.stderr.write("stderr noise\n")
    return {"run_dir": "x"}


def test_stage_output_goes_to_the_stage_log_not_the_terminal(toy_stages, monkeypatch, capsys):
    cfg, _, _ = toy_stages
    monkeypatch.setitem(
        pipeline_stages.STAGES, "data", replace(pipeline_stages.STAGES["data"], run=_noisy_stage)
    )
    assert run_pipeline(cfg) == 0
    out = capsys.readouterr()
    for text in (*NOISE.values(), "stderr noise"):
        assert text not in out.out + out.err
    assert "[2/3] data: done in" in out.out and "stages/<stage>.log" in out.out
    log = (Path(cfg.out_dir) / "stages" / "data.log").read_text()
    for text in (*NOISE.values(), "stderr noise"):
        assert text in log
    assert NOISE["print"] not in (Path(cfg.out_dir) / "stages" / "sft.log").read_text()


def test_failure_points_to_the_stage_log(toy_stages, monkeypatch, capsys):
    cfg, _, _ = toy_stages

    def boom(cfg, stage_cfg, ctx):
        print("loading the adapter")
        raise RuntimeError("disk full")

    monkeypatch.setitem(pipeline_stages.STAGES, "sft", replace(pipeline_stages.STAGES["sft"], run=boom))
    assert run_pipeline(cfg) == 1
    out = capsys.readouterr()
    log = Path(cfg.out_dir) / "stages" / "sft.log"
    assert f"see {log}" in out.err and "Traceback" not in out.err + out.out
    text = log.read_text()
    assert "loading the adapter" in text and "Traceback" in text and "RuntimeError: disk full" in text


def test_config_error_in_a_stage_is_one_line_and_exit_2(toy_stages, monkeypatch, tmp_path, capsys):
    """A bad stage YAML, found when the stage loads it: one line on stderr, no traceback, exit 2."""
    from onbrand.cli import main

    cfg, calls, _ = toy_stages
    bad = tmp_path / "sft.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    monkeypatch.setitem(
        pipeline_stages.STAGES,
        "sft",
        replace(pipeline_stages.STAGES["sft"], config_kind="onbrand.training.sft:SFTConfig"),
    )
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"out_dir: {cfg.out_dir}\nstages: [model, data, sft]\nsft: {bad}\ngate: ''\n")
    assert main(["run", str(run_yaml)]) == 2
    out = capsys.readouterr()
    err_lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(err_lines) == 1, out.err
    assert err_lines[0].startswith("onbrand: config error: ") and "lrr" in err_lines[0]
    assert str(bad) in err_lines[0] and ":2: train.lrr: unknown key" in err_lines[0]
    assert "Traceback" not in out.out + out.err and "sft" not in calls


# The real `onbrand` process: stdout/stderr are its own descriptors 1 and 2 (not pytest's), so
# C-level writes and child processes are routed too.
TOY_CLI = """
import logging, os, subprocess, sys, warnings
from dataclasses import replace
from onbrand import pipeline_stages as ps
from onbrand.cli import main

def run(cfg, stage_cfg, ctx):
    print("stage print")
    logging.getLogger("transformers").warning("LOAD REPORT score.weight MISSING")
    warnings.warn("kernels-community", stacklevel=1)
    os.write(2, b"native fd write\\n")
    subprocess.run([sys.executable, "-c", "print('child process output')"], check=True)
    return {}

ps.STAGES["model"] = replace(ps.STAGES["model"], run=run, fingerprint=lambda cfg, ctx: "toy")
sys.exit(main(["run", *sys.argv[1:]]))
"""
CLI_NOISE = ("stage print", "LOAD REPORT score.weight MISSING", "kernels-community", "native fd write",
             "child process output")  # fmt: skip


@pytest.mark.parametrize("verbose", [False, True])
def test_onbrand_run_terminal_quiet_and_verbose(tmp_path, verbose):
    import os
    import subprocess
    import sys

    script = tmp_path / "toy_cli.py"
    script.write_text(TOY_CLI)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"name: toy\nout_dir: {tmp_path / 'run'}\nstages: [model]\ngate: ''\n")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_MININTERVAL"}
    args = [sys.executable, "-P", str(script), str(run_yaml), *(["--verbose"] if verbose else [])]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    terminal = proc.stdout + proc.stderr
    log = (tmp_path / "run" / "stages" / "model.log").read_text()
    assert "[1/1] model: done in" in proc.stdout
    if verbose:
        assert all(text in terminal for text in CLI_NOISE), terminal
        assert "stage print" in log and "LOAD REPORT" in log  # the Python-level part is in the log too
    else:
        assert not [text for text in CLI_NOISE if text in terminal], terminal
        assert all(text in log for text in CLI_NOISE), log
