"""A malformed file covering every bad case: each bad row is quarantined with the right reason,
file, line and field; every good row is accepted; the counts add up; nothing crashes."""

from __future__ import annotations

import json

from onbrand.cli import main
from onbrand.data.records import REASONS
from onbrand.data.validate import ImportStats, Quarantined, import_files

U = [{"role": "user", "content": "Is the Halo light dimmable?"}]
C = [{"role": "assistant", "content": "Yes, it dims down to one percent."}]
R = [{"role": "assistant", "content": "YES OBVIOUSLY!!"}]
GOOD = {"prompt": U, "chosen": C, "rejected": R}

# (raw line, expected reason or None for a good row, expected field)
CASES: list[tuple[bytes, str | None, str]] = [
    (json.dumps(GOOD).encode(), None, ""),
    (b"", "blank_line", ""),
    (b"   \t", "blank_line", ""),
    (b'{"prompt": "x", "chosen": ', "invalid_json", ""),
    (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "invalid_utf8", ""),
    (b'["a", "list"]', "not_object", ""),
    (b"42", "not_object", ""),
    (json.dumps({"prompt": U, "chosen": C}).encode(), "missing_field", "rejected"),
    (json.dumps({"prompt": None, "chosen": C, "rejected": R}).encode(), "null_field", "prompt"),
    (json.dumps({"prompt": 5, "chosen": C, "rejected": R}).encode(), "wrong_type", "prompt"),
    (json.dumps({**GOOD, "channel": 3}).encode(), "wrong_type", "channel"),
    (
        json.dumps({**GOOD, "chosen": [{"role": "assistant", "content": 7}]}).encode(),
        "wrong_type",
        "chosen[0].content",
    ),
    (
        json.dumps({**GOOD, "chosen": [{"role": "assistant", "content": "   "}]}).encode(),
        "empty_text",
        "chosen[0].content",
    ),
    (json.dumps({"prompt": "  ", "chosen": "a", "rejected": "b"}).encode(), "empty_text", "prompt"),
    (json.dumps({**GOOD, "rejected": []}).encode(), "empty_text", "rejected"),
    (
        json.dumps(
            {**GOOD, "rejected": [{"role": "assistant", "content": "yes,  it dims down to ONE percent."}]}
        ).encode(),
        "identical_pair",
        "chosen",
    ),
    (
        json.dumps({**GOOD, "prompt": [{"role": "customer", "content": "hi"}]}).encode(),
        "unknown_role",
        "prompt[0].role",
    ),
    (
        json.dumps({**GOOD, "chosen": [{"role": "assistant"}]}).encode(),
        "missing_content",
        "chosen[0].content",
    ),
    (json.dumps({**GOOD, "chosen": [{"content": "no role"}]}).encode(), "missing_field", "chosen[0].role"),
    (json.dumps({**GOOD, "prompt": U + C}).encode(), "bad_structure", "prompt"),
    (json.dumps({**GOOD, "chosen": [{"role": "user", "content": "hm"}]}).encode(), "bad_structure", "chosen"),
    (
        json.dumps(
            {**GOOD, "chosen": [{"role": "assistant", "content": U[0]["content"] + " Yes."}]}
        ).encode(),
        "prompt_in_completion",
        "chosen",
    ),
    (
        json.dumps(
            {
                "prompt": "p",
                "chosen": [{"role": "user", "content": "p"}, C[0]],
                "rejected": [U[0], R[0]],
                "score_chosen": 2,
                "score_rejected": 5,
            }
        ).encode(),
        "bad_scores",
        "score_chosen",
    ),
    (json.dumps({"question": "q", "answer": "a"}).encode(), "missing_field", "prompt"),
    (json.dumps({"prompt": U, "chosen": 1, "rejected": R}).encode(), "wrong_type", "chosen"),
    (json.dumps({"chosen": 1, "rejected": 2}).encode(), "unknown_format", ""),
    (json.dumps({"chosen": None, "rejected": "b"}).encode(), "null_field", "chosen"),
    (
        json.dumps({**GOOD, "chosen": [{"role": "assistant", "content": "x" * 5000}]}).encode(),
        "too_large",
        "",
    ),
    (json.dumps(GOOD).encode(), "duplicate", ""),
    (json.dumps({**GOOD, "prompt": "Another prompt?"}).encode(), None, ""),
]


def _write(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(raw for raw, _, _ in CASES) + b"\n")
    return path


def test_every_bad_row_quarantined_with_reason_file_line_field(tmp_path):
    path = _write(tmp_path)
    stats = ImportStats()
    items = list(import_files([path], max_chars=4000, stats=stats))
    assert len(items) == len(CASES)
    for line, ((raw, reason, field), item) in enumerate(zip(CASES, items), start=1):
        if reason is None:
            assert isinstance(item, dict), f"line {line}: {item}"
            assert item["source"] == {"file": str(path), "line": line}
            continue
        assert isinstance(item, Quarantined), f"line {line} should be {reason}: {raw[:60]!r}"
        assert (item.reason, item.field, item.line, item.file) == (reason, field, line, str(path)), str(item)
        assert item.reason in REASONS and item.message
    expected = sum(r is not None for _, r, _ in CASES)
    assert stats.read == len(CASES)
    assert stats.accepted == len(CASES) - expected == 2
    assert sum(stats.quarantined.values()) == expected
    assert stats.read == stats.accepted + sum(stats.quarantined.values())
    assert stats.duplicates == 1
    assert stats.files[str(path)] == {"read": len(CASES), "accepted": 2, "quarantined": expected}


def test_malformed_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"prompt,chosen,rejected\n"
        b"Is Halo dimmable?,Yes to one percent.,NO!!\n"  # good
        b"\n"  # blank row
        b"only,two\n"  # wrong number of cells
        b"Caf\xe9?,a,b\n"  # invalid UTF-8
        b"Hello?, ,b\n"  # whitespace-only chosen
        b"Same?,Same answer.,same answer.\n"  # identical after normalization
        b'"Multi\nline?",Fine.,Not fine!!\n'  # good, spans lines 8-9
    )
    stats = ImportStats()
    items = list(import_files([path], stats=stats))
    got = [(i.line, i.reason) if isinstance(i, Quarantined) else (i["source"]["line"], "ok") for i in items]
    assert got == [
        (2, "ok"),
        (3, "blank_line"),
        (4, "wrong_type"),
        (5, "invalid_utf8"),
        (6, "empty_text"),
        (7, "identical_pair"),
        (8, "ok"),
    ]
    assert stats.read == 7 and stats.accepted == 2


def test_cli_import_writes_quarantine_and_exit_codes(tmp_path, capsys):
    path = _write(tmp_path)
    out = tmp_path / "imp"
    assert main(["data", "import", str(path), "--out", str(out), "--max-chars", "4000"]) == 0
    summary = json.loads((out / "import_summary.json").read_text())
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    records = (out / "records.jsonl").read_text().splitlines()
    assert len(records) == 2 and len(quarantine) == summary["quarantined"] == len(CASES) - 2
    assert summary["read"] == summary["accepted"] + summary["quarantined"]
    assert {q["reason"] for q in quarantine} == {r for _, r, _ in CASES if r}
    assert all(q["file"] == str(path) and q["line"] >= 1 and q["reason_text"] for q in quarantine)
    assert "duplicates 1" in capsys.readouterr().out
    # --strict fails when anything was quarantined; nothing valid left fails without it.
    assert main(["data", "import", str(path), "--out", str(out), "--strict"]) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n{}\n")
    assert main(["data", "validate", str(empty)]) == 1
    assert "no valid pairs remain" in capsys.readouterr().err
