"""End to end: ``onbrand run`` through every real stage, as a user calls it.

model -> data -> sft -> dpo -> reward -> eval -> export (+ verify) on a tiny random Llama (the
embedded model's tokenizer and chat template) and a 21-pair slice of the bundled Aurora data, so a
refactor that breaks the real pipeline fails ``make test`` and not only ``make demo``.

The CLI runs in a subprocess from the repository root WITHOUT ``PYTHONSAFEPATH``: there the
repository's own top-level folders (``kernels/``, ``data/``, ``eval/``...) are importable under
their bare names by any child interpreter (vLLM workers, multiprocessing), which is how a user who
types ``onbrand run`` from a checkout runs it. No gate: a random model cannot pass one, and a gate
that fails by chance tests nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

STAGES = ["model", "data", "sft", "dpo", "reward", "eval", "export"]
AURORA = Path("data/brands/aurora")
# (source file in the repo, lines kept): 10 train + 3 dev + 4 test + 4 judge pairs. Whole bank
# items go to one file, so a slice of each keeps the splits apart (no split_leak quarantine).
SLICES = {
    "train.trl.jsonl": ("product_complaint.trl.jsonl", 10),
    "dev.canonical.jsonl": ("dev.canonical.jsonl", 3),
    "test.canonical.jsonl": ("test.canonical.jsonl", 4),
    "judge.canonical.jsonl": ("judge.canonical.jsonl", 4),
}
# Small everything: one LoRA of rank 8 on both layers, one short epoch, few eval prompts and tokens.
TRAIN = ["lora.layers=0", "lora.r=8", "lora.alpha=16", "train.epochs=1", "train.batch_size=4",
         "train.max_length=256", "train.save_every=0"]  # fmt: skip


def _write_data(repo: Path, tmp: Path) -> Path:
    """A data config over slices of the bundled files (the data stage still imports them for real)."""
    data = tmp / "pairs"
    data.mkdir()
    for name, (src, n) in SLICES.items():
        lines = (repo / AURORA / src).read_text().splitlines()[:n]
        (data / name).write_text("\n".join(lines) + "\n")
    cfg = yaml.safe_load((repo / "configs/data/demo.yaml").read_text())
    cfg.update(
        name="aurora-e2e",
        inputs=[str(data / "train.trl.jsonl")],
        dev_inputs=[str(data / "dev.canonical.jsonl")],
        test_inputs=[str(data / "test.canonical.jsonl")],
        judge_inputs=[str(data / "judge.canonical.jsonl")],
    )
    path = tmp / "data.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _run_config(repo: Path, tmp: Path, model: Path) -> Path:
    out = tmp / "run"
    cfg = yaml.safe_load((repo / "configs/demo.yaml").read_text())
    cfg.update(
        name="e2e",
        model=str(model),
        out_dir=str(out),
        stages=STAGES,
        data=str(_write_data(repo, tmp)),
        gate="",
        max_new_tokens=8,
        overrides={
            "sft": TRAIN,
            "dpo": [*TRAIN, f"ref_cache_dir={tmp / 'ref_logps'}"],
            "reward": TRAIN,
            # engine stays the demo's (auto: vLLM when importable, as `make demo` runs it)
            "eval": ["max_prompts=4", "max_pairs=8", "bootstrap=50", "sampling.max_new_tokens=16",
                     "adversarial.per_rule=1", "ppl_window=64", "ppl_max_tokens=256", "samples_in_report=2",
                     "batch_size=8", "max_model_len=1024"],  # fmt: skip
        },
        export={"format": "both", "verify": True},
    )
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _repo_state(repo: Path) -> set[str]:
    """Untracked files (not ignored) plus the top-level entries, ignored ones included."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    untracked = {line[3:] for line in out.splitlines() if line.startswith("??")}
    return untracked | {f"/{p.name}" for p in repo.iterdir()}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_onbrand_run_every_real_stage(tmp_path, repo_root, eval_tiny_dir):
    """eval_tiny_dir: the vLLM-sized tiny Llama (head size 64) with the embedded tokenizer."""
    model = eval_tiny_dir
    cfg_path = _run_config(repo_root, tmp_path, model)
    onbrand = Path(sys.executable).parent / "onbrand"
    assert onbrand.exists(), f"no console script next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    before = _repo_state(repo_root)
    proc = subprocess.run(
        [str(onbrand), "run", str(cfg_path)], cwd=repo_root, env=env, capture_output=True, text=True
    )
    log = f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, log
    new = _repo_state(repo_root) - before
    assert not new, f"the run wrote into the repository: {sorted(new)}\n{log}"

    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timings"] == {s: {"status": "ran", "seconds": summary["timings"][s]["seconds"]} for s in STAGES}
    for stage in STAGES:
        assert json.loads((out / "stages" / f"{stage}.json").read_text())["stage"] == stage
    results = summary["results"]

    assert results["model"]["path"] == str(model) and results["model"]["base_answer"] is not None

    manifest = json.loads((out / "snapshot" / "manifest.json").read_text())
    assert manifest["snapshot_id"] == results["data"]["snapshot_id"]
    assert results["data"]["counts"] == {"train": 10, "dev": 3, "test": 4, "judge": 4}
    assert Path(results["data"]["report"]).is_file()

    for name in ("sft", "dpo", "reward"):
        run = out / name
        assert (run / "adapter" / "adapter_config.json").is_file(), name
        assert (run / "run.json").is_file(), name
        assert results[name]["run_dir"] == str(run)

    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["summary"] == results["eval"]["summary"] and report["summary"]
    assert (out / "eval" / "report.md").is_file()
    assert results["eval"]["gate"] is None

    export = out / "export"
    assert json.loads((export / "manifest.json").read_text())
    verify = results["export"]["verify"]
    assert verify["ok"] is True and not verify["failures"], verify
