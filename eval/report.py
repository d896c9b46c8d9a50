"""The report dir: ``report.json`` (everything), ``report.md`` (verdict first), PNGs, ``samples.jsonl``.

The first screen of ``report.md`` is the verdict: one line, then one row per metric with base,
aligned, the difference and its 95% CI, and which side is better ("inconclusive" when the CI
covers no difference).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_dir, atomic_write_json, atomic_write_text, environment_record
from onbrand.eval.independence import JUDGE_SAW_TRAINING
from onbrand.eval.metrics.registry import primary_ranks, sample_fields, sections_md, table_rows
from onbrand.eval.plots import plot_adversarial, plot_compliance, plot_rewards, plot_win_rates


def verdict_rows(m: dict[str, Any], judge: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """One row per metric (each registered family says its rows and their place in the table)."""
    return table_rows(m, judge)


def headline(m: dict[str, Any], rows: list[dict[str, str]]) -> tuple[bool | None, str]:
    """Aligned is better when the primary pairwise rate (the human win rate, else LC win rate, else
    raw, else compliance: the families' ``primary`` ranks) favours it and nothing else regressed."""
    by = {r["metric"]: r["better"] for r in rows}
    ranks = primary_ranks()
    primary = min((k for k in by if k in ranks), key=ranks.__getitem__, default=None)
    if primary is None:
        return None, "no pairwise metric was computed (no reward model and no brand card)"
    regress = [k for k, v in by.items() if v == "base" and k != primary]
    wins = [k for k, v in by.items() if v == "aligned"]
    better = by[primary] == "aligned" and not regress
    text = (
        "ALIGNED IS BETTER"
        if better
        else ("ALIGNED IS NOT BETTER" if by[primary] != "inconclusive" or regress else "NO CLEAR DIFFERENCE")
    )
    parts = [f"primary metric: {primary.lower()} → {by[primary]}"]
    if wins:
        parts.append("aligned better on: " + ", ".join(w.lower() for w in wins))
    if regress:
        parts.append("worse on: " + ", ".join(r.lower() for r in regress))
    return better, f"**{text}** — " + "; ".join(parts) + "."


def summary(rows: list[dict[str, str]]) -> dict[str, str]:
    """Flat ``{metric: "base -> aligned (better)"}`` strings: the headline numbers at a glance."""
    out = {}
    for r in rows:
        if r["base"] == "—":
            out[r["metric"]] = f"{r['aligned']} ({r['better']})"
        else:
            out[r["metric"]] = f"{r['base']} -> {r['aligned']} ({r['better']})"
    return out


def _gate_md(gate: dict[str, Any]) -> list[str]:
    status = "PASSED" if gate["passed"] else "FAILED"
    out = ["", f"**Release gate `{gate['config']}`: {status}**", ""]
    for c in gate["checks"]:
        value = f"{c['value']:.4f}" if isinstance(c["value"], float) else c["value"]
        value = ", ".join(value) if isinstance(value, list) else value
        out.append(
            f"- {'✅' if c['passed'] else '❌'} `{c['name']}` = {html.escape(str(value))} ({html.escape(c['detail'])})"
        )
    return out


def _md_table(rows: list[dict[str, str]]) -> str:
    lines = ["| Metric | Base | Aligned | Δ / detail | Better | Note |", "|---|---|---|---|---|---|"]
    for r in rows:
        mark = {"aligned": "✅ aligned", "base": "❌ base", "inconclusive": "≈ inconclusive"}.get(
            r["better"], r["better"]
        )
        lines.append(
            f"| {r['metric']} | {r['base']} | {r['aligned']} | {r['delta']} | {mark} | {r['note']} |"
        )
    return "\n".join(lines)


def _sampling_line(s: dict[str, Any]) -> str:
    how = "greedy" if not s["temperature"] else f"temperature {s['temperature']}, top_p {s['top_p']}"
    return (f"Decoding (base and aligned alike): {how}, repetition penalty {s.get('repetition_penalty', 1.0)}, "
            f"n {s['n']}, seed {s['seed']}, max_new_tokens {s['max_new_tokens']}.")  # fmt: skip


def power_md(pw: dict[str, Any]) -> str:
    """One paragraph: the minimum detectable win-rate difference and, for an inconclusive win
    rate, the prompts an effect of the observed size would need."""
    mdd = pw["min_detectable_diff"]
    reach = (f"a win rate of {pw['min_detectable_win_rate']:.3f}" if mdd < 0.5
             else "more than any win rate can show: far too few prompts")  # fmt: skip
    out = [f"Power: with {pw['n_prompts']} test prompts the smallest win-rate difference from 0.5 this eval "
           f"detects (two-sided 95%, 80% power, normal approximation) is ±{mdd:.3f} ({reach})."]  # fmt: skip
    names = {"win_rate": "reward-model win rate", "lc_win_rate": "length-controlled win rate",
             "judge_win_rate": "LLM judge win rate", "human_win_rate": "human win rate"}  # fmt: skip
    for key, r in pw["rates"].items():
        if not r["inconclusive"]:
            continue
        if r["prompts_needed"] is None:
            out.append(f"The {names.get(key, key)} is inconclusive and exactly 0.5: no effect to resolve.")
        else:
            out.append(f"The {names.get(key, key)} is inconclusive: an effect of the observed size "
                       f"({r['effect']:.3f}) would need about {r['prompts_needed']} test prompts to resolve.")  # fmt: skip
    return " ".join(out)


def verdict(
    metrics: dict[str, Any], judge: dict[str, Any] | None
) -> tuple[list[dict], bool | None, str, str]:
    """(rows, aligned better?, verdict line, verdict Markdown) from the metrics."""
    rows = verdict_rows(metrics, judge)
    better, line = headline(metrics, rows)
    if judge and judge.get("overlap") and "win_rate" in metrics:
        line += (
            f" ⚠ The win rate is not independent: {JUDGE_SAW_TRAINING} ({judge['overlap']} shared records)."
        )
    return rows, better, line, f"{line}\n\n{_md_table(rows)}"


def verdict_notes(metrics: dict[str, Any], cfg_dict: dict[str, Any]) -> list[str]:
    """Under the table (after the gate in report.md): how much the test size can show, and the decoding."""
    return ([power_md(metrics["power"])] if "power" in metrics else []) + [
        _sampling_line(cfg_dict["sampling"])
    ]


def build_report(
    cfg, aligned, ps, chats, base_gen, al_gen, metrics, warnings, engine_kind, cfg_dict, judge=None
) -> dict[str, Any]:
    rows, better, line, md = verdict(metrics, judge)
    notes = verdict_notes(metrics, cfg_dict)
    return {
        "judge_independence": judge,
        "verdict": line.replace("**", ""),  # one plain line, e.g. for the pipeline's final table
        "aligned_better": better,
        "summary": summary(rows),
        "verdict_rows": rows,
        "verdict_markdown": md,
        "verdict_notes": notes,
        "metrics": metrics,
        "warnings": warnings,
        "inputs": {
            "base_model": aligned.base_model,
            "aligned": {
                "kind": aligned.kind,
                "path": str(aligned.path),
                "run_id": (aligned.run or {}).get("run_id"),
            },
            "reference": str(aligned.reference_adapter or "base model"),
            "prompts": ps.source,
            "n_prompts": len(chats),
            "n_pairs": len(ps.pairs),
            "brand": cfg.brand,
            "reward": cfg.reward,
            "engine": engine_kind,
            "sampling": cfg_dict["sampling"],
        },
        "config": cfg_dict,
        "environment": environment_record(),
    }


def _cell(text: str, limit: int = 400) -> str:
    """User/model text in a Markdown table cell: HTML-escaped, pipes and newlines neutralised."""
    text = text if len(text) <= limit else text[:limit] + " …"
    return html.escape(text).replace("|", "&#124;").replace("\n", "<br>")


def _samples_md(rows: list[dict[str, Any]], k: int) -> str:
    """The first ``k`` rows of ``samples.jsonl`` side by side (rewards under the answers when scored)."""
    lines = ["| # | Prompt | Base | Aligned |", "|---|---|---|---|"]
    for i, row in enumerate(rows[:k]):
        b, a = _cell(row["base"][0]), _cell(row["aligned"][0])
        if "base_reward" in row:
            b += f"<br>*reward {row['base_reward']:.2f}*"
            a += f"<br>*reward {row['aligned_reward']:.2f}*"
        lines.append(f"| {i + 1} | {_cell(row['prompt'][-1]['content'], 200)} | {b} | {a} |")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], plots: list[str], samples_md: str) -> str:
    inp, m = report["inputs"], report["metrics"]
    out = [
        "# Eval report: aligned vs base",
        "",
        report["verdict_markdown"],
    ]
    if report.get("gate"):
        out += _gate_md(report["gate"])
    for note in report.get("verdict_notes", []):
        out += ["", note]
    out += [
        "",
        f"Base `{inp['base_model']}` vs aligned `{inp['aligned']['path']}` ({inp['aligned']['kind']}), "
        f"{inp['n_prompts']} prompts from `{inp['prompts']}`, engine `{inp['engine']}`. "
        "Intervals are 95% bootstrap CIs over prompts.",
    ]
    if report["warnings"]:
        out += ["", "**Warnings**", ""] + [f"- ⚠ {html.escape(w)}" for w in report["warnings"]]
    if m.get("skipped"):
        out += ["", "Not computed: " + "; ".join(f"{k} ({v})" for k, v in m["skipped"].items())]
    out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    ji = report.get("judge_independence")
    if ji:
        out += ["", f"Judge independence: {html.escape(ji['detail'])} (judge `{ji['judge']}`)."]
    out += sections_md(m)
    out += [
        "",
        "## Side-by-side samples",
        "",
        samples_md,
        "",
        "All samples: `samples.jsonl`. Everything: `report.json`.",
    ]
    if "timings" in m:
        out += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in m["timings"].items())]
    return "\n".join(out) + "\n"


def write_report(out: Path, report, ps, chats, base_gen, al_gen, k: int, adversarial_rows=None) -> None:
    m = report["metrics"]
    lengths = {
        "base": [len(g.token_ids[0]) for g in base_gen],
        "aligned": [len(g.token_ids[0]) for g in al_gen],
    }
    with atomic_dir(out) as tmp:
        plots = []
        if plot_win_rates(m, tmp / "win_rates.png"):
            plots.append("win_rates.png")
        if plot_rewards(m, lengths, tmp / "rewards_hist.png", tmp / "length_vs_reward.png"):
            plots += ["rewards_hist.png", "length_vs_reward.png"]
        if plot_compliance(m, tmp / "compliance.png"):
            plots.append("compliance.png")
        if plot_adversarial(m, tmp / "adversarial.png"):
            plots.append("adversarial.png")
        if adversarial_rows:
            adv = [json.dumps(r, ensure_ascii=False) for r in adversarial_rows]
            atomic_write_text(tmp / "adversarial.jsonl", "\n".join(adv) + "\n")
        rows = sample_rows(ps, chats, base_gen, al_gen, m, lengths)
        atomic_write_text(
            tmp / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
        report["plots"] = plots
        atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "report.md", render_markdown(report, plots, _samples_md(rows, k)))


def sample_rows(ps, chats, base_gen, al_gen, m: dict[str, Any], lengths: dict[str, list[int]]) -> list[dict]:
    """One ``samples.jsonl`` row per prompt: prompt, both answers, lengths, and each judge's view."""
    rows = []
    for i, c in enumerate(chats):
        row = {"id": ps.ids[i], "channel": ps.channels[i], "prompt": c, "base": base_gen[i].texts,
               "aligned": al_gen[i].texts, "base_tokens": lengths["base"][i], "aligned_tokens": lengths["aligned"][i]}  # fmt: skip
        row.update(sample_fields(m, i))
        rows.append(row)
    return rows


def read_samples(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / "samples.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rerender(out: Path, report: dict[str, Any]) -> None:
    """Rewrite ``report.json`` and ``report.md`` of an existing report dir (after a human round):
    the verdict is recomputed from the metrics, the samples come from ``samples.jsonl``."""
    out = Path(out)
    rows, better, line, md = verdict(report["metrics"], report.get("judge_independence"))
    report.update(verdict=line.replace("**", ""), aligned_better=better, summary=summary(rows), verdict_rows=rows,
                  verdict_markdown=md, verdict_notes=verdict_notes(report["metrics"], report["config"]))  # fmt: skip
    k = int(report.get("config", {}).get("samples_in_report", 6))
    atomic_write_json(out / "report.json", report)
    atomic_write_text(
        out / "report.md", render_markdown(report, report.get("plots", []), _samples_md(read_samples(out), k))
    )
