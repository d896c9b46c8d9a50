"""vLLM half of ``onbrand export verify`` (run as ``python -m onbrand.export.serve_check DIR --json OUT``).

A separate process: vLLM spawns workers (hence the ``__main__`` guard) and keeps its memory until
exit. Loads the merged checkpoint as a model, and/or the base + the exported adapter as one LoRA
request, and generates greedily on the export's fixed parity prompts. CPU build: fp32, eager, small
KV cache (``VLLM_CPU_KVCACHE_SPACE``, set by the caller).

Inside ``onbrand run`` (:data:`onbrand.engines.pool.POOL` active) :func:`run_in_process` does the
same in the run's own process on one engine, the eval's when it was handed on: no second interpreter
imports torch and vLLM, and at most one engine starts for the export.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from onbrand.artifacts import atomic_write_json
from onbrand.engines.options import EngineOptions
from onbrand.engines.pool import POOL
from onbrand.models import model_hash, resolve_model

# The export check's engine: the CPU defaults with a short context (the parity prompts are short).
OPTIONS = EngineOptions(max_model_len=1024, kv_cache_gib=None)


def _generate(llm, prompts, max_tokens: int, lora=None) -> list[dict]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outs = llm.chat(prompts, params, lora_request=lora, use_tqdm=False)
    return [{"text": o.outputs[0].text, "token_ids": list(o.outputs[0].token_ids)} for o in outs]


def _engine(model: str, adapters: dict[str, str] | None = None):
    from vllm import LLM

    # The KV cache comes from VLLM_CPU_KVCACHE_SPACE, which the caller sets.
    return LLM(model=model, seed=0, **OPTIONS.vllm_args(adapters))


def run(export_dir: Path, base: str | None, max_tokens: int) -> dict:
    import vllm

    manifest = json.loads((export_dir / "manifest.json").read_text())
    prompts = manifest["parity"]["prompts"]
    parts = []
    if manifest["format"] in ("merged", "both"):
        llm = _engine(str(export_dir))
        parts.append({"part": "merged", "generations": _generate(llm, prompts, max_tokens)})
        del llm
    if manifest["format"] in ("adapter", "both"):
        from vllm.lora.request import LoRARequest

        base_dir = resolve_model(base or manifest["base_model"]["name"])
        llm = _engine(str(base_dir), {"brand": str(export_dir / "adapter")})
        lora = LoRARequest("brand", 1, str(export_dir / "adapter"))
        parts.append({"part": "base+adapter", "generations": _generate(llm, prompts, max_tokens, lora)})
    return {"vllm_version": vllm.__version__, "max_tokens": max_tokens, "parts": parts}


def _engine_generate(engine, prompts, max_tokens: int, adapter: str | None = None) -> list[dict]:
    from onbrand.engines import Request, Sampling

    reqs = [Request(m, adapter, f"parity-{i}") for i, m in enumerate(prompts)]
    outs = engine.generate(reqs, Sampling(max_new_tokens=max_tokens, temperature=0.0))
    return [{"text": g.texts[0], "token_ids": list(g.token_ids[0])} for g in outs]


def _same_base(engine, base_dir: Path, expected_hash: str) -> bool:
    """Whether the engine's weights are the export's base model (same dir, else same content hash)."""
    here = Path(engine.base_dir)
    return here.resolve() == base_dir.resolve() or model_hash(here) == expected_hash


def run_in_process(export_dir: Path, base: str | None, max_tokens: int) -> dict:
    """The same check in this process on ONE engine: the one an earlier stage handed on
    (:data:`onbrand.engines.pool.POOL`, e.g. the eval's) when it serves the export's base model, else
    a new one. The adapter is served as one more LoRA; the merged weights are then reloaded into the
    engine in place (vLLM's weight reload). Token ids are the engine's (stop token stripped)."""
    import vllm

    from onbrand.engines.vllm import VLLMEngine

    manifest = json.loads((export_dir / "manifest.json").read_text())
    prompts, fmt = manifest["parity"]["prompts"], manifest["format"]
    base_dir = resolve_model(base or manifest["base_model"]["name"])
    engine, how = POOL.take("vllm"), "reused the engine of an earlier stage"
    if engine is not None and not _same_base(engine, base_dir, manifest["base_model"]["hash"]):
        engine.close()
        engine = None
    if engine is None:
        how = "started one engine"
        adapters = {"export": str(export_dir / "adapter")} if fmt in ("adapter", "both") else None
        first = base_dir if adapters else export_dir  # merged only: load it as serving would
        engine = VLLMEngine(first, adapters, seed=0, options=replace(OPTIONS, kv_cache_gib=1.0))
    elif fmt in ("adapter", "both"):
        engine.add_adapter("export", export_dir / "adapter")
    parts = []
    try:
        if fmt in ("adapter", "both"):
            parts.append({"part": "base+adapter", "generations": _engine_generate(engine, prompts, max_tokens, "export")})  # fmt: skip
        if fmt in ("merged", "both"):
            if Path(engine.base_dir).resolve() != export_dir.resolve():
                engine.reload_weights(export_dir)
                how += ", merged weights reloaded into it"
            parts.insert(0, {"part": "merged", "generations": _engine_generate(engine, prompts, max_tokens)})
    finally:
        engine.close()  # it now holds the export's weights: no later stage wants it
    return {"vllm_version": vllm.__version__, "max_tokens": max_tokens, "parts": parts, "engine": how}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onbrand.export.serve_check", description=__doc__)
    p.add_argument("dir", type=Path)
    p.add_argument("--json", type=Path, required=True, help="where to write the result")
    p.add_argument("--base", help="local base model dir (adapter exports)")
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args(argv)
    result = run(args.dir, args.base, args.max_tokens)

    atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
