"""report.md sections for the LLM judge and the blind human A/B round (their metric families,
``onbrand.eval.metrics.llm_judge`` and ``human_ab``, register these).

Every value shown here is in ``report.json`` under ``metrics.judge`` / ``metrics.human``.
"""

from __future__ import annotations

import html
from typing import Any

from onbrand.eval.metrics.agreement import HUMAN_JUDGES
from onbrand.eval.metrics.registry import fmt_ci as _est


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def judge_md(j: dict[str, Any]) -> list[str]:
    c, ag, who = j["cost"], j.get("agreement_reward"), j["judge"]
    where = f"{who['backend']}" + (f", {html.escape(str(who['endpoint']))}" if who.get("endpoint") else "")
    rows = [
        ("Win rate of aligned (items valid in both orders; ties 1/2)", f"{_est(j['win_rate'])} on {j['n_valid']} of {j['n_items']} prompts"),
        ("Aligned / tie / base", f"{j['counts']['aligned']} / {j['counts']['tie']} / {j['counts']['base']}"),
        ("Position consistency", f"{_pct(j['consistency'])} of valid items got the same verdict in both orders"),
        ("First-position rate", f"{_pct(j['first_position_rate'])} of decisive verdicts picked answer A (0.5 = no position bias)"),
        ("Invalid answers", f"{j['invalid_answers']} of {2 * j['n_items']} ({_pct(j['invalid_rate'])})"
                            + (f": {html.escape(str(j['invalid_kinds']))}" if j["invalid_kinds"] else "")),
        ("Agreement with the reward model", "—" if not ag or not ag["n"] else
         f"accuracy {_est(ag['accuracy'])}, Cohen's kappa {_est(ag['kappa'])} on {ag['n']} items"),
        ("Cost", f"{c['seconds']} s; {c['sent']} requests sent, {c['cache_hits']} from the cache, {c['attempts']} attempts; "
                 f"{c['prompt_tokens']} prompt + {c['completion_tokens']} completion tokens"
                 + (f"; latency p50 {c['latency_p50_s']} s, p95 {c['latency_p95_s']} s" if c.get("latency_p50_s") else "")),
    ]  # fmt: skip
    out = [
        "",
        "## LLM judge (pairwise, both orders)",
        "",
        f"Judge `{html.escape(str(who.get('model')))}` ({where}); answer format `{j['output']}`, guided decoding: "
        f"{j['structured'] or 'off'}, rubric v{j['rubric_version']} rendered from the brand card. Each prompt "
        "is judged twice with the answers swapped; a pair of verdicts that disagree counts as a tie (MT-Bench); an "
        "unparseable answer makes the prompt invalid (counted, never guessed). The judge saw the prompts and the two "
        "answers, never which model wrote which.",
    ]
    if j.get("self_judged"):
        out += ["", f"⚠ **Self-judged**: {html.escape(j['self_judged'])} (judge.allow_self=true)."]
    out += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return out


def _agreement_line(ag: dict[str, Any]) -> str:
    alpha = ag.get("krippendorff_alpha")
    pairs = ", ".join(
        f"{' & '.join(html.escape(a) for a in k['annotators'])} {k['kappa'] if k['kappa'] is not None else '—'} ({k['items']} items)"
        for k in ag.get("cohen_kappa", [])
    )
    return (f"Krippendorff's alpha {alpha if alpha is not None else '—'} on {ag['items_overlapping']} items judged by "
            f"two or more people; percent agreement {_pct(ag.get('percent_agreement'))}"
            + (f"; Cohen's kappa per pair: {pairs}" if pairs else ""))  # fmt: skip


def human_md(h: dict[str, Any]) -> list[str]:
    v, mj = h["votes"], h["majority"]
    out = [
        "",
        "## Human A/B round (blind)",
        "",
        f"Project `{html.escape(h['project'])}`: {h['n_published']} answer pairs published, {h['n_items']} judged by "
        f"{len(h['annotators'])} annotators ({h['n_judgements']} judgements). Which side held the aligned answer was "
        "drawn per item and the left/right order per annotator; annotators never saw which model wrote which. "
        'Win rate = mean over items of each item\'s mean vote (aligned 1, tie 1/2, base 0); "both bad" votes are '
        "counted apart and left out; CI by bootstrap over items.",
        "",
        "| | |",
        "|---|---|",
        f"| Human win rate of aligned | {_est(h['win_rate'])} on {h['n_scored_items']} items |",
        f"| Votes aligned / tie / base / both bad | {v['aligned']} / {v['tie']} / {v['base']} / {v['both_bad']} |",
        f"| Item majority aligned / tie / base / both bad / none | {mj['aligned']} / {mj['tie']} / {mj['base']} / "
        f"{mj['both_bad']} / {mj['none']} |",
        f"| Inter-annotator agreement | {_agreement_line(h['agreement'])} |",
    ]
    if h.get("not_published"):
        out.append(f"| Not published | {html.escape(str(h['not_published']))} |")
    out += [
        "",
        "Each automatic judge against the human majority (items with a strict majority of aligned, tie or base):",
        "",
        "| Judge | Items | Accuracy | Cohen's kappa |",
        "|---|---|---|---|",
    ]
    for key, ag in h["judges"].items():
        out.append(
            f"| {HUMAN_JUDGES.get(key, key)} | {ag['n']} | {_est(ag['accuracy'])} | {_est(ag['kappa'])} |"
        )
    if h.get("skipped_judges"):
        out += [
            "",
            "Not compared: "
            + "; ".join(f"{HUMAN_JUDGES.get(k, k)} ({v})" for k, v in h["skipped_judges"].items()),
        ]
    return out
