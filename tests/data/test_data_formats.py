"""One small fixture per source format: every good row is accepted with the right content."""

from __future__ import annotations

import csv
import json

import pytest

from onbrand.data.validate import ImportStats, Quarantined, import_files, iter_file

U = {"role": "user", "content": "Does the Dawn lamp have a snooze?"}
A_GOOD = {"role": "assistant", "content": "Yes, a tap on top snoozes it for nine minutes."}
A_BAD = {"role": "assistant", "content": "YES!!! Best ever."}


def _jsonl(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def _only_records(items):
    items = list(items)
    bad = [i for i in items if isinstance(i, Quarantined)]
    assert not bad, [str(b) for b in bad]
    return items


def _expect_simple(rec, prompt_text=U["content"]):
    assert rec["prompt"] == [{"role": "user", "content": prompt_text}]
    assert rec["chosen"] == [A_GOOD] and rec["rejected"] == [A_BAD]
    assert len(rec["id"]) == 64 and rec["source"]["line"] >= 1


def test_trl_conversational_and_implicit_prompt(tmp_path):
    sys_msg = {"role": "system", "content": "Be brief."}
    path = _jsonl(
        tmp_path,
        "trl.jsonl",
        [
            {
                "prompt": [U],
                "chosen": [A_GOOD],
                "rejected": [A_BAD],
                "channel": "product_question",
                "annotators": ["a1"],
                "reason_tags": ["tone"],
            },
            {"chosen": [U, A_GOOD], "rejected": [U, A_BAD]},  # implicit prompt
            {
                "chosen": [sys_msg, U, A_GOOD, U, A_GOOD],
                "rejected": [sys_msg, U, A_GOOD, U, A_BAD],
            },  # multi-turn
        ],
    )
    stats = ImportStats()
    a, b, c = _only_records(iter_file(path, stats=stats))
    _expect_simple(a)
    assert a["channel"] == "product_question" and a["annotators"] == ["a1"] and a["reason_tags"] == ["tone"]
    _expect_simple(b)
    assert b["id"] == a["id"]  # same content, same id, whatever the source format
    assert c["prompt"] == [sys_msg, U, A_GOOD, U] and c["chosen"] == [A_GOOD] and c["rejected"] == [A_BAD]
    assert stats.formats == {"trl": 3} and stats.accepted == 3 and stats.read == 3


def test_prompt_string_with_full_conversations(tmp_path):
    path = _jsonl(
        tmp_path, "mixed.jsonl", [{"prompt": U["content"], "chosen": [U, A_GOOD], "rejected": [U, A_BAD]}]
    )
    (rec,) = _only_records(iter_file(path))
    _expect_simple(rec)


def test_standard_explicit_and_implicit(tmp_path):
    path = _jsonl(
        tmp_path,
        "std.jsonl",
        [
            {"prompt": U["content"], "chosen": A_GOOD["content"], "rejected": A_BAD["content"]},
            {
                "chosen": "Tell me about Halo. It dims to one percent.",
                "rejected": "Tell me about Halo. NO IDEA.",
            },
        ],
    )
    a, b = _only_records(iter_file(path))
    _expect_simple(a)
    assert b["prompt"][0]["content"] == "Tell me about Halo."
    assert (
        b["chosen"][0]["content"] == "It dims to one percent." and b["rejected"][0]["content"] == "NO IDEA."
    )


def test_hh_rlhf_shared_prefix_becomes_prompt(tmp_path):
    pre = (
        "\n\nHuman: Hi there\n\nAssistant: Hello, how can I help?\n\nHuman: "
        + U["content"]
        + "\n\nAssistant:"
    )
    path = _jsonl(
        tmp_path,
        "hh.jsonl",
        [{"chosen": pre + " " + A_GOOD["content"], "rejected": pre + " " + A_BAD["content"]}],
    )
    stats = ImportStats()
    (rec,) = _only_records(iter_file(path, stats=stats))
    assert [m["role"] for m in rec["prompt"]] == ["user", "assistant", "user"]
    assert rec["prompt"][0]["content"] == "Hi there" and rec["prompt"][-1]["content"] == U["content"]
    assert rec["chosen"] == [A_GOOD] and rec["rejected"] == [A_BAD]
    assert stats.formats == {"hh-rlhf": 1}


def test_ultrafeedback_binarized(tmp_path):
    row = {
        "prompt": U["content"],
        "prompt_id": "p1",
        "chosen": [U, A_GOOD],
        "rejected": [U, A_BAD],
        "messages": [U, A_GOOD],
        "score_chosen": 8.5,
        "score_rejected": 3.0,
    }
    path = _jsonl(tmp_path, "uf.jsonl", [row])
    stats = ImportStats()
    (rec,) = _only_records(iter_file(path, stats=stats))
    _expect_simple(rec)
    assert stats.formats == {"ultrafeedback": 1}


def test_csv_with_quotes_newlines_system_and_lists(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,chosen,rejected,channel,annotators,system\n"
        f'"{U["content"]}","{A_GOOD["content"]}","{A_BAD["content"]}",product_question,a1;a2,\n'
        '"Two lines,\nwith a comma","Line one.\nLine two.","Nope",,,Be brief.\n',
        encoding="utf-8",
    )
    stats = ImportStats()
    a, b = _only_records(iter_file(path, stats=stats))
    _expect_simple(a)
    assert a["annotators"] == ["a1", "a2"] and a["channel"] == "product_question"
    assert b["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Two lines,\nwith a comma"},
    ]
    assert b["chosen"][0]["content"] == "Line one.\nLine two." and b["source"]["line"] == 3
    assert b["channel"] is None  # an empty optional cell is "not given", not ""
    assert stats.formats == {"csv": 2}


def test_canonical_roundtrip_recomputes_id(tmp_path):
    rec = {
        "id": "0" * 64,
        "prompt": [U],
        "chosen": [A_GOOD],
        "rejected": [A_BAD],
        "brand": "aurora",
        "channel": "product_question",
        "created_at": "2026-12-01T00:00:00+00:00",
        "source": {"file": "annotate:p", "line": 7},
    }
    path = _jsonl(tmp_path, "canon.jsonl", [rec])
    stats = ImportStats()
    (got,) = _only_records(iter_file(path, stats=stats))
    _expect_simple(got)
    assert got["id"] != "0" * 64 and got["brand"] == "aurora" and got["created_at"] == rec["created_at"]
    assert got["source"] == {"file": str(path), "line": 1}  # re-import records where it came from now
    assert stats.formats == {"canonical": 1}


@pytest.mark.parametrize("fmt", ["trl", "standard"])
def test_forced_format_is_honoured(tmp_path, fmt):
    row = (
        {"prompt": [U], "chosen": [A_GOOD], "rejected": [A_BAD]}
        if fmt == "trl"
        else {"prompt": U["content"], "chosen": A_GOOD["content"], "rejected": A_BAD["content"]}
    )
    path = _jsonl(tmp_path, "x.jsonl", [row])
    stats = ImportStats()
    (rec,) = _only_records(import_files([path], fmt=fmt, stats=stats))
    _expect_simple(rec)
    assert stats.formats == {fmt: 1}


def test_parquet_and_gzip_inputs_stream(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"prompt": [U], "chosen": [A_GOOD], "rejected": [A_BAD]},
        {"prompt": [U], "chosen": [A_GOOD], "rejected": [{"role": "assistant", "content": " "}]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    items = list(iter_file(tmp_path / "x.parquet"))
    _expect_simple(items[0])
    assert isinstance(items[1], Quarantined) and (items[1].line, items[1].reason) == (2, "empty_text")
    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as f:
        f.write(json.dumps(rows[0]) + "\n")
    with gzip.open(tmp_path / "x.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerows([["prompt", "chosen", "rejected"], [U["content"], A_GOOD["content"], A_BAD["content"]]])
    for name in ("x.jsonl.gz", "x.csv.gz"):
        (rec,) = _only_records(iter_file(tmp_path / name))
        _expect_simple(rec)
