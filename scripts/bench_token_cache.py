"""Benchmark: tokenising the demo snapshot cold vs loading it from the token cache.

    OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false python scripts/bench_token_cache.py --repeats 5

In one process, with the embedded model's tokenizer and the demo configs (configs/sft, dpo and
reward demo.yaml: brand system prompt, max_length), it times ``onbrand.training.common.load_pairs``
-- what a stage pays before building its model -- for:

- ``dpo cold`` / ``dpo hit``: the DPO config (train + dev) with an empty cache, then a warm one;
- ``reward cold`` / ``reward hit``: the same for the reward config (judge + dev);
- ``pipeline off`` vs ``pipeline cached``: SFT, DPO and the reward model one after the other with
  the cache off (every stage tokenises) and with an empty cache (each split tokenised once);
- ``snapshot read``: ``load_snapshot`` alone, the part of every row that is not tokenisation.

Repeats are interleaved (machine load drifts hit every variant alike); medians are reported. It
also checks that the three demo configs produce the same cache key for the dev split (they agree
on tokenizer, chat template, system prompt and max_length). Writes bench/results/token_cache.json
and token_cache.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "sft": "configs/sft/demo.yaml",
    "dpo": "configs/dpo/demo.yaml",
    "reward": "configs/reward/demo.yaml",
}


def stage_inputs():
    """{stage: (cfg, tokenizer, system prompt, need_rejected)} for the three demo configs."""
    from onbrand.config import load_config
    from onbrand.models import load_tokenizer
    from onbrand.training.common import brand_prompt
    from onbrand.training.dpo import DPOConfig
    from onbrand.training.reward_model import RewardConfig
    from onbrand.training.sft import SFTConfig

    classes = {"sft": SFTConfig, "dpo": DPOConfig, "reward": RewardConfig}
    out = {}
    for stage, path in CONFIGS.items():
        cfg = load_config(classes[stage], str(REPO / path))
        cfg.data.snapshot = str(REPO / cfg.data.snapshot)
        out[stage] = (
            cfg,
            load_tokenizer(cfg.model),
            brand_prompt(str(REPO / cfg.data.brand))[0],
            stage != "sft",
        )
    return out


def load(stage_input, tokens: dict | None = None) -> float:
    """Seconds of one ``load_pairs`` (quiet) with the current $ONBRAND_TOKEN_CACHE."""
    from onbrand.training.common import load_pairs

    cfg, tok, sp, need_rejected = stage_input
    t0 = time.perf_counter()
    load_pairs(cfg.data, tok, sp, cfg.train.max_length, need_rejected, tokens=tokens, quiet=True)
    return time.perf_counter() - t0


def one_repeat(inputs, scratch: Path, rep: int) -> dict[str, float]:
    """Every variant once (fresh cache directories); returns {variant: seconds}."""
    from onbrand.data.snapshot import load_snapshot
    from onbrand.training import token_cache

    got: dict[str, float] = {}
    for stage in ("dpo", "reward"):
        os.environ[token_cache.ENV] = str(scratch / f"{stage}-{rep}")
        got[f"{stage} cold"] = load(inputs[stage])
        got[f"{stage} hit"] = load(inputs[stage])
    os.environ[token_cache.ENV] = "off"
    got["pipeline off"] = sum(load(inputs[s]) for s in ("sft", "dpo", "reward"))
    os.environ[token_cache.ENV] = str(scratch / f"pipeline-{rep}")
    got["pipeline cached"] = sum(load(inputs[s]) for s in ("sft", "dpo", "reward"))
    t0 = time.perf_counter()
    load_snapshot(inputs["dpo"][0].data.snapshot)
    got["snapshot read"] = time.perf_counter() - t0
    return got


def dev_keys_agree(inputs, scratch: Path) -> dict[str, str]:
    """The dev split's cache key under each demo config (equal keys = a shared hit)."""
    from onbrand.training import token_cache

    os.environ[token_cache.ENV] = str(scratch / "keys")
    keys = {}
    for stage, inp in inputs.items():
        tokens: dict = {}
        load(inp, tokens)
        keys[stage] = tokens["dev"]["key"]
    return keys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from onbrand.training import token_cache

    load_before = os.getloadavg()
    inputs = stage_inputs()
    scratch = Path(tempfile.mkdtemp(prefix="bench-tokens-"))
    try:
        keys = dev_keys_agree(inputs, scratch)
        token_cache.STATS.reset()
        runs = []
        for rep in range(args.repeats):
            runs.append(one_repeat(inputs, scratch, rep))
            print(
                f"[{rep + 1}/{args.repeats}] " + ", ".join(f"{k} {v:.3f} s" for k, v in runs[-1].items()),
                flush=True,
            )
        stats = token_cache.STATS.as_dict()
        counts = {
            stage: {
                "train_split": inp[0].data.train_split,
                "pairs": sum(len(x) for x in _pairs(inp)),
            }
            for stage, inp in inputs.items()
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_results(args, runs, keys, stats, counts, load_before, os.getloadavg())
    return 0


def _pairs(inp):
    from onbrand.training.common import load_pairs

    cfg, tok, sp, need_rejected = inp
    return load_pairs(cfg.data, tok, sp, cfg.train.max_length, need_rejected, quiet=True)[:2]


def write_results(args, runs, keys, stats, counts, load_before, load_after) -> None:
    from onbrand.artifacts import atomic_write_json, atomic_write_text, environment_record

    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    command = (
        "OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false python scripts/bench_token_cache.py "
        f"--repeats {args.repeats}"
    )
    agree = len(set(keys.values())) == 1
    record = {
        "name": "token_cache",
        "command": command,
        "snapshot": "runs/demo/snapshot",
        "tokenizer": "embedded:smollm2-135m-instruct",
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "environment": environment_record(),
        "repeats": args.repeats,
        "pairs": counts,
        "dev_keys": keys,
        "dev_keys_agree": agree,
        "stats_over_repeats": stats,
        "median_s": med,
        "runs": runs,
    }
    out = Path(args.out)
    atomic_write_json(out / "token_cache.json", record)
    env = record["environment"]
    lines = [
        "## Token cache: tokenising the demo snapshot cold vs a cache hit",
        "",
        f"{env['created_at']}, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before / "
        f"{load_after[0]:.2f} after (1 min); embedded tokenizer, demo configs; `load_pairs` seconds, "
        f"median of {args.repeats} interleaved repeats.",
        "",
        "```",
        command,
        "```",
        "",
        "| what | pairs | cold (s) | cache hit (s) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for stage in ("dpo", "reward"):
        cold, hit = med[f"{stage} cold"], med[f"{stage} hit"]
        lines.append(
            f"| {stage} demo config | {counts[stage]['pairs']} | {cold:.3f} | {hit:.3f} | {cold / hit:.1f}x |"
        )
    off, cached = med["pipeline off"], med["pipeline cached"]
    total = sum(c["pairs"] for c in counts.values())
    lines += [
        f"| SFT + DPO + reward, cache off vs empty cache | {total} | {off:.3f} | {cached:.3f} | {off / cached:.1f}x |",
        "",
        f"`load_snapshot` alone (read in every row above): {med['snapshot read']:.3f} s. Dev-split cache key "
        f"under the SFT, DPO and reward demo configs: {'the same' if agree else 'DIFFERENT'} "
        f"({next(iter(keys.values()))[:12]}{'' if agree else ', ...'}). In the pipeline the reward model "
        "trains on the judge split, which only it reads: its dev split is a hit, its judge split is tokenised.",
        "",
    ]
    atomic_write_text(out / "token_cache.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
