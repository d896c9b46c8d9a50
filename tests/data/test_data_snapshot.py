"""Snapshots: deterministic content id, changes with any pair, leak-free stratified split,
Parquet loadable both ways, tokenizer checks (prefix, truncation, pairs dropped whole)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onbrand.data.config import DataConfig
from onbrand.data.records import prompt_key
from onbrand.data.snapshot import build_snapshot, load_snapshot, split_records
from onbrand.data.tokcheck import check_records

REPO = Path(__file__).resolve().parents[2]
CARD = str(REPO / "configs" / "brands" / "aurora.yaml")
CHANNELS = ("product_question", "complaint_reply", "social_post")


def _rows(n=60):
    rows = []
    for i in range(n):
        ch = CHANNELS[i % 3]
        rows.append(
            {
                "prompt": f"Question {i // 2} about lamp {i % 7} in {ch}?",  # pairs share prompts
                "chosen": f"A precise answer number {i} with facts.",
                "rejected": f"NUMBER {i}!! BEST EVER!!",
                "channel": ch,
                "annotators": [f"a{i % 3}"],
            }
        )
    return rows


def _write(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tmp_path, inputs, **kw):
    return DataConfig(
        inputs=[str(p) for p in inputs], brand=CARD, tokenizer="", out=str(tmp_path / "snap"), **kw
    )


def test_same_inputs_same_id_and_one_changed_pair_changes_it(tmp_path):
    src = _write(tmp_path / "a.jsonl", _rows())
    m1 = build_snapshot(_cfg(tmp_path, [src]))
    m2 = build_snapshot(_cfg(tmp_path, [src]))
    assert m1["snapshot_id"] == m2["snapshot_id"] and len(m1["snapshot_id"]) == 64
    moved = _write(tmp_path / "copy.jsonl", _rows())  # same content elsewhere: same id
    assert build_snapshot(_cfg(tmp_path, [moved]))["snapshot_id"] == m1["snapshot_id"]
    rows = _rows()
    rows[17]["chosen"] = "A precise answer number 17, edited."
    changed = _write(tmp_path / "b.jsonl", rows)
    m3 = build_snapshot(_cfg(tmp_path, [changed]))
    assert m3["snapshot_id"] != m1["snapshot_id"]
    assert m3["sources"][0]["sha256"] != m1["sources"][0]["sha256"]


def test_manifest_parquet_and_split_without_leakage(tmp_path):
    src = _write(tmp_path / "a.jsonl", _rows())
    cfg = _cfg(tmp_path, [src], test_fraction=0.25, seed=3)
    m = build_snapshot(cfg)
    dd, manifest = load_snapshot(cfg.out)
    assert manifest == m and manifest["schema_version"] == 1 and manifest["brand"]["id"] == "aurora"
    assert set(dd) == {"train", "dev", "test", "judge"} and dd["dev"].num_rows == dd["judge"].num_rows == 0
    assert dd["train"].num_rows + dd["test"].num_rows == 60
    assert m["counts"]["train"]["pairs"] == dd["train"].num_rows
    assert sum(m["counts"]["test"]["channels"].values()) == dd["test"].num_rows
    train_keys = {prompt_key(r) for r in dd["train"]}
    assert train_keys.isdisjoint(prompt_key(r) for r in dd["test"])
    assert set(m["counts"]["test"]["channels"]) == set(CHANNELS)  # stratified: every channel in test
    row = dd["test"][0]
    assert row["prompt"][0]["role"] == "user" and row["brand"] == "aurora" and row["source"]["line"] >= 1
    from datasets import load_dataset

    ds = load_dataset(
        "parquet", data_files={"train": f"{cfg.out}/train.parquet"}, cache_dir=str(tmp_path / "hf")
    )
    assert ds["train"].features == dd["train"].features and ds["train"].num_rows == dd["train"].num_rows


def test_split_is_deterministic_by_seed():
    from onbrand.data.records import canonicalize

    recs = [canonicalize(r) for r in _rows()]
    a = split_records(recs, {"test": 0.3}, seed=1)["test"]
    assert [r["id"] for r in a] == [r["id"] for r in split_records(recs, {"test": 0.3}, seed=1)["test"]]
    assert {r["id"] for r in a} != {r["id"] for r in split_records(recs, {"test": 0.3}, seed=2)["test"]}


def test_fixed_test_split_wins_and_leaks_are_quarantined(tmp_path):
    rows = _rows()
    train = _write(tmp_path / "train.jsonl", rows)
    test = _write(tmp_path / "test.jsonl", [rows[0], {**rows[1], "chosen": "Different but same prompt."}])
    cfg = _cfg(tmp_path, [train], test_inputs=[str(test)])
    m = build_snapshot(cfg)
    dd, _ = load_snapshot(cfg.out)
    assert dd["test"].num_rows == 2
    # rows[0] is an exact duplicate (test wins); rows[1]'s prompt is in test -> split_leak.
    assert m["import"]["duplicates"] == 1 and m["quarantined_by_reason"]["split_leak"] == 1
    assert dd["train"].num_rows == 60 - 2
    q = [json.loads(x) for x in (Path(cfg.out) / "quarantine.jsonl").read_text().splitlines()]
    assert {x["reason"] for x in q} == {"duplicate", "split_leak"}


def test_duplicate_judgements_merge_annotators(tmp_path):
    row = _rows(1)[0]
    src = _write(tmp_path / "a.jsonl", [row, {**row, "annotators": ["zed"]}])
    cfg = _cfg(tmp_path, [src], test_fraction=0.0)
    build_snapshot(cfg)
    dd, _ = load_snapshot(cfg.out)
    assert dd["train"].num_rows == 1 and dd["train"][0]["annotators"] == ["a0", "zed"]


def test_nothing_valid_is_an_error(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text("not json\n\n")
    with pytest.raises(ValueError, match="no valid pairs remain"):
        build_snapshot(_cfg(tmp_path, [src]))


def test_tokenizer_checks_truncation_and_whole_pair_drops(tokenizer):
    from onbrand.data.records import canonicalize

    short = canonicalize(
        {"prompt": "Is Halo dimmable?", "chosen": "Yes, to one percent.", "rejected": "NO!!"}
    )
    long_completion = canonicalize({"prompt": "Tell me more.", "chosen": "word " * 300, "rejected": "NOPE!!"})
    long_prompt = canonicalize({"prompt": "lamp " * 400, "chosen": "Sure.", "rejected": "NO!!"})
    kept, dropped, stats = check_records([short, long_completion, long_prompt], tokenizer, "Be kind.", 256, 8)
    assert [r["id"] for r in kept] == [short["id"], long_completion["id"]]
    assert [(q.reason, q.field) for q in dropped] == [("too_long", "prompt")]
    assert stats["pairs_exceeding_max_length"] == 2 and stats["pairs_truncated"] == 1
    assert stats["pairs_dropped_too_long"] == 1 and stats["pairs_template_mismatch"] == 0
    p, c, r = stats["lengths"][short["id"]]
    # Independent count: the completion tokens are the full render minus the prompt render.
    msgs = [{"role": "system", "content": "Be kind."}, *short["prompt"]]
    full = tokenizer.apply_chat_template(msgs + short["chosen"], tokenize=False)
    assert c == len(tokenizer(full, add_special_tokens=False)["input_ids"]) - p and 5 <= c <= 20 and r < c


def test_template_mismatch_is_reported(tokenizer):
    import copy

    from onbrand.data.records import canonicalize

    tok = copy.deepcopy(tokenizer)
    # A template that rewrites earlier turns depending on the conversation length (like templates
    # that strip reasoning from past turns): the prompt is then not a prefix of prompt + completion.
    tok.chat_template = (
        "{{ messages | length }}:{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    rec = canonicalize({"prompt": "Is Halo dimmable?", "chosen": "Yes, to one percent.", "rejected": "NO!!"})
    kept, dropped, _ = check_records([rec], tok, None, 256, 4)
    assert kept == [] and dropped[0].reason == "template_mismatch"
    assert check_records([rec], tokenizer, None, 256, 4)[0] == [rec]
