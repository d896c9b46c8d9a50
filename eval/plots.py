"""PNG plots for the eval report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onbrand.eval.metrics.agreement import HUMAN_JUDGES

BASE_C, ALIGNED_C = "#8c8c8c", "#1f77b4"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_win_rates(metrics: dict[str, Any], path: Path) -> bool:
    """Horizontal bars with CI whiskers for every pairwise rate; the 0.5 line is 'no difference'."""
    rows = []
    wr = metrics.get("win_rate")
    if wr:
        rows += [("reward win rate", wr["win_rate"]), ("length-controlled", wr["lc_win_rate"])]
    if metrics.get("judge") and metrics["judge"].get("win_rate"):
        rows.append(("LLM judge (swap)", metrics["judge"]["win_rate"]))
    if metrics.get("human") and metrics["human"].get("win_rate"):
        rows.insert(0, ("people (blind A/B)", metrics["human"]["win_rate"]))
    if metrics.get("implicit"):
        rows.append(("implicit reward acc.", metrics["implicit"]["accuracy"]))
    if not rows:
        return False
    vals = [r[1] for r in rows]
    colors = [ALIGNED_C if v["low"] > 0.5 else ("#d62728" if v["high"] < 0.5 else "#bcbd22") for v in vals]
    _ci_bars(path, [r[0] for r in rows], vals, colors, [f"{v['value']:.2f} [{v['low']:.2f}, {v['high']:.2f}]" for v in vals],
             null=0.5, xlim=(0, 1.4), xticks=[0, 0.25, 0.5, 0.75, 1.0], text_x=1.03, width=7, pad=1.4,
             xlabel="aligned beats base (0.5 = no difference); bars: 95% bootstrap CI",
             title="Aligned vs base: pairwise rates", edge=1.0)  # fmt: skip
    return True


def _ci_bars(path: Path, names, vals, colors, labels, *, null, xlim, xticks, text_x, width, pad, xlabel, title,
             edge=None) -> None:  # fmt: skip
    """Horizontal bars (first row on top) with CI whiskers, a dashed ``null`` line and each row's
    label in a column right of the bars (so it never sits on a whisker)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(width, 0.7 * len(vals) + pad))
    y = list(range(len(vals)))[::-1]
    err = [[v["value"] - v["low"] for v in vals], [v["high"] - v["value"] for v in vals]]
    ax.barh(y, [v["value"] for v in vals], xerr=err, color=colors, capsize=5)
    ax.axvline(null, color="k", ls="--", lw=1)
    for i, text in zip(y, labels):
        ax.text(text_x, i, text, va="center")
    ax.set_yticks(y, names)
    ax.set_xlim(*xlim)
    ax.set_xticks(xticks)
    if edge is not None:
        ax.axvline(edge, color="0.8", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_human_agreement(metrics: dict[str, Any], path: Path) -> bool:
    """Cohen's kappa (bars, 95% CI) of each automatic judge with the human majority."""

    judges = {k: v for k, v in (metrics.get("human") or {}).get("judges", {}).items() if v.get("kappa")}
    if not judges:
        return False
    _ci_bars(path, [HUMAN_JUDGES.get(k, k) for k in judges], [v["kappa"] for v in judges.values()], ALIGNED_C,
             [f"κ {a['kappa']['value']:.2f}, accuracy {a['accuracy']['value']:.2f}, n {a['n']}" for a in judges.values()],
             null=0.0, xlim=(-1, 2.1), xticks=[-1, -0.5, 0, 0.5, 1.0], text_x=1.05, width=9, pad=1.6,
             xlabel="Cohen's kappa with the human majority (0 = chance, 1 = perfect); whiskers: 95% CI",
             title="Does each automatic judge agree with people?")  # fmt: skip
    return True


def plot_rewards(
    metrics: dict[str, Any], lengths: dict[str, list[int]], hist_path: Path, scatter_path: Path
) -> bool:
    rw = metrics.get("rewards")
    if not rw:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    lo, hi = min(rw["base"] + rw["aligned"]), max(rw["base"] + rw["aligned"])
    bins = [lo + (hi - lo + 1e-9) * i / 20 for i in range(21)]
    ax.hist(rw["base"], bins=bins, alpha=0.6, color=BASE_C, label="base")
    ax.hist(rw["aligned"], bins=bins, alpha=0.6, color=ALIGNED_C, label="aligned")
    ax.set_xlabel("reward-model score")
    ax.set_ylabel("responses")
    ax.set_title("Reward distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(hist_path, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(lengths["base"], rw["base"], color=BASE_C, label="base", alpha=0.7)
    ax.scatter(lengths["aligned"], rw["aligned"], color=ALIGNED_C, label="aligned", alpha=0.7)
    ax.set_xlabel("response tokens")
    ax.set_ylabel("reward-model score")
    ax.set_title("Length vs reward (a strong upward trend = the RM rewards verbosity)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(scatter_path, dpi=110)
    plt.close(fig)
    return True


def plot_compliance(metrics: dict[str, Any], path: Path) -> bool:
    comp = metrics.get("compliance")
    if not comp or not comp["per_rule"]:
        return False
    rules = list(comp["per_rule"])
    _paired_bars(path, rules, [comp["per_rule"][r] for r in rules], list(range(len(rules))), -0.2,
                 xlabel="pass rate (95% CI)", title="Brand compliance per rule")  # fmt: skip
    return True


def plot_adversarial(metrics: dict[str, Any], path: Path) -> bool:
    """Violation rate per targeted rule (and overall) on the adversarial prompts, base vs aligned."""
    adv = metrics.get("adversarial")
    if not adv or not adv["per_rule"]:
        return False
    rows = [(r, v) for r, v in adv["per_rule"].items()] + [("all rules", adv["overall"])]
    _paired_bars(path, [r for r, _ in rows], [v for _, v in rows], list(range(len(rows)))[::-1], 0.2,
                 xlabel="violation rate of the targeted rule (lower = better; 95% CI)",
                 title=f"Adversarial prompts ({adv['n_prompts']}): does the model take the bait?")  # fmt: skip
    return True


def _paired_bars(path: Path, names: list[str], rows: list[dict], y: list[int], base_offset: float, *, xlabel: str,
                 title: str) -> None:  # fmt: skip
    """Base and aligned bars (95% CI whiskers) of each row at height ``y``, base at ``y + base_offset``
    and aligned at ``y - base_offset``; rates on a 0..1 axis, legend above the plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    for off, who, color in ((base_offset, "base", BASE_C), (-base_offset, "aligned", ALIGNED_C)):
        vals = [row[who] for row in rows]
        err = [[v["value"] - v["low"] for v in vals], [v["high"] - v["value"] for v in vals]]
        ax.barh([i + off for i in y], [v["value"] for v in vals], height=0.4, xerr=err, color=color,
                label=who, capsize=3)  # fmt: skip
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_title(title, pad=24)
    ax.legend(ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
