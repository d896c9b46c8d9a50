"""Collect RL-vs-DPO eval reports of the demo into one table (bench/results/rl_demo.{json,md}).

Each RL candidate is trained with ``onbrand train rl --config configs/rl/demo.yaml out_dir=... [overrides]``
and compared with the DPO model by ``onbrand eval --config configs/eval/demo.yaml
base_model=runs/demo/export aligned=<rl run>/stage_adapter split=<dev|test> out_dir=<eval dir>`` (the
export is the DPO model merged; the RL stage adapter is relative to it). This script only reads the
eval reports and the RL runs' configs:

    python -P scripts/rl_demo_table.py NAME=EVAL_DIR:RL_RUN_DIR [...] [--title TEXT]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ROWS = (
    "Reward-model win rate",
    "Length-controlled win rate",
    "Brand compliance (all rules pass)",
    "Brand-voice similarity",
    "Mean response tokens",
    "Perplexity, general text (lower = better)",
)
CONFIG_KEYS = ("train.max_steps", "rollout.max_new_tokens", "rl.beta", "rewards")


def candidate(spec: str) -> dict:
    name, _, dirs = spec.partition("=")
    eval_dir, _, rl_dir = dirs.partition(":")
    report = json.loads((Path(eval_dir) / "report.json").read_text())
    cfg = yaml.safe_load((Path(rl_dir) / "config.yaml").read_text())
    settings = {k: _get(cfg, k) for k in CONFIG_KEYS}
    rows = {r["metric"]: r for r in report["verdict_rows"]}
    # The eval cannot trace a bare stage adapter's lineage; check the judge's independence here.
    policy = json.loads((Path(rl_dir) / "run.json").read_text())["data"]
    judge = json.loads((Path(report["inputs"]["reward"]) / "run.json").read_text())["data"]
    judge_check = {
        "judge": report["inputs"]["reward"], "judge_split": judge["split"], "judge_records": len(judge["record_ids"]),
        "policy_split": policy["split"], "policy_records": len(policy["record_ids"]),
        "overlap": len(set(judge["record_ids"]) & set(policy["record_ids"])),
    }  # fmt: skip
    return {
        "name": name, "eval_dir": eval_dir, "rl_run": rl_dir, "split": report["config"].get("split"),
        "n_prompts": report["inputs"].get("n_prompts"), "verdict": report["verdict"], "settings": settings,
        "judge": judge_check,
        "rows": {m: {k: rows[m][k] for k in ("base", "aligned", "delta", "better")} for m in ROWS if m in rows},
    }  # fmt: skip


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg.get(part, {}) if isinstance(cfg, dict) else {}
    return cfg


def markdown(cands: list[dict], title: str) -> str:
    lines = [f"## {title}", "", f"Collected {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by `python -P scripts/rl_demo_table.py`.",
             "Base side: the DPO model (runs/demo/export, merged); aligned side: the RL stage adapter on it.", ""]  # fmt: skip
    for c in cands:
        s, j = c["settings"], c["judge"]
        lines.append(
            f"- **{c['name']}** ({c['split']}, {c['n_prompts']} prompts): {s['train.max_steps']} steps, "
            f"max_new_tokens {s['rollout.max_new_tokens']}, beta {s['rl.beta']}, rewards "
            + ", ".join(f"{r['kind']} x{r['weight']}" for r in s["rewards"])
            + f". Verdict: {c['verdict'].rstrip('.')}. Judge: the reward model {j['judge']} (trained on the "
            f"{j['judge_split']} split, {j['judge_records']} records; the RL prompts: {j['policy_records']} "
            f"{j['policy_split']} records; overlap {j['overlap']})."
        )
    lines += ["", "| metric | " + " | ".join(f"{c['name']} ({c['split']})" for c in cands) + " |",
              "| --- |" + " --- |" * len(cands)]  # fmt: skip
    for m in ROWS:
        cells = []
        for c in cands:
            r = c["rows"].get(m)
            if r is None:
                cells.append("-")
            elif r["base"] in ("—", "-"):  # a paired metric: RL vs DPO in one number
                cells.append(f"{r['aligned']} ({r['delta']}, {r['better']})")
            else:
                cells.append(f"DPO {r['base']} -> RL {r['aligned']} ({r['delta']}, {r['better']})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", nargs="+", help="NAME=EVAL_DIR:RL_RUN_DIR")
    ap.add_argument("--title", default="RL vs DPO on the demo (dev: tuning; test: read once)")
    ap.add_argument("--out", default="bench/results/rl_demo")
    args = ap.parse_args(argv)
    cands = [candidate(s) for s in args.candidates]
    out = REPO / args.out
    out.with_suffix(".json").write_text(json.dumps(cands, indent=2) + "\n")
    md = markdown(cands, args.title)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
