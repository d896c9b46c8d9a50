"""The exclamation-mark metric: one module registered through the metric registry (its switch,
computation and report rows), checked by hand and through ``run_eval`` with a fake engine."""

from __future__ import annotations

import json

import pytest

from onbrand.config import load_config
from onbrand.engines import Generation
from onbrand.eval import runner
from onbrand.eval.config import EvalConfig
from onbrand.eval.metrics.exclamation import exclamation
from onbrand.eval.metrics.registry import fmt_ci, get
from onbrand.stats.ci import mean_ci

# Per prompt: (base answer, aligned answer). '!' counts: base 3, 0, 1, 2; aligned 0, 1, 0, 0.
ANSWERS = {
    "Is the lamp bright?": ("Wow! So bright!! Buy it.", "It is bright enough to read by."),
    "Can it dim?": ("Yes, it dims.", "Yes! It dims to 5%."),
    "Is there an app?": ("There is an app!", "There is a free app."),
    "How long is the warranty?": ("Two years!! Amazing", "Two years, parts and labour."),
}


def test_values_match_a_hand_computation():
    base = [b for b, _ in ANSWERS.values()]
    aligned = [a for _, a in ANSWERS.values()]
    out = exclamation(aligned, base, n_boot=500, seed=3)
    share, per = out["share"], out["per_answer"]
    # share with '!': base 3/4, aligned 1/4; paired differences (0-1, 1-0, 0-1, 0-1) -> -2/4
    assert (share["base"]["value"], share["aligned"]["value"], share["diff"]["value"]) == (0.75, 0.25, -0.5)
    # '!' per answer: base (3+0+1+2)/4 = 1.5, aligned 1/4; differences (-3, 1, -1, -2) -> -5/4
    assert (per["base"]["value"], per["aligned"]["value"], per["diff"]["value"]) == (1.5, 0.25, -1.25)
    assert out["n"] == 4 and all(e["n"] == 4 for e in (*share.values(), *per.values()))
    # the CIs are onbrand.stats.ci.mean_ci over the answers (paired for the difference)
    assert per["diff"] == mean_ci([-3, 1, -1, -2], n_boot=500, seed=3).to_dict()
    assert share["base"] == mean_ci([1, 0, 1, 1], n_boot=500, seed=3).to_dict()
    for e in (*share.values(), *per.values()):
        assert e["low"] <= e["value"] <= e["high"]
    same = exclamation(["Hi!", "Hi!"], ["Hi!", "Hi!"], n_boot=50)
    assert same["share"]["diff"] == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 2, "ci": 0.95}
    with pytest.raises(ValueError, match="2 aligned vs 1 base"):
        exclamation(["a", "b"], ["c"])


def test_registered_with_a_default_on_switch():
    metric = get("exclamation")
    assert metric.default is True and EvalConfig().metrics.exclamation is True
    assert load_config(EvalConfig, None, ["metrics.exclamation=false"]).metrics.exclamation is False


class FakeEngine:
    kind = "fake"

    def generate(self, requests, sampling):
        pick = lambda r: ANSWERS[r.messages[-1]["content"]][1 if r.adapter else 0]  # noqa: E731
        return [Generation(r.id, r.adapter, [pick(r)], [[7] * len(pick(r).split())]) for r in requests]

    def close(self):
        pass


@pytest.fixture
def args(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "get_engine", lambda *a, **k: FakeEngine())
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(ANSWERS))
    )
    return [f"aligned={adapter}", "base_model=fake-base", f"prompts={prompts}", "bootstrap=200",
            "metrics.reward=false", "metrics.kl=false", "metrics.implicit=false", "metrics.perplexity=false"]  # fmt: skip


def test_in_report_json_and_md_and_switched_off(tmp_path, args):
    out = tmp_path / "on"
    rep = runner.run_eval(load_config(EvalConfig, None, args + [f"out_dir={out}"]))
    ex = rep["metrics"]["exclamation"]
    assert (ex["share"]["diff"]["value"], ex["per_answer"]["diff"]["value"]) == (-0.5, -1.25)
    assert ex == json.loads((out / "report.json").read_text())["metrics"]["exclamation"]
    rows = {r["metric"]: r for r in rep["verdict_rows"]}
    share = rows["Answers with '!' (share)"]
    assert (share["base"], share["aligned"], share["better"]) == (
        fmt_ci(ex["share"]["base"]),
        fmt_ci(ex["share"]["aligned"]),
        "info",  # information only: it never moves the verdict
    )
    assert share["note"] == "'!' per answer 1.50 → 0.25, Δ " + fmt_ci(ex["per_answer"]["diff"], 2)
    md = (out / "report.md").read_text()
    assert (
        f"| Answers with '!' (share) | {fmt_ci(ex['share']['base'])} | {fmt_ci(ex['share']['aligned'])} |"
        in md
    )
    assert "Answers with '!' (share)" in rep["summary"]

    off = tmp_path / "off"
    rep = runner.run_eval(
        load_config(EvalConfig, None, args + [f"out_dir={off}", "metrics.exclamation=false"])
    )
    assert "exclamation" not in rep["metrics"] and rep["config"]["metrics"]["exclamation"] is False
    assert "'!'" not in (off / "report.md").read_text()
    assert not any("'!'" in r["metric"] for r in rep["verdict_rows"])
