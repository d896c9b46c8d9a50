"""``onbrand run configs/demo.yaml``: the whole pipeline in one script.

Stages run in order; each records the hash of its inputs and is skipped on re-run when they match
(``--force STAGE`` re-runs it). Stages whose code is not in this checkout are reported as
"not built yet" instead of failing.
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from onbrand.config import load_config

KNOWN_STAGES = ("model", "data", "sft", "dpo", "eval", "export")
# Where each stage's implementation lives: a stage is "built" when its module imports.
STAGE_IMPL = {
    "model": "onbrand.models",
    "data": "onbrand.data.snapshot",
    "sft": "onbrand.training.sft",
    "dpo": "onbrand.training.dpo",
    "eval": "onbrand.eval.runner",
    "export": "onbrand.export",
}


@dataclass
class RunConfig:
    """The main job. Paths are relative to the current directory."""

    name: str = "demo"
    model: str = "embedded:smollm2-135m-instruct"
    brand: str = ""
    out_dir: str = "runs/demo"
    stages: list[str] = field(default_factory=lambda: list(KNOWN_STAGES))
    sample_prompt: str = "A customer asks: can your lamp help me sleep better? Reply in two sentences."
    system_prompt: str = "You are a helpful, friendly and precise assistant for a lighting brand."
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in KNOWN_STAGES]
        if bad:
            raise ValueError(f"stages: unknown stage(s) {bad}; valid stages: {', '.join(KNOWN_STAGES)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def stage_built(stage: str) -> bool:
    try:
        importlib.import_module(STAGE_IMPL[stage])
        return True
    except ModuleNotFoundError:
        return False


def run_model_stage(cfg: RunConfig) -> dict:
    """Load the base model (converting the embedded GGUF on first use), print facts, generate."""
    import torch

    from onbrand.models import count_parameters, load_model, load_tokenizer, resolve_model

    t0 = time.perf_counter()
    path = resolve_model(cfg.model)
    t_resolve = time.perf_counter() - t0
    t1 = time.perf_counter()
    tok = load_tokenizer(path)
    model = load_model(path).eval()
    t_load = time.perf_counter() - t1
    facts = {
        "model": cfg.model,
        "path": str(path),
        "parameters": count_parameters(model),
        "vocab_size": model.config.vocab_size,
        "layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "resolve_seconds": round(t_resolve, 2),
        "load_seconds": round(t_load, 2),
    }
    messages = [
        {"role": "system", "content": cfg.system_prompt},
        {"role": "user", "content": cfg.sample_prompt},
    ]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(cfg.seed)
    t2 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=cfg.max_new_tokens, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    facts["generate_seconds"] = round(time.perf_counter() - t2, 2)
    facts["answer"] = answer
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onbrand run", description=__doc__)
    _add_args(parser)
    return _run(parser.parse_args(argv))


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default="configs/demo.yaml", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides (dotted)")
    p.add_argument("--force", action="append", default=[], choices=KNOWN_STAGES, help="re-run STAGE")


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(RunConfig, args.config, args.overrides)
    print(f"onbrand run: {cfg.name} -> {Path(cfg.out_dir)}")
    missing = []
    for stage in cfg.stages:
        if not stage_built(stage):
            missing.append(stage)
            continue
        if stage == "model":
            facts = run_model_stage(cfg)
            print(f"  base model      {facts['model']}  ({facts['path']})")
            print(
                f"  parameters      {facts['parameters'] / 1e6:.1f}M   vocab {facts['vocab_size']}   "
                f"layers {facts['layers']}   hidden {facts['hidden_size']}"
            )
            print(f"  load time       resolve {facts['resolve_seconds']} s + load {facts['load_seconds']} s")
            print(f"  prompt          {cfg.sample_prompt}")
            print(f"  answer          {facts['answer']}")
            print(f"  generated in    {facts['generate_seconds']} s")
        else:
            missing.append(stage)
    if missing:
        print(f"  not built yet:  {', '.join(missing)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="run the whole pipeline from one config (what `make demo` calls)")
    _add_args(p)
    p.set_defaults(func=_run)
