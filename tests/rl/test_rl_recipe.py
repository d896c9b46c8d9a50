"""The RL recipe on the tiny model: steps run, a toy reward rises, KL and length are logged, the
adapter is ONE LoRA on the original base (also after init_from), and resume is exact."""

from __future__ import annotations

import json

import pytest
import torch

from onbrand.training import rl
from onbrand.training.tracking import read_metrics

CONFIG = "configs/rl/demo.yaml"
TOY = ["rewards=[{kind: regex, pattern: '!', weight: -1.0, name: bang}]", "rollout.max_new_tokens=12"]
LOGGED = [
    "loss", "reward/bang", "reward/task", "reward/total", "reward/kl_penalty", "kl", "kl_seq", "kl_k3",
    "completion/length", "completion/truncated", "completion/distinct_2", "completion/repetition",
    "goodhart/warning", "goodhart/reward_gain", "grad_norm", "step_seconds", "tokens_per_s",
]  # fmt: skip


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, bang_model_dir, rl_snapshot, rl_brand):
    out = tmp_path_factory.mktemp("rl-toy") / "rl"
    args = [
        f"model={bang_model_dir}", "init_from=null", f"data.snapshot={rl_snapshot}", f"data.brand={rl_brand}",
        f"out_dir={out}", "train.max_length=160", "train.tracking.wandb=disabled", "train.threads=1",
        "train.precision=fp32", "lora.layers=0", "lora.r=4", "lora.alpha=8", "train.warmup_ratio=0.0",
        "train.scheduler=constant", "train.max_steps=8", "train.batch_size=2", "train.lr=1e-2",
        "rollout.num_generations=4", "rl.beta=0.02", *TOY,
    ]  # fmt: skip
    assert rl.main(["--config", CONFIG, *args]) == 0
    return out


def test_rl_toy_reward_rises_and_kl_length_logged(toy_run):
    rows = read_metrics(toy_run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in LOGGED:
        assert all(key in r for r in rows), key
    first, last = rows[0]["reward/task"], sum(r["reward/task"] for r in rows[-3:]) / 3
    assert first < -2.0  # the "!" model starts by shouting
    assert last > first + 2.0, [r["reward/task"] for r in rows]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA B = 0: policy == reference
    assert max(r["kl"] for r in rows[1:]) > 1e-3  # and then it moves away
    assert all(r["completion/length"] > 0 for r in rows)
    run = json.loads((toy_run / "run.json").read_text())
    assert run["kind"] == "rl" and run["final"]["steps"] == 8 and run["parent_run"] is None
    assert (toy_run / "adapter" / "adapter_config.json").exists()
    assert (toy_run / "stage_adapter" / "adapter_model.safetensors").exists()
    md = (toy_run / "rl_report.md").read_text()
    assert "reward/bang" in md and "Goodhart warnings" in md
    assert (toy_run / "rl_curves.png").read_bytes()[:4] == b"\x89PNG"


def _logits(model_dir, adapter, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    m = PeftModel.from_pretrained(m, str(adapter)).merge_and_unload() if adapter else m
    with torch.no_grad():
        return m(ids).logits


def test_rl_init_from_parent_gives_one_lora_on_the_base(rl_args, bang_model_dir, parent_run, tmp_path):
    """adapter/ = parent LoRA (+) RL LoRA, exactly: merging it into the base equals merging both."""
    from transformers import AutoModelForCausalLM

    parent = parent_run
    args = [*rl_args, f"init_from={parent}", "train.max_steps=2", "train.lr=1e-2", *TOY]
    assert rl.main(["--config", CONFIG, *args]) == 0
    out = tmp_path / "rl"
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 2 + 4
    ids = torch.tensor([[1, 17, 300, 42, 17, 9]])
    want = _logits(bang_model_dir, parent / "adapter", ids)
    # stage_adapter is relative to the parent-merged weights: apply it on top of them
    from peft import PeftModel

    m = AutoModelForCausalLM.from_pretrained(bang_model_dir, dtype=torch.float64)
    m = PeftModel.from_pretrained(m, str(parent / "adapter")).merge_and_unload()
    m = PeftModel.from_pretrained(m, str(out / "stage_adapter")).merge_and_unload()
    with torch.no_grad():
        want = m(ids).logits
    got = _logits(bang_model_dir, out / "adapter", ids)
    assert (want - _logits(bang_model_dir, parent / "adapter", ids)).abs().max() > 1e-6  # RL changed it
    torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-8)
    assert json.loads((out / "run.json").read_text())["parent_run"] == str(parent)


def test_rl_resume_is_exact(rl_args, tmp_path):
    """Killed after step 2 and resumed == run straight through (same rollouts, same updates)."""
    common = [*rl_args, "train.max_steps=4", "train.lr=1e-2", "train.save_every=2", *TOY]
    straight = tmp_path / "straight"
    assert rl.main(["--config", CONFIG, *common, f"out_dir={straight}"]) == 0
    assert rl.main(["--config", CONFIG, *common, "train.stop_after=2"]) == 0
    assert len(read_metrics(tmp_path / "rl")) == 2
    assert rl.main(["--config", CONFIG, *common]) == 0
    a, b = read_metrics(straight), read_metrics(tmp_path / "rl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("reward/task", "kl", "completion/length", "loss"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-5), (ra["step"], key)


def test_rl_rloo_with_brand_rules_and_kl_in_reward(rl_args, rl_brand, tmp_path):
    """RLOO, KL-shaped reward, rule score from the brand card: every component logged."""
    from onbrand.data.brand import load_brand

    args = [
        *rl_args, "train.max_steps=2", "rl.algorithm=rloo", "rl.kl_mode=reward", "rl.beta=0.1",
        "rollout.max_new_tokens=12",
        "rewards=[{kind: rules, weight: 1.0}, {kind: length, weight: -0.01}]",
    ]  # fmt: skip
    assert rl.main(["--config", CONFIG, *args]) == 0
    rows = read_metrics(tmp_path / "rl")
    assert len(rows) == 2
    for r in rows:
        assert 0.0 <= r["reward/rules"] <= 1.0
        want = r["reward/rules"] - 0.01 * r["reward/length"]
        assert r["reward/task"] == pytest.approx(want, abs=1e-6)
        assert r["reward/total"] == pytest.approx(r["reward/task"] + r["reward/kl_penalty"], abs=1e-5)
    # the "!" model breaks the exclamation rule most of the time
    assert rows[0]["reward/rules"] < 0.9
    assert load_brand(rl_brand).compliance_score("Calm! reply.", "product_question") == 1.0


def test_rl_bad_config_names_the_key(rl_args):
    from onbrand.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.num_generations"):
        rl.main(["--config", CONFIG, *rl_args, "rollout.num_generations=1"])
    with pytest.raises(ConfigError, match="needs pattern"):
        rl.main(["--config", CONFIG, *rl_args, "rewards=[{kind: regex}]"])


def test_rl_goodhart_stop_saves_the_adapter(rl_args, tmp_path):
    """Reward rises (the "!" goes away) while KL passes a tiny bound: the monitor stops the run."""
    args = [
        *rl_args, "train.max_steps=8", "train.lr=3e-2", "goodhart.window=1", "goodhart.kl_max=1e-4",
        "goodhart.stop=true", "goodhart.patience=1", *TOY,
    ]  # fmt: skip
    assert rl.main(["--config", CONFIG, *args]) == 0
    out = tmp_path / "rl"
    run = json.loads((out / "run.json").read_text())
    assert run["final"]["goodhart_stop"] and "KL" in run["final"]["goodhart_stop"]
    assert run["final"]["steps"] < 8
    warnings = [json.loads(x) for x in (out / "goodhart.jsonl").read_text().splitlines()]
    assert warnings and warnings[0]["reward_gain"] > 0 and warnings[0]["kl"] > 1e-4
    assert (out / "adapter" / "adapter_config.json").exists()


@pytest.mark.slow
def test_rl_two_process_ddp(rl_args, tmp_path):
    """``accelerate launch`` with 2 CPU processes: prompts split across ranks, one Goodhart decision."""
    import os
    import subprocess
    import sys

    args = [*rl_args, "train.max_steps=2", "train.batch_size=2", *TOY]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "-m", "onbrand.training.rl", "--config", CONFIG, *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(tmp_path / "rl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["world_size"] == 2 for r in rows)
    assert (tmp_path / "rl" / "adapter" / "adapter_config.json").exists()
