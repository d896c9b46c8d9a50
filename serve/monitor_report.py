"""The monitor's outputs: ``monitor.json`` (everything), ``monitor.md`` (verdict first; user text
escaped) and PNG time series with the release baseline's band (matplotlib, Agg backend)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from onbrand.serve.monitor import ALL, Aggregate
from onbrand.serve.monitor_checks import score_moments
from onbrand.serve.monitor_stats import Z95, rate_ci

MAX_PLOTTED_RULES = 11
MAX_MD_EXAMPLES = 20  # example exchanges in monitor.md (all of them are in monitor.json)


def md_text(text: Any, limit: int = 200) -> str:
    """User text safe inside a Markdown table cell: HTML-escaped, pipes and newlines neutralised."""
    s = str(text)
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return html.escape(s).replace("|", "&#124;").replace("\n", " ").replace("`", "&#96;")


def window_rows(agg: Aggregate, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per (window, scope)."""
    drifting: dict[tuple[str, str], list[str]] = {}
    for c in checks:
        if c["drift"]:
            drifting.setdefault((c["window"], c["scope"]), []).append(c["metric"])
    reward, voice = score_moments(agg, "reward"), score_moments(agg, "voice")
    rows = []
    for key in sorted(agg.windows, key=lambda k: (k[0], k[1] != ALL, k[1])):
        w = agg.windows[key]
        rows.append({
            "window": key[0], "scope": key[1], "n": w.n,
            "any_rule_rate": w.any_k / w.n, "length_mean": w.length.mean,
            "reward_mean": reward[key].mean if reward.get(key) and reward[key].n else None,
            "voice_mean": voice[key].mean if voice.get(key) and voice[key].n else None,
            "refusal_rate": w.refusal_k / w.n,
            "fallback_rate": w.fallback_k / w.action_n if w.action_n else None,
            "actions": dict(w.actions), "violations": dict(w.rule_k),
            "drift": sorted(drifting.get(key, [])),
        })  # fmt: skip
    return rows


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _drift_md(drift: list[dict[str, Any]]) -> list[str]:
    if not drift:
        return []
    out = ["## Drift", "", "| window | scope | metric | value | baseline / ceiling | n | p (corrected) |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in drift:
        out.append(f"| {c['window']} | {md_text(c['scope'])} | `{md_text(c['metric'])}` | {_fmt(c['value'])} | "
                   f"{_fmt(c['baseline'])} | {c['n']} | {c['p_adj']:.2g} |")  # fmt: skip
    return out + [""]


def _windows_md(rows: list[dict[str, Any]], unit: str) -> list[str]:
    out = ["## Windows (all channels)", "",
           f"| window | n | any rule failed | length ({unit}) | reward | voice | refusals | fallbacks | drift |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["scope"] != ALL:
            continue
        out.append(f"| {r['window']} | {r['n']} | {_fmt(r['any_rule_rate'])} | {_fmt(r['length_mean'], 1)} | "
                   f"{_fmt(r['reward_mean'])} | {_fmt(r['voice_mean'])} | {_fmt(r['refusal_rate'])} | "
                   f"{_fmt(r['fallback_rate'])} | {md_text(', '.join(r['drift'])) or '—'} |")  # fmt: skip
    return out + [""]


def _examples_md(result: dict[str, Any]) -> list[str]:
    flagged = {(c["window"], c["metric"][5:]) for c in result["drift"] if c["metric"].startswith("rule:")}
    any_rule = {c["window"] for c in result["drift"] if c["metric"] == "any_rule"}
    out = []
    for ex in result["examples"]:
        shown = (ex["window"], ex["rule"]) in flagged or ex["window"] in any_rule
        if not shown or len(out) >= MAX_MD_EXAMPLES + 2:
            continue
        if not out:
            out = ["## Examples from drifting windows (user text escaped, truncated)", ""]
        out.append(f"- {ex['window']} `{md_text(ex['rule'])}` ({md_text(ex['where'])}, {md_text(ex['detail'])}): "
                   f"“{md_text(ex['response'])}”")  # fmt: skip
    return out + [""] if out else []


def monitor_md(result: dict[str, Any]) -> str:
    """``monitor.md``: the verdict, the drifting checks, the windows, how it was tested."""
    corr = result["correction"]
    verdict = "**DRIFT**" if result["drift"] else "**NO DRIFT**"
    lines = [
        "# onbrand monitor", "",
        f"{verdict}: {len(result['drift'])} of {corr['family_size']} tested checks drift "
        f"({result['n_conversations']} exchanges, {result['first_ts'] or '—'} … {result['last_ts'] or '—'}, "
        f"windows of one {result['window']}).", "",
        f"Baseline: {md_text(result['baseline']['source']) if result['baseline'] else 'none (only absolute checks)'}.",
        f"Tests: one-sided two-proportion z-tests (rates), Welch z (means), binomial z (ceilings); "
        f"{corr['method']} correction over all {corr['family_size']} tests, alpha {corr['alpha']} ({corr['targets']}).",
        "",
    ]  # fmt: skip
    lines += _drift_md(result["drift"]) + _windows_md(result["windows"], result["length_unit"])
    lines += _examples_md(result)
    unread = result["unreadable"]
    if unread["total"]:
        lines += [f"## Unreadable rows: {unread['total']}", ""]
        lines += [f"- {md_text(k)}: {v}" for k, v in unread["by_reason"].items()]
        lines += [f"- e.g. {md_text(e)}" for e in unread["examples"]] + [""]
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {md_text(n, 400)}" for n in result["notes"]] + [""]
    if result["plots"]:
        lines += ["## Time series", ""] + [f"![{p}]({p})" for p in result["plots"]] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(checks: list[dict[str, Any]], metric: str, windows: list[str]) -> dict[str, Any] | None:
    by = {c["window"]: c for c in checks if c["scope"] == ALL and c["metric"] == metric}
    if not by:
        return None
    return {
        "rows": [by.get(w) for w in windows],
        "baseline": next((c for c in by.values() if c["baseline"] is not None), None),
    }


def _panel(ax, title: str, windows: list[str], series: dict[str, Any], rate: bool) -> None:
    xs, ys, lo, hi, red = [], [], [], [], []
    for i, c in enumerate(series["rows"]):
        if c is None or c["value"] is None:
            continue
        xs.append(i)
        ys.append(c["value"])
        if rate:
            a, b = rate_ci(c.get("k", 0), c["n"])
        else:
            se = c.get("se") or 0.0
            a, b = c["value"] - Z95 * se, c["value"] + Z95 * se
        lo.append(max(0.0, c["value"] - a))  # Wilson bounds can miss p by rounding at 0 and 1
        hi.append(max(0.0, b - c["value"]))
        if c["drift"]:
            red.append((i, c["value"]))
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", color="#1f77b4", ms=3, lw=1, capsize=2)
    ref = series["baseline"]
    if ref is not None:
        b = ref["baseline"]
        n0 = ref.get("baseline_n") or 0
        half = Z95 * math.sqrt(b * (1 - b) / n0) if rate and n0 else 0.0
        ax.axhspan(b - half, b + half, color="#2ca02c", alpha=0.2, lw=0)
        ax.axhline(b, color="#2ca02c", lw=1, ls="--")
    if red:
        ax.scatter(*zip(*red), color="#d62728", zorder=5, s=25, label="drift")
    ax.set_title(title, fontsize=9)
    step = max(1, len(windows) // 8)
    ax.set_xticks(
        range(0, len(windows), step), [w.split("/")[0][5:] for w in windows][::step], fontsize=7, rotation=30
    )


def _grid(plt, path: Path, panels: list[tuple[str, dict, bool]], windows: list[str], title: str) -> None:
    cols = 3 if len(panels) > 4 else 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, series, rate) in zip(axes.flat, panels):
        _panel(ax, name, windows, series, rate)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title + " (green: release baseline and its 95% band; red: drift)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_plots(out: Path, checks: list[dict[str, Any]]) -> list[str]:
    """``monitor_rules.png`` (violation rates) and ``monitor_metrics.png`` (means, ceilings)."""
    windows = sorted({c["window"] for c in checks})
    if not windows:
        return []
    plt = _plt()
    rules = sorted({c["metric"] for c in checks if c["metric"].startswith("rule:")})
    active = [
        m for m in rules if any(c["metric"] == m and (c["value"] or (c["baseline"] or 0) > 0) for c in checks)
    ]
    rate_panels = [
        (m, s, True) for m in ["any_rule", *active[:MAX_PLOTTED_RULES]] if (s := _series(checks, m, windows))
    ]
    other = [(m, s, m.endswith("_rate")) for m in ("length", "reward", "voice", "refusal_rate", "fallback_rate")
             if (s := _series(checks, m, windows)) and any(r and r["value"] is not None for r in s["rows"])]  # fmt: skip
    written = []
    for name, panels, title in (("monitor_rules.png", rate_panels, "Violation rate per window"),
                                ("monitor_metrics.png", other, "Length, scores, refusals, fallbacks")):  # fmt: skip
        if panels:
            _grid(plt, out / name, panels, windows, title)
            written.append(name)
    return written
