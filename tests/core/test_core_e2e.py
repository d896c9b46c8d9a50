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

from onbrand.engines import vllm_available

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
            "eval": [
                "max_prompts=4",
                "max_pairs=8",
                "bootstrap=50",
                "sampling.max_new_tokens=16",
                "adversarial.per_rule=1",
                "ppl_window=64",
                "ppl_max_tokens=256",
                "samples_in_report=2",
                "batch_size=8",
                # engine_options.max_model_len stays 2048: the engine caps it at the tiny model's 1024
            ],
        },
        export={"format": "both", "verify": True},
    )
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _repo_state(repo: Path) -> set[str]:
    """Untracked (not ignored) files, the top-level entries and the files under the ignored output
    folders (``runs/``, ``out/``, ``wandb/``): ``git status --porcelain`` alone misses ignored paths."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    untracked = {line[3:] for line in out.splitlines() if line.startswith("??")}
    outputs = {str(p) for d in ("runs", "out", "wandb") for p in (repo / d).rglob("*")}
    return untracked | outputs | {f"/{p.name}" for p in repo.iterdir()}


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
    # A cold vLLM model-info cache: vLLM then probes the model class in a child interpreter, which
    # must not pick up the repository's folders (a warm cache from earlier tests hid that).
    env["VLLM_CACHE_ROOT"] = str(tmp_path / "vllm-cache")

    before = _repo_state(repo_root)
    proc = _onbrand_run(onbrand, cfg_path, repo_root, env)
    new = _repo_state(repo_root) - before
    assert not new, f"the run wrote into the repository: {sorted(new)}\n{_log(proc, tmp_path / 'run')}"

    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["timings"]) == STAGES
    assert {s: t["status"] for s, t in summary["timings"].items()} == dict.fromkeys(STAGES, "ran")
    for stage in STAGES:
        assert json.loads((out / "stages" / f"{stage}.json").read_text())["stage"] == stage
    results = summary["results"]

    assert results["model"]["path"] == str(model)
    assert results["model"]["num_hidden_layers"] == 2 and results["model"]["base_answer"]

    snapshot = json.loads((out / "snapshot" / "manifest.json").read_text())
    assert snapshot["snapshot_id"] == results["data"]["snapshot_id"]
    assert results["data"]["counts"] == {"train": 10, "dev": 3, "test": 4, "judge": 4}
    for split in ("train", "dev", "test", "judge"):
        assert (out / "snapshot" / f"{split}.parquet").is_file(), split
    assert Path(results["data"]["report"]).is_file()

    for name in ("sft", "dpo", "reward"):
        run = out / name
        assert results[name]["run_dir"] == str(run)
        assert (run / "adapter" / "adapter_config.json").is_file(), name
        assert json.loads((run / "run.json").read_text())["kind"] == name

    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["summary"] and report["summary"] == results["eval"]["summary"]
    assert results["eval"]["verdict"] and results["eval"]["gate"] is None
    assert (out / "eval" / "report.md").is_file()
    # Every metric family ran (none skipped for a missing input), on the engine `auto` picks.
    metrics = report["metrics"]
    assert not metrics["skipped"], metrics["skipped"]
    for key in ("win_rate", "compliance", "voice", "implicit", "kl", "perplexity", "adversarial"):
        assert metrics.get(key), key
    assert report["inputs"]["engine"] == ("vllm" if vllm_available() else "hf")
    assert report["judge_independence"]["independent"] is True

    export = out / "export"
    assert json.loads((export / "manifest.json").read_text())["files"]
    assert (export / "model.safetensors").is_file() and (export / "adapter").is_dir()
    verify = results["export"]["verify"]
    assert verify["ok"] is True and not verify["failures"], verify
    checks = {c["name"] for c in verify["checks"]}
    assert {"checksums", "transformers load (merged)", "PEFT load (adapter)"} <= checks, checks
    assert ("vLLM load+generate" in checks) == vllm_available(), checks
    if vllm_available():  # in the run's process; the eval's engine is closed on CPU (no sleep mode)
        assert verify["vllm"]["engine"] == "started one engine, merged weights reloaded into it", verify[
            "vllm"
        ]
        starts = {s: json.loads((out / "stages" / f"{s}.json").read_text())["engine_starts"] for s in STAGES}
        assert starts == {**dict.fromkeys(STAGES, 0), "eval": 1, "export": 1}, starts

    # The same command again: every stage's inputs and outputs are unchanged, so every stage skips.
    _onbrand_run(onbrand, cfg_path, repo_root, env)
    timings = json.loads((out / "summary.json").read_text())["timings"]
    assert {s: t["status"] for s, t in timings.items()} == dict.fromkeys(STAGES, "skipped")
    assert not _repo_state(repo_root) - before


def _log(proc: subprocess.CompletedProcess, out: Path | None = None) -> str:
    """The terminal of the run, then the end of each stage log (the terminal only names them)."""
    text = f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    logs = sorted((out / "stages").glob("*.log"), key=lambda p: p.stat().st_mtime) if out else []
    for log in logs[-2:]:  # the failed stage's log is the last one written
        text += f"\n--- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
    return text


def _onbrand_run(
    onbrand: Path, cfg_path: Path, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(onbrand), "run", str(cfg_path)], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, _log(proc, cfg_path.parent / "run")
    return proc
