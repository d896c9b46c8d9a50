"""onbrand monitor: drift against the release baseline (synthetic, seeded logs), the false-alarm rate
of the correction, the log reader (guard records, Parquet, torn lines), outputs and user errors."""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onbrand.cli import main as cli_main
from onbrand.serve.monitor_stats import benjamini_hochberg, holm, two_proportion_p

REPO_BRAND = "configs/brands/aurora.yaml"
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
CLEAN = "Yes, the Dawn lamp dims smoothly and wakes you gently in the morning."
HYPE = CLEAN + " It is a game changer."


def exchange(ts: dt.datetime, response: str, i: int, channel: str | None = "product_question") -> dict:
    return {
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "channel": channel,
        "messages": [
            {"role": "user", "content": f"Question {i}: does the Dawn lamp dim?"},
            {"role": "assistant", "content": response},
        ],
    }


def write_log(path, rates: list[float], per_day: int, seed: int = 0):
    """An OpenAI-format log: day d has a hype-word violation rate ``rates[d]``."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for day, p in enumerate(rates):
            for i in range(per_day):
                ts = T0 + dt.timedelta(days=day, seconds=rng.randrange(86400))
                f.write(json.dumps(exchange(ts, HYPE if rng.random() < p else CLEAN, i)) + "\n")
    return path


def write_report(path, n0: int = 2000, k0: int = 100, extra: dict | None = None):
    """A release eval report with the hype-words rule at k0/n0 violations (what eval writes)."""
    est = {"value": 1 - k0 / n0, "low": 0.0, "high": 1.0, "n": n0, "ci": 0.95}
    metrics = {
        "compliance": {
            "per_rule": {"hype_words": {"kind": "banned_phrase", "aligned": est, "aligned_violations": k0}},
            "overall": {"aligned": est},
        },
        **(extra or {}),
    }
    path.write_text(json.dumps({"metrics": metrics, "config": {"brand": REPO_BRAND}}))
    return path


def run(*args) -> int:
    return cli_main(["monitor", *map(str, args)])


def drifting(out, metric: str = "rule:hype_words", scope: str = "all") -> list[str]:
    result = json.loads((out / "monitor.json").read_text())
    return sorted(
        {c["window"][:10] for c in result["drift"] if c["metric"] == metric and c["scope"] == scope}
    )


def test_violation_rate_doubling_from_day_3_is_flagged_on_day_3_and_not_before(tmp_path, capsys):
    log = write_log(tmp_path / "log.jsonl", [0.05, 0.05] + [0.10] * 12, per_day=3000, seed=1)
    report = write_report(tmp_path / "report.json")
    out = tmp_path / "out"
    assert run(log, "--baseline", report, "--out", out) == 1  # exit 1: drift, for cron / CI
    days = [(T0 + dt.timedelta(days=d)).strftime("%Y-%m-%d") for d in range(14)]
    assert drifting(out) == days[2:]
    assert drifting(out, "rule:hype_words", "product_question") == days[2:]
    assert "DRIFT" in capsys.readouterr().out
    md = (out / "monitor.md").read_text()
    assert md.startswith("# onbrand monitor\n\n**DRIFT**") and "holm correction" in md
    for png in ("monitor_rules.png", "monitor_metrics.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_stable_log_over_14_days_is_not_flagged(tmp_path, capsys):
    log = write_log(tmp_path / "log.jsonl", [0.05] * 14, per_day=3000, seed=2)
    out = tmp_path / "out"
    assert run(log, "--baseline", write_report(tmp_path / "report.json"), "--out", out) == 0
    result = json.loads((out / "monitor.json").read_text())
    assert result["passed"] and not result["drift"]
    assert result["correction"]["family_size"] >= 14 * 2 * 2  # windows x scopes x (rule + any_rule)
    assert "no drift" in capsys.readouterr().out


def test_holm_keeps_the_false_alarm_rate_of_stable_logs_at_alpha():
    """500 seeded stable logs (14 daily windows x 3 rules, baseline from a 2000-answer eval),
    vectorised with the monitor's own test: Holm keeps P(any false alarm per run) <= alpha = 0.01;
    uncorrected, about one run in five would raise a false alarm (0.2% vs 19% with seed 0)."""
    rng = np.random.default_rng(0)
    runs, windows, n, n0, alpha = 500, 14, 3000, 2000, 0.01
    p_true = np.array([0.02, 0.05, 0.10])
    k0 = rng.binomial(n0, p_true, size=(runs, 3))
    k = rng.binomial(n, p_true, size=(runs, windows, 3))
    p = two_proportion_p(k, n, k0[:, None, :], n0).reshape(runs, -1)
    any_holm = np.array([(holm(row) <= alpha).any() for row in p])
    any_raw = (p <= alpha).any(axis=1)
    assert any_holm.mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / runs)
    assert any_raw.mean() > 0.1  # the correction is what keeps the alarms rare
    # and it still has the power to see a doubled rate in one window
    k_drift = k.copy()
    k_drift[:, -1, 1] = rng.binomial(n, 0.10, size=runs)
    p2 = two_proportion_p(k_drift, n, k0[:, None, :], n0).reshape(runs, -1)
    assert np.mean([(holm(row) <= alpha)[-2] for row in p2]) > 0.95


def test_corrections_match_their_definitions():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # Holm: sorted p x (m, m-1, ...), running max; BH: sorted p x m / rank, running min from the top
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    assert two_proportion_p(10, 100, 10, 100) == pytest.approx(0.5)
    assert two_proportion_p(0, 0, 5, 100) == 1.0  # an empty window tests nothing


def guard_record(i: int, ts: dt.datetime, action: str, passed: bool, response: str) -> dict:
    return {
        "schema": "onbrand.conversation/1", "id": f"id{i}", "ts": ts.isoformat().replace("+00:00", "Z"),
        "endpoint": "chat.completions", "model": "aurora", "export_id": "dpo-1", "channel": None,
        "messages": [{"role": "user", "content": f"q{i}"}], "response": response, "original_response": None,
        "latency_ms": 3.0, "upstream_ms": 2.0, "stream": False,
        "rules": [{"rule": "guarantee", "kind": "banned_claim", "passed": passed, "detail": ""}],
        "action": action, "attempts": 1, "status": 200, "redacted": True, "usage": None,
    }  # fmt: skip


def test_guard_records_in_parquet_and_jsonl_with_a_torn_line(tmp_path):
    """The guard's own rule results and actions are used (not recomputed); Parquet is read row group
    by row group; a torn last line is counted and reported, or an error in strict mode."""
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = [guard_record(i, T0 + dt.timedelta(minutes=i), "block" if i % 4 == 0 else "pass", i % 4 != 0,
                         "We cannot promise that." if i % 4 == 0 else CLEAN) for i in range(400)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows[:300]), logs / "seg-0001.parquet", row_group_size=64)
    with open(logs / "seg-0002.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[300:])
        f.write('{"schema": "onbrand.conversation/1", "id": "torn", "ts": "2026-12-0')
    out = tmp_path / "out"
    assert run(logs, "--out", out, "--set", "thresholds.min_window_n=10") == 1  # fallbacks 25% > 5%
    result = json.loads((out / "monitor.json").read_text())
    assert result["n_conversations"] == 400 and result["rules_computed"] == 0
    assert result["unreadable"]["by_reason"] == {"invalid_json": 1}
    assert result["unreadable"]["examples"][0].startswith(f"{logs / 'seg-0002.jsonl'}:101:")
    w = next(r for r in result["windows"] if r["scope"] == "all")
    assert w["violations"] == {"guarantee": 100} and w["fallback_rate"] == 0.25
    assert {c["metric"] for c in result["drift"]} == {"fallback_rate"}
    assert run(logs, "--out", out, "--set", "strict=true") == 2  # strict: the torn line is an error


def test_a_segment_left_both_as_jsonl_and_parquet_is_read_once(tmp_path):
    """A crash between compaction's Parquet write and its JSONL delete leaves both copies of a
    segment: the monitor reads the Parquet one only, as the guard's own reader does."""
    from onbrand.serve.conversations import iter_conversations
    from onbrand.serve.convlog import iter_records

    logs = tmp_path / "logs"
    logs.mkdir()
    rows = [guard_record(i, T0 + dt.timedelta(minutes=i), "pass", True, CLEAN) for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), logs / "seg-0001.parquet")
    (logs / "seg-0001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (logs / "seg-0002.jsonl").write_text(json.dumps(guard_record(9, T0, "pass", True, CLEAN)) + "\n")
    got = [c.id for c in iter_conversations([logs])]
    assert got == [r["id"] for r in rows] + ["id9"]
    assert got == [r["id"] for r in iter_records(logs)]


def test_export_dir_baseline_gives_token_lengths_and_length_drift(tmp_path, embedded_dir):
    """``--export DIR``: the eval report inside the export is the baseline, its tokenizer counts
    tokens like the eval; answers three times longer than at release drift."""
    export = tmp_path / "export"
    (export / "eval").mkdir(parents=True)
    shutil.copy(embedded_dir / "tokenizer.json", export / "tokenizer.json")
    (export / "manifest.json").write_text(json.dumps({"kind": "onbrand-export", "run_id": "dpo-1",
                                                      "brand": {"path": REPO_BRAND}}))  # fmt: skip
    tokens = {"mean": {"value": 14.0, "low": 13.0, "high": 15.0, "n": 500, "ci": 0.95}}
    write_report(export / "eval" / "report.json", extra={"drift": {"aligned": {"tokens": tokens}}})
    rng = random.Random(3)
    log = tmp_path / "log.jsonl"
    with open(log, "w") as f:
        for day in range(3):
            for i in range(300):
                text = CLEAN if day < 2 else " ".join([CLEAN] * 3)
                ts = T0 + dt.timedelta(days=day, seconds=rng.randrange(86400))
                f.write(json.dumps(exchange(ts, text, i, channel=None)) + "\n")
    out = tmp_path / "out"
    assert run(log, "--export", export, "--out", out) == 1
    result = json.loads((out / "monitor.json").read_text())
    assert result["length_unit"] == "tokens" and result["baseline"]["export_id"] == "dpo-1"
    assert drifting(out, "length") == ["2026-12-03"]
    assert not [c for c in result["drift"] if c["metric"] != "length"]


def test_user_text_is_escaped_in_monitor_md(tmp_path):
    bad = "<script>alert(1)</script> | GUARANTEED ``` results"
    log = tmp_path / "log.jsonl"
    log.write_text(
        "".join(json.dumps(exchange(T0 + dt.timedelta(minutes=i), bad, i)) + "\n" for i in range(120))
    )
    out = tmp_path / "out"
    assert (
        run(log, "--baseline", write_report(tmp_path / "r.json", k0=0), "--out", out, "--brand", REPO_BRAND)
        == 1
    )
    md = (out / "monitor.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md and "&#124; GUARANTEED" in md


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    log = write_log(tmp_path / "log.jsonl", [0.05], per_day=10)
    assert run(log, "--set", "thresholds.alpha=2", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "config error" in err and "alpha must be in (0.0, 0.5], got 2" in err and "Traceback" not in err
    assert run(tmp_path / "missing.jsonl") == 2
    assert "missing.jsonl: no such file or directory" in capsys.readouterr().err
    assert run(log, "--out", tmp_path / "o") == 2  # no rule results in the log and no brand card
    assert "log.jsonl:1: rules: the record has no rule results and no brand card" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("window: month\nthresholds: {}\n")
    assert run(log, "--config", bad) == 2
    assert f"{bad}:1: window: got 'month'" in capsys.readouterr().err


def test_shipped_config_loads(repo_root):
    from onbrand.config import load_config
    from onbrand.serve.monitor import MonitorConfig

    cfg = load_config(MonitorConfig, repo_root / "configs" / "monitor" / "demo.yaml")
    assert cfg.thresholds.correction == "holm" and cfg.thresholds.alpha == 0.01
