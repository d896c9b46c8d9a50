"""The guard's conversation log: redaction before writing, rotation, atomic Parquet compaction,
the reader's handling of a torn last line (reported) and of a corrupt line (an error with
file:line), and the lock that keeps a live writer's segment from being compacted."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from onbrand.config import ConfigError, load_config
from onbrand.serve.convlog import (
    FIELDS,
    SCHEMA_ID,
    ConvLog,
    ReadReport,
    compact_segment,
    iter_records,
    recover,
    segment_files,
)
from onbrand.serve.policy import GuardConfig, LogSection
from onbrand.serve.redact import luhn_ok, redact

CARD = "4111 1111 1111 1111"  # passes Luhn
NOT_CARD = "4111 1111 1111 1112"  # fails Luhn


def record(i: int, user: str = "Where is my order?", response: str = "It ships today.") -> dict:
    return {
        "schema": SCHEMA_ID, "id": f"{i:032x}", "ts": "2025-01-01T00:00:00.000000Z", "endpoint": "chat.completions",
        "model": "m", "export_id": None, "channel": None, "messages": [{"role": "user", "content": user}],
        "response": response, "original_response": None, "latency_ms": 1.5, "upstream_ms": 1.0, "stream": False,
        "rules": [{"rule": "guarantee", "kind": "banned_claim", "passed": True, "detail": ""}],
        "action": "pass", "attempts": 1, "status": 200, "redacted": False, "usage": None,
    }  # fmt: skip


# ----------------------------------------------------------------------------- redaction
@pytest.mark.parametrize(
    "text, masked",
    [
        ("write to jane.doe+orders@example.co.uk today", "write to [email] today"),
        ("call +44 20 7946 0958 or (415) 555-0134", "call [phone] or [phone]"),
        ("my number is 0612345678.", "my number is [phone]."),
        (f"card {CARD}, exp 12/27", "card [card], exp 12/27"),
        ("card 4111-1111-1111-1111", "card [card]"),
    ],
)
def test_redact_masks_planted_personal_data(text, masked):
    assert redact(text)[0] == masked


@pytest.mark.parametrize(
    "text",
    [
        "on 2024-05-01 set it to 10 to 60 minutes",
        "order 12345, 2 lamps",
        f"ref {NOT_CARD}",
        "Halo costs 89 EUR",
    ],
)
def test_redact_leaves_other_numbers(text):
    assert redact(text) == (text, 0)


def test_luhn():
    assert luhn_ok(CARD.replace(" ", "")) and not luhn_ok(NOT_CARD.replace(" ", ""))
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")


def test_log_redacts_before_writing_and_can_be_turned_off(tmp_path):
    planted = f"I am jane@example.com, +1 415 555 0134, card {CARD}"
    with ConvLog(LogSection(dir=str(tmp_path / "on"), compact=False)) as log:
        log.append(record(1, user=planted, response=f"Thanks jane@example.com, we charged {CARD}."))
    raw = b"".join(p.read_bytes() for p in (tmp_path / "on").glob("*.jsonl"))
    for secret in (b"jane@example.com", b"555 0134", CARD.encode()):
        assert secret not in raw
    (rec,) = iter_records(tmp_path / "on")
    assert rec["redacted"] and rec["messages"][0]["content"] == "I am [email], [phone], card [card]"
    assert rec["response"] == "Thanks [email], we charged [card]."
    with ConvLog(LogSection(dir=str(tmp_path / "off"), redact=False, compact=False)) as log:
        log.append(record(2, user=planted))
    (rec,) = iter_records(tmp_path / "off")
    assert not rec["redacted"] and rec["messages"][0]["content"] == planted


# ----------------------------------------------------------------------------- segments
@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_rotation_and_compaction_keep_every_record_in_order(tmp_path, fsync):
    cfg = LogSection(dir=str(tmp_path), segment_max_mb=0.002, fsync=fsync, fsync_interval_ms=5)
    with ConvLog(cfg) as log:
        for i in range(60):
            log.append(record(i))
    assert not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob(".*"))  # all compacted, no temp
    parts = segment_files(tmp_path)
    assert len(parts) > 3 and all(p.suffix == ".parquet" for p in parts)
    assert set(pq.read_schema(parts[0]).names) == FIELDS
    report = ReadReport()
    got = list(iter_records(tmp_path, report, batch_size=7))
    assert [r["id"] for r in got] == [f"{i:032x}" for i in range(60)]
    assert report.records == 60 and report.files == len(parts) and report.torn == []
    assert got[0]["rules"] == record(0)["rules"] and got[0]["usage"] is None


def test_append_rejects_records_off_the_schema(tmp_path):
    with ConvLog(LogSection(dir=str(tmp_path))) as log:
        bad = record(1)
        del bad["usage"]
        with pytest.raises(ValueError, match="missing \\['usage'\\]"):
            log.append(bad)


def _crashed_segment(tmp_path, n: int = 3):
    path = tmp_path / "seg-20250101T000000000000Z-1-abcd.jsonl"
    lines = [json.dumps(record(i)) + "\n" for i in range(n)]
    path.write_text("".join(lines) + lines[0][:40])  # the writer died in the middle of a line
    return path


def test_reader_reports_a_torn_last_line_and_keeps_complete_records(tmp_path):
    path = _crashed_segment(tmp_path)
    report = ReadReport()
    got = list(iter_records(path, report))
    assert [r["id"] for r in got] == [f"{i:032x}" for i in range(3)]
    assert len(report.torn) == 1 and f"{path}:4: torn last line" in report.torn[0]
    out = compact_segment(path)  # the torn bytes are kept aside, not dropped silently
    assert out.exists() and not path.exists()
    assert (tmp_path / (path.name + ".torn")).read_text() == json.dumps(record(0))[:40]
    assert [r["id"] for r in iter_records(tmp_path)] == [r["id"] for r in got]


def test_reader_fails_on_a_corrupt_complete_line(tmp_path):
    path = tmp_path / "seg-x.jsonl"
    path.write_text(json.dumps(record(0)) + "\n{not json\n" + json.dumps(record(1)) + "\n")
    with pytest.raises(ValueError, match=r"seg-x.jsonl:2: corrupt record"):
        list(iter_records(path))
    assert recover(tmp_path) == [] and path.exists()  # left for a person, not compacted or deleted


def test_recover_skips_a_live_writers_segment(tmp_path):
    crashed = _crashed_segment(tmp_path)
    with ConvLog(LogSection(dir=str(tmp_path))) as live:  # opening compacts the crashed one
        assert not crashed.exists() and crashed.with_suffix(".parquet").exists()
        live.append(record(9))
        (active,) = tmp_path.glob("*.jsonl")
        assert recover(tmp_path) == [] and active.exists()  # locked by the live writer
        assert [r["id"] for r in iter_records(tmp_path)][-1] == f"{9:032x}"
    assert not list(tmp_path.glob("*.jsonl")) and len(list(iter_records(tmp_path))) == 4


def test_a_parquet_twin_wins_over_its_jsonl(tmp_path):
    path = _crashed_segment(tmp_path)
    twin = path.read_bytes()
    compact_segment(path)
    path.write_bytes(twin)  # crashed after the rename, before the unlink
    assert [p.suffix for p in segment_files(tmp_path)] == [".parquet"]
    recover(tmp_path)
    assert not path.exists()


def test_config_errors_name_the_key_and_range(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("log:\n  fsync: sometimes\n")
    with pytest.raises(ConfigError, match=r"g.yaml:2: log.fsync: got 'sometimes'; allowed: 'always'"):
        load_config(GuardConfig, cfg)
    cfg.write_text("policy:\n  banned_claims: block\n")
    with pytest.raises(ConfigError, match="unknown rule kind"):
        load_config(GuardConfig, cfg)
    with pytest.raises(ConfigError, match=r"max_regenerations must be in \[0, 10\], got 11"):
        load_config(GuardConfig, None, ["max_regenerations=11"])


def test_guard_log_command_summarises_a_crashed_directory(tmp_path, capsys):
    from onbrand.cli import main

    _crashed_segment(tmp_path)
    assert main(["guard", "log", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["records"] == 3 and out["actions"] == {"pass": 3} and len(out["torn"]) == 1
    assert main(["guard", "log", str(tmp_path), "--compact"]) == 0
    captured = capsys.readouterr()
    assert "3 records in 1 segment(s); actions: pass 3" in captured.out and captured.err == ""
    assert main(["guard", "port=1", "oops"]) == 2
    assert "expected key=value overrides" in capsys.readouterr().err
