"""Optional pairwise LLM-as-judge with position swap (MT-Bench style). Off by default on CPU.

Each prompt is judged twice, with the two answers in both orders. Aligned wins only when it wins
both times, loses only when it loses both times; inconsistent verdicts (position bias) and
unparsable replies count as ties (0.5).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from onbrand.eval.engines.base import Request, Sampling
from onbrand.eval.metrics.stats import mean_ci

JUDGE_TEMPLATE = """You are judging two answers written for the brand below.

Brand guidelines:
{brand}

Question:
{question}

[Answer A]
{a}

[Answer B]
{b}

Which answer is better for this brand: more helpful, on-voice and within the rules? Reply with
exactly one letter: A or B."""

_VERDICT = re.compile(r"\b([AB])\b")


def parse_verdict(text: str) -> str | None:
    m = _VERDICT.search(text.strip())
    return m.group(1) if m else None


def judge(
    engine,
    prompts,
    aligned,
    base,
    brand_text: str,
    adapter: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pairwise win rate of aligned over base by a judge model served by ``engine``."""
    reqs = []
    for p, a, b in zip(prompts, aligned, base):
        question = next((m["content"] for m in reversed(p) if m["role"] == "user"), "")
        for first, second in ((a, b), (b, a)):
            text = JUDGE_TEMPLATE.format(brand=brand_text, question=question, a=first, b=second)
            reqs.append(Request([{"role": "user", "content": text}], adapter=adapter))
    outs = engine.generate(reqs, Sampling(max_new_tokens=4))
    verdicts = [parse_verdict(g.text) for g in outs]
    scores, consistent, unparsable = [], 0, 0
    for i in range(0, len(verdicts), 2):
        v1, v2 = verdicts[i], verdicts[i + 1]  # v1: aligned shown as A; v2: aligned shown as B
        unparsable += (v1 is None) + (v2 is None)
        aligned_first, aligned_second = v1 == "A", v2 == "B"
        base_first, base_second = v1 == "B", v2 == "A"
        if aligned_first and aligned_second:
            scores.append(1.0)
            consistent += 1
        elif base_first and base_second:
            scores.append(0.0)
            consistent += 1
        else:
            scores.append(0.5)
    s = np.asarray(scores)
    return {
        "win_rate": mean_ci(s, n_boot=n_boot, seed=seed).to_dict(),
        "consistency": consistent / max(len(scores), 1),
        "unparsable": unparsable,
        "verdicts": verdicts,
    }
