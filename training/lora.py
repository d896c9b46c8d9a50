"""Model set-up: base model (optionally SFT-merged, optionally 4-bit NF4) + a fresh PEFT LoRA.

- ``init_from`` a previous run: its ``adapter/`` (relative to the original base) is merged into the
  base weights first, so the reference of the next stage is simply "adapters disabled" (no second
  model copy, no stacked adapters).
- ``lora.layers = N`` puts LoRA only on the last N decoder layers: autograd then never reaches the
  lower layers, so the backward pass costs N/num_layers of a full one (a big lever on CPU).
- ``quantize: nf4`` loads Linear layers as bitsandbytes ``Linear4bit`` (QLoRA); it runs on CPU too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from onbrand.config import check_range
from onbrand.models import resolve_model

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
            "init_from with lora.quantize=nf4 is not supported: merging into 4-bit weights is lossy; "
            "export the merged SFT model and pass it as model: instead"
        )
    model = _load(path, task, quantize, torch.bfloat16)
    if parent_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(parent_adapter)).merge_and_unload()
    return model


def build_policy(
    model_name: str,
    lora: LoRAConfig,
    *,
    parent_adapter: str | Path | None = None,
    task: str = "causal",
    gradient_checkpointing: bool = False,
    pad_token_id: int | None = None,
):
    """Base (+ merged parent) + fresh LoRA -> ``PeftModel`` in train mode."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    model = merged_base(model_name, parent_adapter, task, lora.quantize)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if lora.quantize != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    n_layers = model.config.num_hidden_layers
    if lora.layers > n_layers:
        raise ValueError(f"lora.layers={lora.layers}: the model has {n_layers} layers")
    layers = list(range(n_layers - lora.layers, n_layers)) if lora.layers else None
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=layers,
        task_type=TaskType.SEQ_CLS if task == "reward" else TaskType.CAUSAL_LM,
    )
    model = get_peft_model(model, peft_cfg)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    return model
