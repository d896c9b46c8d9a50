"""What every export part shares: the layout's file names, the fixed parity prompts and the
logits helpers used both when exporting (``checkpoint.py``) and when verifying (``verify.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onbrand.models import load_model

FORMATS = ("merged", "adapter", "both")
MANIFEST = "manifest.json"
EXPORT_KIND = "onbrand-export"
FORMAT_VERSION = 1
REFERENCE = "parity/reference.safetensors"
# Fixed prompts for the logits parity check (sent with the brand system prompt as explicit messages).
PARITY_PROMPTS = (
    "A customer asks: can your lamp help me sleep better?",
    "My order arrived broken. What now?",
    "Write a two-sentence product blurb for our desk light.",
)
REFERENCE_POSITIONS = 8  # last positions of each prompt whose full-vocab logits are stored
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def reject_dotdot(path: str | Path, what: str) -> Path:
    """Refuse paths with a ``..`` component: an export never writes or reads outside where it was told."""
    if ".." in Path(path).parts or "\x00" in str(path):
        raise ValueError(f"{what} {str(path)!r} is not allowed: '..' path components are rejected")
    return Path(path)


def is_quantized(cfg: Any) -> bool:
    """True when a run config trained on a 4-bit base (``quantize: nf4``, ``load_in_4bit: true``)."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key in ("quantize", "quantization") and value not in (None, "none", False, ""):
                return True
            if key in ("load_in_4bit", "qlora") and value is True:
                return True
            if is_quantized(value):
                return True
    if isinstance(cfg, list):
        return any(is_quantized(v) for v in cfg)
    return False


def parity_inputs(tokenizer, system_prompt: str | None) -> list[dict[str, Any]]:
    """Fixed chat prompts -> ``[{messages, input_ids (1, T)}]`` (explicit system message)."""
    out = []
    for text in PARITY_PROMPTS:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": text}
        ]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        out.append({"messages": messages, "input_ids": ids})
    return out


def prompt_logits(model, prompts: list[dict[str, Any]]) -> list[Any]:
    """Full logits ``(T, V)`` per prompt, float32, no padding (one forward per prompt)."""
    import torch

    with torch.no_grad():
        return [model(input_ids=p["input_ids"]).logits[0].float() for p in prompts]


def max_abs_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def base_with_adapters(base_dir: Path, adapters: list[Path], merge_last: bool):
    """fp32 base with ``adapters`` applied in order; all but the last merged (the last too if asked)."""
    from peft import PeftModel

    model = load_model(base_dir, dtype="float32").eval()
    for i, adapter in enumerate(adapters):
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
        if i < len(adapters) - 1 or merge_last:
            model = model.merge_and_unload()
    return model.eval()
