"""The pairwise LLM judge as a metric family (``metrics.judge``); the judge itself is
``onbrand.eval.judge``, prepared by the runner before generation (endpoint reachable, not the
policy judging itself) and run here on the answers."""

from __future__ import annotations

from typing import Any

from onbrand.eval.metrics.registry import RATE_NULL, EvalContext, Metric, fmt_ci, log, register, row, side
from onbrand.eval.report_sections import judge_md

INVALID_WARN = 0.2  # warn when more than this share of the judge's answers were invalid


def _compute(ctx: EvalContext) -> None:
    judge, cfg = ctx.judge, ctx.cfg
    if judge is None:  # not prepared (run_eval always prepares it when metrics.judge is on)
        return
    log(f"LLM judge: {2 * len(ctx.chats)} verdicts from {judge.backend.describe().get('model')}")
    j = judge.run(ctx.card, ctx.chats, ctx.aligned_texts, ctx.base_texts, ctx.channels, ctx.metrics.get("rewards"),
                  cfg.bootstrap, cfg.ci, cfg.seed)  # fmt: skip
    ctx.metrics["judge"] = j
    ctx.metrics.setdefault("timings", {})["judge_s"] = j["cost"]["seconds"]
    if j["invalid_rate"] > INVALID_WARN:
        ctx.warnings.append(f"LLM judge: {j['invalid_answers']} of {2 * j['n_items']} answers were invalid "
                            f"({j['invalid_kinds']}); its win rate covers {j['n_valid']} of {j['n_items']} prompts")  # fmt: skip


def _rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    j = m["judge"]
    self_note = " — ⚠ self-judged" if j.get("self_judged") else ""
    consistency = "—" if j["consistency"] is None else f"{j['consistency']:.2f}"
    return [row("LLM judge win rate (position-swapped)", "—", fmt_ci(j["win_rate"]), f"consistency {consistency}",
                side(j["win_rate"], RATE_NULL) if j["win_rate"] else "inconclusive",
                f"{j['n_valid']}/{j['n_items']} valid, judge `{j['judge'].get('model')}`{self_note}")]  # fmt: skip


register(Metric("judge", order=70, compute=_compute, default=False, rows=((50, _rows),),
                help="pairwise LLM judge with position swap (`judge:` says which judge)",
                section=(30, lambda m: judge_md(m["judge"])),
                sample_fields=lambda m, i: {"judge": m["judge"]["labels"][i]}))  # fmt: skip
