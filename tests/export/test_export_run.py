"""export_run on fake SFT -> DPO runs over the tiny model: merged and adapter parity, lineage, card."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from onbrand.export.checkpoint import export_run
from onbrand.export.common import is_quantized
from onbrand.export.verify import verify_export


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def both_export(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "both"
    return export_run(runs["dpo"], out, "both", max_shard_size="5MB")


def test_merged_parity_vs_sequential_merge(both_export, runs, tiny_model_dir, prompt_batch, kit):
    """Exported merged weights (plain transformers) == base merged with SFT then DPO stage adapters."""
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(both_export, dtype=torch.float32).eval()
    reference = _logits(kit.merged_with(tiny_model_dir, runs["adapters"]), prompt_batch)
    base = _logits(kit.load_base(tiny_model_dir), prompt_batch)
    got = _logits(exported, prompt_batch)
    assert (reference - base).abs().max() > 1e-2  # the adapters matter
    assert (got - reference).abs().max() <= 1e-4
    assert all(p.dtype == torch.float32 for p in exported.parameters())
    assert len(list(both_export.glob("model-*.safetensors"))) >= 2  # max_shard_size honoured


def test_adapter_reload_parity(both_export, runs, tiny_model_dir, prompt_batch, kit):
    from peft import PeftModel

    served = PeftModel.from_pretrained(kit.load_base(tiny_model_dir), both_export / "adapter").eval()
    reference = _logits(kit.merged_with(tiny_model_dir, runs["adapters"]), prompt_batch)
    assert (_logits(served, prompt_batch) - reference).abs().max() <= 1e-4
    cfg = json.loads((both_export / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)


def test_verify_passes_and_reports_parity(both_export):
    report = verify_export(both_export, vllm="off")
    assert report.ok, report.text()
    assert set(report.parity) == {
        "merged_vs_reference",
        "adapter_vs_reference",
        "merged_vs_base_plus_adapter",
    }
    assert 0 <= report.parity["merged_vs_base_plus_adapter"] <= 1e-4


def test_manifest_and_card_lineage(both_export, runs, tiny_model_dir):
    from onbrand.models import model_hash

    m = json.loads((both_export / "manifest.json").read_text())
    assert m["base_model"] == {"name": str(tiny_model_dir), "hash": model_hash(tiny_model_dir)}
    assert [s["kind"] for s in m["lineage"]] == ["sft", "dpo"]
    assert m["run_id"] == "dpo-dpo" and m["snapshot_id"].startswith("snap-")
    assert m["onbrand_version"] and "git_commit" in m
    assert "model-00001-of-00002.safetensors" in m["files"] and "MODEL_CARD.md" in m["files"]
    assert all(set(v) == {"sha256", "size"} for v in m["files"].values())
    card = (both_export / "MODEL_CARD.md").read_text()
    for needle in (
        "lumen",
        "snap-",
        "Intended use",
        "Limitations",
        "sft `sft-sft` -> dpo `dpo-dpo`",
        "Be warm",
    ):
        assert needle in card, needle
    assert (both_export / "system_prompt.txt").read_text().startswith("You are Lumen")


def test_stage_adapter_fallback_and_eval_summary(runs, tiny_model_dir, prompt_batch, kit, tmp_path):
    """A DPO run without adapter/ is exported as parent adapter + stage_adapter (concatenated)."""
    from peft import PeftModel

    root = tmp_path / "r"
    shutil.copytree(runs["sft"], root / "sft")
    shutil.copytree(runs["dpo"], root / "dpo", ignore=shutil.ignore_patterns("adapter"))
    (root / "eval").mkdir()
    (root / "eval" / "report.json").write_text(
        json.dumps({"summary": {"win_rate": 0.625, "compliance": 0.9}})
    )
    out = export_run(root / "dpo", tmp_path / "exp", "adapter")
    assert not (out / "config.json").exists()  # adapter only
    served = PeftModel.from_pretrained(kit.load_base(tiny_model_dir), out / "adapter").eval()
    reference = _logits(kit.merged_with(tiny_model_dir, runs["adapters"]), prompt_batch)
    assert (_logits(served, prompt_batch) - reference).abs().max() <= 1e-4
    card = (out / "MODEL_CARD.md").read_text()
    assert "| `win_rate` | 0.625 |" in card and (out / "eval" / "report.json").exists()
    assert verify_export(out, vllm="off").ok


def test_qlora_run_merges_into_fp32_base(runs, tiny_model_dir, kit, tmp_path):
    run = kit.write_run(
        tmp_path / "qsft",
        str(tiny_model_dir),
        "sft",
        adapter=runs["sft"] / "adapter",
        config={"lora": {"r": 4, "quantize": "nf4"}},
    )
    out = export_run(run, tmp_path / "qexp", "merged")
    m = json.loads((out / "manifest.json").read_text())
    assert m["merge"] == {"dtype": "float32", "quantized_training": True, "adapters_in_order": 1}
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert "4-bit (QLoRA)" in (out / "MODEL_CARD.md").read_text()
    assert m["parity"]["merged_vs_base_plus_adapter_at_export"] <= 1e-4


def test_is_quantized():
    assert is_quantized({"lora": {"quantize": "nf4"}}) and is_quantized({"model": {"load_in_4bit": True}})
    assert not is_quantized({"lora": {"quantize": "none", "r": 4}})


def test_bad_runs_refused(runs, tmp_path):
    with pytest.raises(ValueError, match="'..'"):
        export_run(runs["dpo"], tmp_path / "a" / ".." / "b")
    with pytest.raises(ValueError, match="format"):
        export_run(runs["dpo"], tmp_path / "x", "gguf")
    with pytest.raises(FileNotFoundError, match="no run.json"):
        export_run(tmp_path, tmp_path / "y")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run(runs["dpo"], tmp_path / "exists")
    bad = tmp_path / "bad"
    shutil.copytree(runs["sft"], bad)
    run = json.loads((bad / "run.json").read_text())
    run["base_model_hash"] = "0" * 64
    (bad / "run.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="base changed since training"):
        export_run(bad, tmp_path / "z")


def test_card_uses_eval_verdict_and_skips_other_runs_report(runs, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(runs["sft"], root / "sft")
    (root / "eval").mkdir()
    rows = [
        {
            "metric": "Brand compliance",
            "base": "0.41",
            "aligned": "0.77",
            "delta": "+0.36",
            "better": "aligned",
        }
    ]
    report = {"verdict": "Aligned is better on 1 of 1 metrics", "verdict_rows": rows,
              "inputs": {"aligned": {"run_id": "sft-sft"}}}  # fmt: skip
    (root / "eval" / "report.json").write_text(json.dumps(report))
    card = (export_run(root / "sft", tmp_path / "e1", "adapter") / "MODEL_CARD.md").read_text()
    assert "| Brand compliance | 0.41 | 0.77 | +0.36 | aligned |" in card and "Aligned is better" in card
    report["inputs"]["aligned"]["run_id"] = "dpo-somethingelse"
    (root / "eval" / "report.json").write_text(json.dumps(report))
    out = export_run(root / "sft", tmp_path / "e2", "adapter")
    assert "evaluates run dpo-somethingelse" in (out / "MODEL_CARD.md").read_text()
    assert not (out / "eval").exists()
    assert (out / "training" / "1-sft.run.json").exists()


def test_card_counts_from_snapshot_manifest(runs, tiny_model_dir, kit, tmp_path):
    snap = tmp_path / "snapshot"
    snap.mkdir()
    counts = {
        "train": {"pairs": 415, "channels": {"complaint_reply": 65}},
        "test": {"pairs": 98, "channels": {}},
    }
    (snap / "manifest.json").write_text(json.dumps({"snapshot_id": "snap-" + "ab" * 8, "counts": counts}))
    run = kit.write_run(tmp_path / "sft", str(tiny_model_dir), "sft", adapter=runs["sft"] / "adapter",
                        config={"data": {"snapshot": str(snap)}})  # fmt: skip
    out = export_run(run, tmp_path / "e", "adapter")
    card = (out / "MODEL_CARD.md").read_text()
    assert "| train | 415 | complaint_reply 65 |" in card and "Small training set (415" in card
    assert json.loads((out / "manifest.json").read_text())["snapshot_counts"] == counts


def test_export_is_served_with_the_sampling_the_eval_measured(runs, tmp_path):
    """generation_config.json carries the eval's decoding; the manifest records it and the gate."""
    from onbrand.export.checkpoint import serving_sampling

    root = tmp_path / "r"
    shutil.copytree(runs["sft"], root / "sft")
    shutil.copytree(runs["dpo"], root / "dpo")
    dpo_run = json.loads((root / "dpo" / "run.json").read_text())
    sampling = {
        "max_new_tokens": 96,
        "temperature": 0.2,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
        "n": 1,
        "seed": 0,
    }
    report = {"summary": {}, "config": {"sampling": sampling}, "inputs": {"aligned": {"run_id": dpo_run["run_id"]}},
              "gate": {"config": "configs/eval/gates.yaml", "passed": False, "checks": []}}  # fmt: skip
    (root / "eval").mkdir()
    (root / "eval" / "report.json").write_text(json.dumps(report))
    out = export_run(root / "dpo", tmp_path / "exp", "merged")
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["do_sample"], gen["temperature"], gen["top_p"], gen["repetition_penalty"]) == (
        True,
        0.2,
        0.9,
        1.1,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sampling"] == serving_sampling(report)
    assert manifest["gate"] == {"config": "configs/eval/gates.yaml", "passed": False}
    assert verify_export(out, vllm="off").ok  # parity is checked greedily, whatever the serving sampling
    greedy = serving_sampling({"config": {"sampling": {**sampling, "temperature": 0.0}}})
    assert greedy == {"do_sample": False, "repetition_penalty": 1.1}
