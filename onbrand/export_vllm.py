"""vLLM half of ``onbrand export verify`` (run as ``python -m onbrand.export_vllm DIR --json OUT``).

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

# vLLM accepts only these LoRA ranks as max_lora_rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _generate(llm, prompts, max_tokens: int, lora=None) -> list[dict]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outs = llm.chat(prompts, params, lora_request=lora, use_tqdm=False)
    return [{"text": o.outputs[0].text, "token_ids": list(o.outputs[0].token_ids)} for o in outs]


def _engine(model: str, **kwargs):
    from vllm import LLM

    return LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0, **kwargs)


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

        from onbrand.models import resolve_model

        rank = json.loads((export_dir / "adapter" / "adapter_config.json").read_text())["r"]
        max_rank = next(r for r in VLLM_LORA_RANKS if r >= rank)
        base_dir = resolve_model(base or manifest["base_model"]["name"])
        # max_loras >= adapters + 1: with 1, base requests batched next to LoRA ones got the adapter.
        llm = _engine(str(base_dir), enable_lora=True, max_loras=2, max_lora_rank=max_rank)
        lora = LoRARequest("brand", 1, str(export_dir / "adapter"))
        parts.append({"part": "base+adapter", "generations": _generate(llm, prompts, max_tokens, lora)})
    return {"vllm_version": vllm.__version__, "max_tokens": max_tokens, "parts": parts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onbrand.export_vllm", description=__doc__)
    p.add_argument("dir", type=Path)
    p.add_argument("--json", type=Path, required=True, help="where to write the result")
    p.add_argument("--base", help="local base model dir (adapter exports)")
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args(argv)
    result = run(args.dir, args.base, args.max_tokens)
    from onbrand.runs import atomic_write_json

    atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
