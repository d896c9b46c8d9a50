"""Export + verify a training run on the real embedded model; write the figures serving teams quote.

    python scripts/export_check.py --run runs/demo/dpo            # the demo DPO run
    python scripts/export_check.py --synthetic                    # no trained run yet: SFT -> DPO
                                                                  # run dirs with random LoRAs

Writes ``bench/results/export_check.{json,md}`` (``export_check_synthetic.*`` with ``--synthetic``).

``--synthetic`` builds ``<work>/sft`` and ``<work>/dpo`` exactly as the training recipes lay them out
(the DPO ``adapter/`` is the exact concatenation of the SFT adapter and the DPO stage adapter, which
was drawn on the SFT-merged weights), with the demo configs' LoRA shape (r 16, alpha 32, all linear
layers, last 12 layers) and non-zero random factors. Results: parity figures, their float64 breakdown, vLLM
generation, timings, peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from onbrand.artifacts import atomic_write_json, atomic_write_text, environment_record

RESULTS = Path("bench/results")


def _random_lora(model, out: Path, seed: int, layers: list[int], std_a: float, std_b: float):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=16, lora_alpha=32, task_type="CAUSAL_LM", layers_to_transform=layers, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )  # fmt: skip
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.normal_(0.0, std_a)
            elif "lora_B" in name:
                p.normal_(0.0, std_b)  # B non-zero, so the check is not vacuous
    peft_model.save_pretrained(out)
    return peft_model


def synthetic_runs(work: Path, base: str, brand: str, std_a: float, std_b: float) -> Path:
    """``<work>/sft`` and ``<work>/dpo`` run dirs (docs/architecture.md layout); returns the DPO dir."""
    from onbrand.adapters import concat_lora_adapters
    from onbrand.lineage import init_run_dir, tokenizer_record
    from onbrand.models import load_model, load_tokenizer, model_hash
    from onbrand.training.common import brand_prompt

    system_prompt, brand_rec = brand_prompt(brand)
    tok = load_tokenizer(base)
    model = load_model(base)
    layers = list(range(model.config.num_hidden_layers - 12, model.config.num_hidden_layers))
    common = dict(
        base_model=base, base_model_hash=model_hash(base), snapshot_id="synthetic-no-data", brand=brand_rec,
        system_prompt=system_prompt, tokenization=tokenizer_record(tok, system_prompt, 384),
    )  # fmt: skip
    lora = {"r": 16, "alpha": 32, "layers": 12, "note": "synthetic random LoRA (export check)"}
    init_run_dir(work / "sft", "sft", {"lora": lora}, parent_run=None, **common)
    sft = _random_lora(model, work / "sft" / "adapter", seed=1, layers=layers, std_a=std_a, std_b=std_b)
    merged = sft.merge_and_unload()
    init_run_dir(
        work / "dpo", "dpo", {"lora": lora, "init_from": str(work / "sft")}, parent_run="sft", **common
    )
    _random_lora(merged, work / "dpo" / "stage_adapter", seed=2, layers=layers, std_a=std_a, std_b=std_b)
    concat_lora_adapters(work / "sft" / "adapter", work / "dpo" / "stage_adapter", work / "dpo" / "adapter")
    return work / "dpo"


def float64_budget(export_dir: Path, base: str) -> dict[str, float]:
    """Where the fp32 parity figure comes from: each fp32 path vs a float64 base+adapter truth.

    Returns max abs logits diffs over the fixed prompts' last stored positions.
    """
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from onbrand.export.common import prompt_logits
    from onbrand.models import load_model

    ref = load_file(str(export_dir / "parity" / "reference.safetensors"))
    n = sum(1 for k in ref if k.startswith("input_ids."))
    prompts = [{"input_ids": ref[f"input_ids.{i}"][None]} for i in range(n)]
    k = ref["logits.0"].shape[0]

    def tails(model):
        with torch.no_grad():
            return [lg[-k:].double() for lg in prompt_logits_f64(model)]

    def prompt_logits_f64(model):
        with torch.no_grad():
            return [model(input_ids=p["input_ids"]).logits[0] for p in prompts]

    truth = tails(
        PeftModel.from_pretrained(load_model(base, dtype="float64"), str(export_dir / "adapter")).eval()
    )
    merged64 = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float64).eval()
    merged32 = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
    m32 = [lg[-k:].double() for lg in prompt_logits(merged32, prompts)]

    def worst(a, b):
        return max(float((x - y).abs().max()) for x, y in zip(a, b))

    return {
        "fp32_base_plus_adapter_vs_float64": worst([ref[f"logits.{i}"].double() for i in range(n)], truth),
        "fp32_merged_vs_float64": worst(m32, truth),
        "fp32_rounded_merged_weights_in_float64_vs_float64": worst(tails(merged64), truth),
    }


def _peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB. Not the vLLM subprocess: Linux carries a parent's
    maxrss into forked children, so RUSAGE_CHILDREN would not be the child's own peak."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown(result: dict) -> str:
    v = result["verify"]
    rows = "\n".join(f"| {k} | {d:.3e} |" for k, d in v["parity_max_abs_diff"].items())
    checks = "\n".join(f"- [{'x' if c['passed'] else ' '}] {c['name']}: {c['detail']}" for c in v["checks"])
    return (
        f"## Export check ({result['run_kind']}, {result['format']})\n\n"
        f"Run `{result['run']}` on `{result['base_model']['name']}` (hash `{result['base_model']['hash'][:16]}…`); command: `{result['command']}`.\n\n"
        f"Verify: **{'PASS' if v['ok'] else 'FAIL'}**; export {result['export_seconds']:.1f} s, verify "
        f"{result['verify_seconds']:.1f} s (incl. vLLM), peak RSS {result['peak_rss_mib']:.0f} MiB "
        "(this process; the vLLM check runs in its own).\n\n"
        "| logits parity, fp32 (fixed prompts, brand system prompt) | max abs diff |\n|---|---|\n"
        f"{rows}\n\n{checks}\n" + _budget_md(result.get("float64_budget"))
    )


def _budget_md(budget: dict | None) -> str:
    if not budget:
        return ""
    rows = "\n".join(f"| {k} | {d:.3e} |" for k, d in budget.items())
    return (
        "\nWhere the fp32 figure comes from (each path vs base+adapter computed in float64):\n\n"
        f"| path | max abs diff vs float64 |\n|---|---|\n{rows}\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="training run dir to export")
    p.add_argument("--synthetic", action="store_true", help="build a synthetic SFT -> DPO run first")
    p.add_argument("--work", default="runs/export-check", help="where synthetic runs and the export go")
    p.add_argument("--base", default="embedded:smollm2-135m-instruct")
    p.add_argument("--brand", default="configs/brands/aurora.yaml")
    p.add_argument("--format", default="both", choices=("merged", "adapter", "both"))
    p.add_argument("--vllm", default="auto", choices=("auto", "on", "off"))
    # Scale of the synthetic factors: A like PEFT's Kaiming init (~1/sqrt(576)), B like a LoRA after a
    # short DPO run (B starts at 0); larger B makes the logits move more (and rounding noise grow).
    p.add_argument("--std-a", type=float, default=0.04)
    p.add_argument("--std-b", type=float, default=0.004)
    args = p.parse_args(argv)
    from onbrand.export.checkpoint import export_run
    from onbrand.export.verify import verify_export

    work = Path(args.work)
    if not args.run and not args.synthetic:
        p.error("give --run RUN_DIR or --synthetic")
    run = Path(args.run) if args.run else synthetic_runs(work, args.base, args.brand, args.std_a, args.std_b)
    t0 = time.perf_counter()
    out = export_run(run, work / "export", args.format, overwrite=True)
    t1 = time.perf_counter()
    report = verify_export(out, vllm=args.vllm)
    t2 = time.perf_counter()
    from onbrand.artifacts import read_json

    manifest = read_json(out / "manifest.json")
    result = {
        "run": str(run),
        "run_kind": "synthetic SFT->DPO (random LoRA)" if args.synthetic else manifest["run_kind"],
        "base_model": manifest["base_model"],
        "format": args.format,
        "command": "python scripts/export_check.py "
        + (f"--run {args.run} --work {args.work}" if args.run else "--synthetic"),
        "export_seconds": t1 - t0,
        "verify_seconds": t2 - t1,
        "peak_rss_mib": _peak_rss_mib(),
        "parity_at_export": manifest["parity"].get("merged_vs_base_plus_adapter_at_export"),
        "float64_budget": float64_budget(out, manifest["base_model"]["name"])
        if args.format == "both"
        else None,
        "verify": report.to_dict(),
        "environment": environment_record(),
    }
    stem = "export_check_synthetic" if args.synthetic else "export_check"
    atomic_write_json(RESULTS / f"{stem}.json", result)
    atomic_write_text(RESULTS / f"{stem}.md", markdown(result))
    print(report.text())
    print(f"wrote {RESULTS / stem}.json and .md")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
