"""Model set-up: base model (optionally SFT-merged, optionally 4-bit NF4) + a fresh PEFT LoRA.

- ``init_from`` a previous run: its ``adapter/`` (relative to the original base) is merged into the
  base weights first, so the reference of the next stage is simply "adapters disabled" (no second
  model copy, no stacked adapters).
- ``lora.layers = N`` puts LoRA only on the last N decoder layers: autograd then never reaches the
  lower layers, so the backward pass costs N/num_layers of a full one (a big lever on CPU).
- ``quantize: nf4`` loads Linear layers as bitsandbytes ``Linear4bit`` (QLoRA); it runs on CPU too.
  Merging into 4-bit weights changes the model (PEFT #2321), so there ``init_from`` STACKS instead:
  the parent adapter is loaded frozen (adapter ``"parent"``) under the fresh trainable one
  (``"default"``), both active. ``W + s1·B1A1 + s2·B2A2`` is the same sum a merge gives, so the
  saved ``adapter/`` (parent + child, ``onbrand.adapters``) is exact; the reference is the policy
  with only the parent on (:func:`reference_adapters`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from onbrand.config import check_range
from onbrand.models import resolve_model

TRAINED = "default"  # PEFT's name of the trainable adapter
PARENT = "parent"  # a frozen parent adapter stacked under it (QLoRA init_from)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    layers: int = 0  # LoRA on the last N decoder layers only (0 = all layers)
    quantize: Literal["none", "nf4"] = "none"

    def __post_init__(self) -> None:
        check_range("lora.r", self.r, 1, 4096)
        check_range("lora.alpha", self.alpha, 0, None, lo_open=True)
        check_range("lora.dropout", self.dropout, 0.0, 1.0, hi_open=True)
        check_range("lora.layers", self.layers, 0, None)
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module, got []")


def backbone(model) -> torch.nn.Module:
    """The decoder stack (e.g. ``LlamaModel``) under a PEFT / task-head wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def _load(path: Path, task: str, quantize: str, compute_dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    kwargs = {"dtype": torch.float32}
    if quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
        )
    if task == "reward":
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def merged_base(model_name: str, parent_adapter: str | Path | None, task: str = "causal", quantize="none"):
    """Load the base; merge ``parent_adapter`` (a PEFT dir relative to this base) into it."""

    path = resolve_model(model_name)
    if parent_adapter is not None and quantize != "none":
        raise ValueError(
            "merging an adapter into 4-bit weights is lossy (PEFT #2321); "
            "build_policy(..., stack_parent=True) stacks it frozen instead"
        )
    model = _load(path, task, quantize, torch.bfloat16)
    if parent_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(parent_adapter)).merge_and_unload()
    return model


def activate(peft_model, names: list[str]) -> None:
    """Make ``names`` the active adapters; only :data:`TRAINED` (when active) requires grad."""
    peft_model.base_model.set_adapter(names)
    if PARENT in peft_model.peft_config:
        peft_model.base_model.set_requires_grad(PARENT, False)


def stacked(peft_model) -> bool:
    """Whether a frozen parent adapter is stacked under the trainable one (QLoRA ``init_from``)."""
    return PARENT in getattr(peft_model, "peft_config", {})


@contextmanager
def reference_adapters(peft_model) -> Iterator[None]:
    """The reference model: the policy without its trainable adapter (adapters disabled, or, when a
    parent is stacked, the parent alone). ``requires_grad`` flags are restored on exit."""
    if not stacked(peft_model):
        with peft_model.disable_adapter():
            yield
        return
    flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    try:
        activate(peft_model, [PARENT])
        yield
    finally:
        activate(peft_model, [PARENT, TRAINED])
        for p, flag in flags:
            p.requires_grad_(flag)


def _keep_4bit_differentiable(model) -> None:
    """bitsandbytes (0.50) repacks a ``Linear4bit``'s weight for its CPU inference kernel at the
    first eval-mode forward (e.g. the DPO reference pass) and keeps using that kernel, which has no
    autograd, in train mode too: the gradients through the frozen 4-bit weights are then silently
    wrong. A policy being trained never takes that path."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _peft_config(lora: LoRAConfig, task: str, n_layers: int):
    from peft import LoraConfig, TaskType

    if lora.layers > n_layers:
        raise ValueError(f"lora.layers={lora.layers}: the model has {n_layers} layers")
    layers = list(range(n_layers - lora.layers, n_layers)) if lora.layers else None
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=layers,
        task_type=TaskType.SEQ_CLS if task == "reward" else TaskType.CAUSAL_LM,
    )


def _stack(model, parent_adapter: str | Path, peft_cfg):
    """Frozen ``parent_adapter`` (adapter :data:`PARENT`) + a fresh trainable :data:`TRAINED` one."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(parent_adapter), adapter_name=PARENT, is_trainable=False)
    model.add_adapter(TRAINED, peft_cfg)
    model.set_adapter(TRAINED)  # PeftModel.active_adapter: the one saved, the config forward reads
    activate(model, [PARENT, TRAINED])
    return model


def build_policy(
    model_name: str,
    lora: LoRAConfig,
    *,
    parent_adapter: str | Path | None = None,
    task: str = "causal",
    gradient_checkpointing: bool = False,
    pad_token_id: int | None = None,
    stack_parent: bool = False,
):
    """Base (+ merged parent) + fresh LoRA -> ``PeftModel`` in train mode.

    With ``lora.quantize=nf4`` a parent is never merged: ``stack_parent=True`` stacks it frozen under
    the new adapter (callers then take their reference from :func:`reference_adapters`), otherwise
    it is an error."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    quantized = lora.quantize != "none"
    if quantized and parent_adapter is not None and not stack_parent:
        raise ValueError(
            "init_from with lora.quantize=nf4 is not supported by this recipe: merging into 4-bit "
            "weights is lossy; export the merged parent model and pass it as model: instead"
        )
    model = merged_base(model_name, None if quantized else parent_adapter, task, lora.quantize)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        _keep_4bit_differentiable(model)
    peft_cfg = _peft_config(lora, task, model.config.num_hidden_layers)
    if quantized and parent_adapter is not None:
        model = _stack(model, parent_adapter, peft_cfg)
    else:
        model = get_peft_model(model, peft_cfg)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    return model
