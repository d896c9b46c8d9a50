"""vLLM half of ``onbrand export verify`` (run as ``python -m onbrand.export.serve_check DIR --json OUT``).

A separate process: vLLM spawns workers (hence the ``__main__`` guard) and keeps its memory until
exit. Loads the merged checkpoint as a model, and/or the base + the exported adapter as one LoRA
request, and generates greedily on the export's fixed parity prompts. CPU build: fp32, eager, small
KV cache (``VLLM_CPU_KVCACHE_SPACE``, set by the caller).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from onbrand.artifacts import atomic_write_json
from onbrand.engines.options import EngineOptions
from onbrand.models import resolve_model

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
