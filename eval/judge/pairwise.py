"""The pairwise LLM judge metric: aligned vs base, both answer orders per prompt (MT-Bench style).

Per prompt the judge sees (aligned, base) as (A, B) and then as (B, A). Each order's verdict is
mapped to ``aligned | base | tie``; the item's label is that verdict when both orders agree, and
``tie`` when they disagree (position bias). An unparseable answer in either order makes the item
invalid: it is counted and left out of the win rate, never guessed. Win rate = mean over valid
items of 1 (aligned), 0.5 (tie), 0 (base), with a bootstrap CI over prompts.

:func:`prepare` runs before any generation (fail fast): it builds the backend, asks an endpoint
which models it serves and refuses a judge that is the policy's own base model (or the aligned
model) unless ``judge.allow_self``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onbrand.artifacts import sha256_json
from onbrand.eval.judge.backends import JudgeSetupError, Reply, Usage, make_backend
from onbrand.eval.judge.cache import VerdictCache, default_path, verdict_key
from onbrand.eval.judge.rubric import RUBRIC_VERSION, judge_messages, parse_verdict, render_rubric
from onbrand.eval.metrics.agreement import SCORE, agreement, labels_from_scores
from onbrand.models import resolve_model
from onbrand.stats.ci import mean_ci

SELF_JUDGED = "self-judged"
# Verdict in each order -> label. Order 0 shows aligned as A, order 1 shows base as A.
_MAP = ({"A": "aligned", "B": "base", "tie": "tie"}, {"A": "base", "B": "aligned", "tie": "tie"})


def _same_model(a: str | Path | None, b: str | Path | None) -> bool:
    if not a or not b:
        return False
    if str(a) == str(b):
        return True
    pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def self_check(backend, aligned) -> str | None:
    """Why the judge is the policy's base (or aligned) model, or ``None``."""

    names = {"the policy's base model": aligned.base_model, "the aligned model": aligned.path}
    try:
        names["the policy's base model (resolved)"] = resolve_model(aligned.base_model, convert=False)
    except ValueError:
        pass
    judge = [getattr(backend, "root", None), getattr(backend, "model", None), getattr(backend, "path", None)]
    for what, ref in names.items():
        if any(_same_model(j, ref) for j in judge if j is not None):
            return f"the judge ({backend.describe().get('model')}) is {what}"
    return None


@dataclass
class Judge:
    """A prepared judge: ``run(...)`` returns ``metrics["judge"]``."""

    cfg: Any
    backend: Any
    self_judged: str | None

    def run(self, card, chats, aligned: list[str], base: list[str], channels, rewards=None,
            n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:  # fmt: skip
        if card is None:
            raise JudgeSetupError(
                "the LLM judge needs a brand card (brand: configs/brands/<id>.yaml) for its rubric"
            )
        rubric = render_rubric(card)
        # Per prompt: aligned shown as A, then as B.
        chats_out = [judge_messages(rubric, card.name, p, x, y, ch, self.cfg.output)
                     for p, a, b, ch in zip(chats, aligned, base, channels) for x, y in ((a, b), (b, a))]  # fmt: skip
        t0 = time.perf_counter()
        replies, usage, hits = self._ask(chats_out)
        seconds = time.perf_counter() - t0
        verdicts = [parse_verdict(r.text) for r in replies]
        out = aggregate(verdicts, len(chats), n_boot, ci, seed)
        if rewards is not None:
            rm = labels_from_scores(rewards["aligned"], rewards["base"])
            out["agreement_reward"] = agreement(out["labels"], rm, n_boot, ci, seed)
        errors = Counter(r.error for r, v in zip(replies, verdicts) if v is None and r.error)
        unparsed = sum(1 for r, v in zip(replies, verdicts) if v is None and not r.error)
        out.update(
            judge=self.backend.describe(), rubric_version=f"{RUBRIC_VERSION}-{sha256_json(rubric)[:8]}",
            output=self.cfg.output, structured=getattr(self.backend, "structured", None),
            self_judged=self.self_judged,
            invalid_kinds={**dict(errors), **({"unparseable": unparsed} if unparsed else {})},
            cost={"seconds": round(seconds, 2), "requests": len(chats_out), "cache_hits": hits,
                  "sent": len(chats_out) - hits, "attempts": usage.attempts, "prompt_tokens": usage.prompt_tokens,
                  "completion_tokens": usage.completion_tokens, "structured_refused": usage.structured_refused,
                  **_latency([r.seconds for r in replies if not r.cached and r.seconds])},
            raw=[r.text[:500] if r.text else None for r in replies],
        )  # fmt: skip
        return out

    def _ask(self, chats: list[list[dict]]) -> tuple[list[Reply], Usage, int]:
        """Replies in order: cached ones first, the rest from the backend (parseable ones are cached)."""
        cfg, usage = self.cfg, Usage()
        identity = self.backend.identity()
        keys = [verdict_key(identity, m, cfg.output, cfg.max_tokens, cfg.temperature) for m in chats]
        cache = VerdictCache(cfg.cache_path or default_path()) if cfg.cache else None
        try:
            stored = cache.get_many(keys) if cache else {}
            todo = [i for i, k in enumerate(keys) if k not in stored]
            fresh = self.backend.complete([chats[i] for i in todo], usage)
            replies: list[Reply | None] = [None] * len(chats)
            for i, k in enumerate(keys):
                if k in stored:
                    s = stored[k]
                    replies[i] = Reply(
                        s["text"], None, s["prompt_tokens"], s["completion_tokens"], 0, cached=True
                    )
            for i, r in zip(todo, fresh):
                replies[i] = r
                usage.attempts += r.attempts
                usage.prompt_tokens += r.prompt_tokens
                usage.completion_tokens += r.completion_tokens
                if cache and r.text is not None and parse_verdict(r.text) is not None:
                    cache.put(keys[i], r.text, r.prompt_tokens, r.completion_tokens)
        finally:
            if cache:
                cache.close()
        return replies, usage, len(chats) - len(todo)  # type: ignore[return-value]


def _latency(seconds: list[float]) -> dict[str, float | None]:
    """Median and 95th percentile of the per-request latency (seconds; requests sent this run)."""
    if not seconds:
        return {"latency_p50_s": None, "latency_p95_s": None}
    q = np.quantile(np.asarray(seconds), [0.5, 0.95])
    return {"latency_p50_s": round(float(q[0]), 3), "latency_p95_s": round(float(q[1]), 3)}


def aggregate(verdicts: list[str | None], n_items: int, n_boot: int, ci: float, seed: int) -> dict[str, Any]:
    """Item labels, win rate, position consistency and invalid counts from the 2 * n verdicts."""
    labels: list[str | None] = []
    consistent = first_pos = decisive = 0
    for i in range(n_items):
        v0, v1 = verdicts[2 * i], verdicts[2 * i + 1]
        if v0 is None or v1 is None:
            labels.append(None)
            continue
        l0, l1 = _MAP[0][v0], _MAP[1][v1]
        consistent += l0 == l1
        labels.append(l0 if l0 == l1 else "tie")
        for v in (v0, v1):
            decisive += v != "tie"
            first_pos += v == "A"
    valid = [x for x in labels if x is not None]
    n_invalid_answers = sum(v is None for v in verdicts)
    return {
        "win_rate": mean_ci([SCORE[x] for x in valid], n_boot, ci, seed).to_dict() if valid else None,
        "n_items": n_items,
        "n_valid": len(valid),
        "counts": {k: valid.count(k) for k in ("aligned", "tie", "base")},
        "consistency": consistent / len(valid) if valid else None,
        "invalid_answers": n_invalid_answers,
        "invalid_rate": n_invalid_answers / len(verdicts) if verdicts else 0.0,
        # Share of decisive verdicts that picked whichever answer was shown first (0.5 = no bias).
        "first_position_rate": first_pos / decisive if decisive else None,
        "labels": labels,
        "verdicts": [[verdicts[2 * i], verdicts[2 * i + 1]] for i in range(n_items)],
    }


def prepare(cfg, aligned, warnings: list[str]) -> Judge:
    """Backend + self-check + endpoint probe, before any generation. Raises on a judge that cannot
    run or that is the policy's own model without ``judge.allow_self``."""
    jc = cfg.judge
    opts = {"options": cfg.engine_options, "batch_size": cfg.batch_size}
    if not jc.endpoint and not jc.model and jc.allow_self:
        from dataclasses import replace

        jc = replace(jc, model=aligned.base_model)  # the old default, now only on request
    backend = make_backend(jc, cfg.engine, opts, cfg.seed)
    backend.probe()
    why = self_check(backend, aligned)
    if why and not jc.allow_self:
        raise JudgeSetupError(f"{why}: a model judging itself is biased; point judge.endpoint / judge.model at "
                              "another model, or set judge.allow_self=true (the report is then flagged)")  # fmt: skip
    if why:
        warnings.append(f"{SELF_JUDGED}: {why} (judge.allow_self=true); its win rate is not independent")
    return Judge(jc, backend, why)
