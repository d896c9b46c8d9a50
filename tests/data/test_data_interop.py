"""Label Studio and Argilla exports: one canonical record per annotator verdict; skips counted;
unknown variants quarantined with their reason (fixtures in tests/data/fixtures)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from onbrand.data.formats import FORMATS, JSON_FORMATS
from onbrand.data.validate import ImportStats, Quarantined, import_files, iter_file

FIX = Path(__file__).parent / "fixtures"
LS = FIX / "label_studio_pairwise.json"
LS_MIN = FIX / "label_studio_json_min.json"
AR = FIX / "argilla_records.json"
AR_V1 = FIX / "argilla_records.jsonl"
U1, U2 = "5f0c6b0e-3c1a-4d52-9e7b-1a2b3c4d5e01", "5f0c6b0e-3c1a-4d52-9e7b-1a2b3c4d5e02"


def _split(items):
    items = list(items)
    return [i for i in items if not isinstance(i, Quarantined)], [
        i for i in items if isinstance(i, Quarantined)
    ]


def _text(msgs):
    assert len(msgs) == 1
    return msgs[0]["content"]


def _task_line(path: Path, marker: str) -> int:
    """Line where the array element holding ``marker`` starts (the '{' just above it)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, start=1) if marker in line) - 1


@pytest.mark.parametrize("fmt", ["label-studio", "auto"])
def test_label_studio_export_one_record_per_annotation(fmt):
    raw = json.loads(LS.read_text(encoding="utf-8"))
    stats = ImportStats()
    recs, bad = _split(import_files([LS], fmt=fmt, stats=stats))
    by_prompt = {_text(r["prompt"]): r for r in recs}
    t1, t2, t3 = (by_prompt[raw[i]["data"]["prompt"]] for i in range(3))
    # selected "left" = answer1 (the first name of toName), "right" = answer2 / text2
    assert (
        _text(t1["chosen"]) == raw[0]["data"]["answer1"]
        and _text(t1["rejected"]) == raw[0]["data"]["answer2"]
    )
    assert _text(t2["chosen"]) == raw[1]["data"]["answer2"] and _text(t3["chosen"]) == raw[2]["data"]["text2"]
    assert t1["annotators"] == ["1"] and t1["channel"] == "product_question"
    assert t1["created_at"] == "2026-11-02T09:15:00.000000Z"
    assert t1["source"] == {"file": str(LS), "line": 2, "item": 1, "annotation": 1}
    assert t2["annotators"] == ["2"]  # an expanded user object gives its id ...
    assert "example.com" not in json.dumps(recs)  # ... and no email is copied into the data
    reasons = sorted(q.reason for q in bad)
    assert reasons == ["duplicate", "missing_field"]
    dup = next(q for q in bad if q.reason == "duplicate")
    assert dup.record["annotators"] == ["2"]  # the second agreeing vote, kept for merging
    missing = next(q for q in bad if q.reason == "missing_field")
    assert missing.field == "data.prompt" and missing.line == _task_line(LS, '"id": 104,')
    assert "question, response_a, response_b" in missing.message and "--ls-prompt-field" in missing.message
    assert missing.message.startswith("item 4:")
    # the cancelled annotation, the one without a pairwise result, the draft and the empty task
    assert stats.skipped == {"cancelled": 1, "no_preference": 1, "draft": 1, "unannotated": 1}
    assert stats.read == 9 == stats.accepted + sum(stats.quarantined.values()) + sum(stats.skipped.values())
    assert stats.files[str(LS)]["skipped"] == 4 and stats.formats == {"label-studio": 4}
    assert "skipped 4 (cancelled 1, draft 1, no_preference 1, unannotated 1)" in stats.summary()
    assert stats.as_dict()["skipped_by_reason"]["cancelled"] == 1


@pytest.mark.parametrize("fmt", ["label-studio", "auto"])
def test_label_studio_json_min_is_quarantined_as_unknown_variant(fmt):
    stats = ImportStats()
    recs, bad = _split(iter_file(LS_MIN, fmt=fmt, stats=stats))
    assert not recs and [q.reason for q in bad] == ["unknown_format"]
    assert "JSON-min" in bad[0].message and "'JSON'" in bad[0].message


def test_label_studio_field_mapping_options():
    opts = {"ls_prompt_field": "question", "ls_left_field": "response_a", "ls_right_field": "response_b"}
    recs, bad = _split(iter_file(LS, fmt="label-studio", options=opts))
    assert len(recs) == 1 and recs[0]["prompt"][0]["content"] == "Can the Dusk speaker help me sleep?"
    assert _text(recs[0]["chosen"]).startswith("Many people find")  # selected left = response_a
    assert {q.field for q in bad} == {"data.question"} and len(bad) == 3  # the template-layout tasks


@pytest.mark.parametrize("shape", ["pretty", "one_line", "jsonl"])
def test_argilla_records_ranking_both_shapes(tmp_path, shape):
    raw = json.loads(AR.read_text(encoding="utf-8"))
    path = AR
    if shape == "one_line":  # what dataset.records.to_json writes
        path = tmp_path / "records.json"
        path.write_text(json.dumps(raw), encoding="utf-8")
    elif shape == "jsonl":
        path = tmp_path / "records.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")
    stats = ImportStats()
    recs, bad = _split(import_files([path], fmt="auto", stats=stats))
    r1, r2 = recs
    # rec-1: ["response2", "response1"] (2.x, best first) -> response2 chosen
    assert _text(r1["chosen"]) == raw[0]["fields"]["response2"] and r1["annotators"] == [U1]
    assert r1["channel"] == "product_question" and r1["source"]["item"] == 1
    assert _text(r2["chosen"]) == raw[1]["fields"]["response1"] and r2["channel"] == "complaint_reply"
    dup = next(q for q in bad if q.reason == "duplicate")
    # the older {"value", "rank"} shape (and no status: counts as submitted) says the same
    assert dup.record["annotators"] == [U2] and dup.record["id"] == r1["id"]
    missing = next(q for q in bad if q.reason == "missing_field")
    assert missing.field == "fields.prompt" and "instruction" in missing.message
    assert stats.skipped == {"draft": 1, "discarded": 1, "tie": 1, "unannotated": 1}
    assert stats.read == 8 and stats.formats == {"argilla": 3}
    if shape == "pretty":
        assert missing.line == _task_line(AR, '"id": "rec-4"')


def test_argilla_field_mapping_and_same_pair_as_label_studio():
    opts = {
        "argilla_prompt_field": "instruction",
        "argilla_response_fields": ("generation_a", "generation_b"),
    }
    recs, bad = _split(iter_file(AR, fmt="argilla", options=opts))
    assert len(recs) == 1 and _text(recs[0]["chosen"]).startswith("Many people find")
    assert {q.field for q in bad} == {"fields.instruction"}
    ls = {_text(r["prompt"]): r["id"] for r in iter_file(LS) if not isinstance(r, Quarantined)}
    ar = {_text(r["prompt"]): r["id"] for r in iter_file(AR) if not isinstance(r, Quarantined)}
    shared = set(ls) & set(ar)
    assert shared and all(ls[p] == ar[p] for p in shared)  # same judged pair, same content id


def test_argilla_v1_feedback_records_label_question_and_flattened_rows():
    stats = ImportStats()
    recs, bad = _split(iter_file(AR_V1, fmt="argilla", stats=stats))
    (rec,) = recs
    assert _text(rec["chosen"]).startswith("Softer evenings") and rec["annotators"] == [U1]
    assert rec["created_at"] == "2026-11-03T10:00:00" and rec["channel"] == "email_subject"
    assert stats.skipped == {"no_preference": 1, "discarded": 1}  # label "tie"; discarded, no values
    (flat,) = bad
    assert flat.reason == "unknown_format" and flat.line == 2 and "flattened" in flat.message


def _argilla_row(responses):
    fields = {"prompt": "Is Halo dimmable?", "response1": "Yes, to one percent.", "response2": "Nope!!!"}
    return {"id": "x", "fields": fields, "responses": responses}


def test_argilla_question_choice(tmp_path):
    both = _argilla_row(
        {
            "rank": [{"user_id": "u1", "value": ["response2", "response1"], "status": "submitted"}],
            "label": [{"user_id": "u1", "value": "response1", "status": "submitted"}],
        }
    )
    ties = _argilla_row({"label": [{"user_id": "u1", "value": "equal", "status": "submitted"}]})
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(both) + "\n" + json.dumps(ties) + "\n", encoding="utf-8")
    recs, bad = _split(iter_file(path))
    assert not recs and [q.reason for q in bad] == ["unknown_format", "unknown_format"]
    assert "several questions" in bad[0].message and "label, rank" in bad[0].message
    assert "--argilla-question" in bad[1].message
    stats = ImportStats()
    recs, bad = _split(iter_file(path, options={"argilla_question": "label"}, stats=stats))
    assert [_text(r["chosen"]) for r in recs] == ["Yes, to one percent."] and not bad
    assert stats.skipped == {"no_preference": 1}  # the label naming neither response


def test_json_array_reader_problems_are_quarantined(tmp_path):
    good = {"id": 1, "data": {"prompt": "Hi?", "answer1": "Hello.", "answer2": "Go away."}, "annotations": []}
    path = tmp_path / "cut.json"
    path.write_text("[\n" + json.dumps(good) + ',\n  7,\n  {"data": {"prompt": "x"', encoding="utf-8")
    stats = ImportStats()
    items = list(iter_file(path, stats=stats))
    assert [i.reason for i in items] == ["not_object", "invalid_json"]
    assert items[0].line == 3 and items[1].line == 4 and "the rest is not read" in items[1].message
    assert stats.skipped == {"unannotated": 1} and stats.read == 3
    bad = tmp_path / "bad.json"
    other = {**good, "id": 2}
    bad.write_bytes(
        b"[" + json.dumps(good).encode() + b', {"data": "\xff"},' + json.dumps(other).encode() + b"]"
    )
    stats = ImportStats()
    (q,) = iter_file(bad, stats=stats)  # only the element holding the bad byte is lost
    assert q.reason == "invalid_utf8" and "array item 2" in q.message
    assert stats.skipped == {"unannotated": 2} and stats.read == 3


def test_every_format_is_registered_and_documented():
    assert {"label-studio", "argilla"} <= set(FORMATS) and set(JSON_FORMATS) < set(FORMATS)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `([a-z-]+)` \|", docs, flags=re.M))
    assert set(FORMATS) - {"auto"} <= table


def test_cli_import_with_tool_flags(tmp_path):
    from onbrand.cli import main

    out = tmp_path / "imported"
    argv = [
        "data",
        "import",
        str(LS),
        "--format",
        "label-studio",
        "--out",
        str(out),
        "--ls-prompt-field",
        "question",
    ]
    argv += ["--ls-left-field", "response_a", "--ls-right-field", "response_b"]
    assert main(argv) == 0
    summary = json.loads((out / "import_summary.json").read_text())
    assert summary["accepted"] == 1 and summary["quarantined_by_reason"] == {"missing_field": 3}
    assert summary["skipped_by_reason"] == {"unannotated": 1}
    assert len((out / "records.jsonl").read_text().splitlines()) == 1
    bad = ["data", "validate", str(AR), "--argilla-response-fields", "only_one"]
    assert main(bad) == 2


RENAMED = {
    "prompt": "query",
    "answer1": "reply_a",
    "answer2": "reply_b",
    "text1": "reply_a",
    "text2": "reply_b",
}


def _snapshot_config(tmp_path, options: str) -> tuple[Path, list]:
    """A Label Studio export whose data keys are not the templates' (prompt/answer1/answer2 renamed),
    and a data config reading it with ``format_options``."""
    raw = json.loads(LS.read_text(encoding="utf-8"))
    for task in raw:
        task["data"] = {RENAMED.get(k, k): v for k, v in task["data"].items()}
    export = tmp_path / "ls_custom.json"
    export.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    cfg = tmp_path / "data.yaml"
    cfg.write_text(
        f"name: ls\ninputs: [{export}]\nformat: label-studio\ntokenizer: ''\ntest_fraction: 0.0\n"
        f"out: {tmp_path / 'snap'}\nformat_options:\n{options}",
        encoding="utf-8",
    )
    return cfg, raw


def test_snapshot_config_format_options_map_label_studio_fields(tmp_path, capsys):
    from onbrand.cli import main
    from onbrand.data.snapshot import load_snapshot

    options = "  ls_prompt_field: query\n  ls_left_field: reply_a\n  ls_right_field: reply_b\n"
    cfg, raw = _snapshot_config(tmp_path, options)
    assert main(["data", "snapshot", "--config", str(cfg)]) == 0
    dd, manifest = load_snapshot(tmp_path / "snap")
    got = {_text(r["prompt"]): _text(r["chosen"]) for r in dd["train"]}
    # task 101 picked left (reply_a), 102 and 103 right (reply_b); 104 keeps its own names
    want = {
        raw[i]["data"]["query"]: raw[i]["data"][k]
        for i, k in ((0, "reply_a"), (1, "reply_b"), (2, "reply_b"))
    }
    assert got == want and manifest["counts"]["train"]["pairs"] == 3
    assert manifest["quarantined_by_reason"] == {"duplicate": 1, "missing_field": 1}
    assert manifest["config"]["format_options"]["ls_prompt_field"] == "query"
    merged = next(r for r in dd["train"] if _text(r["prompt"]) == raw[0]["data"]["query"])
    assert sorted(merged["annotators"]) == ["1", "2"]  # the agreeing vote merged into the kept pair
    # --ls-* flags override the config's keys: swapping left and right flips every choice
    flags = ["--ls-left-field", "reply_b", "--ls-right-field", "reply_a"]
    assert main(["data", "snapshot", "--config", str(cfg), *flags]) == 0
    dd, manifest = load_snapshot(tmp_path / "snap")
    assert {_text(r["prompt"]): _text(r["rejected"]) for r in dd["train"]} == want
    assert manifest["config"]["format_options"]["ls_left_field"] == "reply_b"


def test_snapshot_config_format_options_bad_key_is_one_line_error(tmp_path, capsys):
    from dataclasses import fields

    from onbrand.cli import main
    from onbrand.data.config import FormatOptions
    from onbrand.data.formats import MULTI_FORMATS

    # the config section has exactly the options the tool formats read
    assert {f.name for f in fields(FormatOptions)} == {k for ks in MULTI_FORMATS.values() for k in ks}
    cfg, _ = _snapshot_config(tmp_path, "  ls_prompt_field: query\n  ls_promt_field: query\n")
    assert main(["data", "snapshot", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{cfg}:9: format_options.ls_promt_field: unknown key" in err
    assert "valid keys: ls_prompt_field, ls_left_field, ls_right_field, argilla_prompt_field" in err
    cfg, _ = _snapshot_config(tmp_path, "  argilla_response_fields: [a, a]\n")
    assert main(["data", "validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "two different names" in err
    assert not (tmp_path / "snap").exists()
