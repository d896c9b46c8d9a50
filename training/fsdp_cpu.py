"""FSDP on CPU over gloo, with torch's FSDP2 ``fully_shard``.

accelerate (1.15) runs ``distributed_type: FSDP`` with ``use_cpu: true`` as plain DDP: with a CPU device
its state becomes ``MULTI_CPU`` and the FSDP plugin is dropped, silently. So when ``accelerate launch``
asks for FSDP (``ACCELERATE_USE_FSDP=true``) on CPU with more than one process,
:func:`make_cpu_fsdp_accelerator` returns an :class:`~accelerate.Accelerator` whose ``prepare(model)``
shards the model itself: each decoder layer named by ``fsdp_transformer_layer_cls_to_wrap``, then the
root (embeddings, final norm, tied head). Parameters become ``DTensor`` shards; the checkpoint code
gathers them (:func:`full_tensor`) and scatters them back (:func:`like_param`).

On GPUs accelerate's own FSDP path is used (``configs/accelerate/fsdp.yaml``), not this one.
"""

from __future__ import annotations

import os
import sys

import torch


def cpu_fsdp_requested() -> bool:
    """``accelerate launch`` asked for FSDP, there is no GPU, and there is more than one process."""
    return (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and not torch.cuda.is_available()
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
    )


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 in place: the configured layer classes first, then the root; returns ``model``."""
    from torch.distributed.fsdp import fully_shard

    names = {n.strip() for n in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if n.strip()}
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "no_shard")
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if names and not layers:
        raise ValueError(
            f"FSDP: no module of class {sorted(names)} in the model (fsdp_transformer_layer_cls_to_wrap)"
        )
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    if torch.distributed.get_rank() == 0:
        world, backend = torch.distributed.get_world_size(), torch.distributed.get_backend()
        print(
            f"FSDP2 on CPU: {len(layers)} layers + root sharded over {world} ranks ({backend})",
            file=sys.stderr,
        )
    return model


def make_cpu_fsdp_accelerator():
    from accelerate import Accelerator

    class CpuFsdpAccelerator(Accelerator):
        """``prepare`` shards each ``nn.Module`` with FSDP2 and passes everything else to accelerate."""

        def prepare(self, *args, **kwargs):
            out = [shard(a) if isinstance(a, torch.nn.Module) else super(CpuFsdpAccelerator, self).prepare(a)
                   for a in args]  # fmt: skip
            return out[0] if len(out) == 1 else tuple(out)

    return CpuFsdpAccelerator(cpu=True)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a ``DTensor`` shard (a collective: every rank must call it), else ``t``."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like_param(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``param``: this rank's shard when ``param`` is a ``DTensor``."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements)
    return value
