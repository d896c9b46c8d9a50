"""The blind human A/B round's place in the report. Nothing is computed during ``onbrand eval``:
``onbrand eval human`` (``onbrand.eval.human``) adds ``metrics.human`` to a report afterwards and
re-renders it; once people have judged, their win rate is the verdict's primary metric."""

from __future__ import annotations

from typing import Any

from onbrand.eval.metrics.registry import RATE_NULL, Metric, fmt_ci, register, row, side
from onbrand.eval.report_sections import human_md

HUMAN_ROW = "Human win rate (blind A/B)"


def _rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    h = m["human"]
    if not h.get("win_rate"):
        return []
    v = h["votes"]
    return [row(HUMAN_ROW, "—", fmt_ci(h["win_rate"]), f"votes A/T/B {v['aligned']}/{v['tie']}/{v['base']}, both bad {v['both_bad']}",
                side(h["win_rate"], RATE_NULL), f"{h['n_items']} items, {len(h['annotators'])} annotators, blind, sides randomised")]  # fmt: skip


register(Metric("human", order=1000, default=None, rows=((40, _rows),), section=(40, lambda m: human_md(m["human"])),
                primary={HUMAN_ROW: 0}, gate_checks=("human_win_rate_ci_low", "judge_human_kappa")))  # fmt: skip
