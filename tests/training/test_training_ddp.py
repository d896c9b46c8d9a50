"""2-process DDP over gloo on CPU gives the same losses and adapter as 1 process (same global batch),
with the RPO NLL term on and micro-batches of one pair in the 2-process run: the NLL is a token mean
over the global batch, so neither the rank split nor the micro-batching may change it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from onbrand.training import dpo
from onbrand.training.tracking import read_metrics


def test_ddp_two_processes_match_one(tiny_model_dir, toy_snapshot, toy_brand, tmp_path, repo_root):
    def args(out, *extra):
        return [
            "--config", "configs/dpo/demo.yaml", f"model={tiny_model_dir}", f"data.snapshot={toy_snapshot}",
            f"data.brand={toy_brand}", f"out_dir={out}", f"ref_cache_dir={tmp_path / 'cache'}", "init_from=null",
            "lora.layers=0", "lora.r=4", "lora.alpha=8", "train.max_length=96", "train.tracking.wandb=disabled",
            "train.threads=1", "train.precision=fp32", "train.batch_size=4", "train.max_steps=3", "train.lr=5e-3",
            "dpo.nll_weight=0.5", *extra,
        ]  # fmt: skip

    one, two = tmp_path / "one", tmp_path / "two"
    assert dpo.main(args(one)) == 0
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONSAFEPATH": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "onbrand.training.dpo", *args(two, "train.micro_batch_size=1")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((two / "run.json").read_text())
    assert run["world_size"] == 2  # really two processes (accelerate --cpu silently starts one)
    m1, m2 = read_metrics(one), read_metrics(two)
    assert [r["world_size"] for r in m2] == [2, 2, 2] and m1[0]["world_size"] == 1
    for a, b in zip(m1, m2):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["loss"], b["loss"])
        assert abs(a["rewards/margins"] - b["rewards/margins"]) < 1e-5
        assert abs(a["nll_loss"] - b["nll_loss"]) < 1e-5 and a["nll_loss"] > 0.1
    assert m1[-1]["loss"] != m1[0]["loss"]
    w1 = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    w2 = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=0)
