"""Leak-free splits: near-duplicate clusters stay in one split, fixed-split twins and adversarial
prompts are quarantined (split_leak, naming the twin), LSH finds what the exact path finds, and the
demo snapshot's manifest shows no cross-split pair at or above the threshold."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from onbrand.data.config import DataConfig
from onbrand.data.similarity import chosen_near_twin_rate, jaccard, near_duplicate_pairs, shingles
from onbrand.data.snapshot import build_snapshot, load_snapshot

REPO = Path(__file__).resolve().parents[2]
CARD = str(REPO / "configs" / "brands" / "aurora.yaml")
VOCAB = [f"w{i}" for i in range(400)]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _one_word_changed(text: str) -> str:
    words = text.split()
    words[len(words) // 2] = "changed"
    return " ".join(words)


def _row(prompt: str, chosen: str, k: int, channel: str = "product_question") -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": f"NO {k}!!", "channel": channel}


def _write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(tmp_path, inputs, **kw) -> DataConfig:
    return DataConfig(inputs=inputs, brand=CARD, tokenizer="", out=str(tmp_path / "snap"), **kw)


def _quarantine(cfg) -> list[dict]:
    return [json.loads(x) for x in (Path(cfg.out) / "quarantine.jsonl").read_text().splitlines()]


def _split_of(cfg) -> dict[str, str]:
    dd, _ = load_snapshot(cfg.out)
    return {r["id"]: name for name in dd for r in dd[name]}


def test_planted_near_duplicates_across_two_files_end_in_one_split(tmp_path):
    rng = random.Random(1)
    a_rows, b_rows, planted = [], [], []
    for k in range(12):  # same prompt, one word changed, in file A and file B
        p = _sentence(rng, 40)
        a_rows.append(_row(p, _sentence(rng, 20), k))
        b_rows.append(_row(_one_word_changed(p), _sentence(rng, 20), 100 + k))
        planted.append((a_rows[-1], b_rows[-1]))
    for k in range(12):  # the same chosen answer under different prompts
        c = _sentence(rng, 30)
        a_rows.append(_row(_sentence(rng, 12), c, 200 + k))
        b_rows.append(_row(_sentence(rng, 12), c, 300 + k))
        planted.append((a_rows[-1], b_rows[-1]))
    a_rows += [_row(_sentence(rng, 15), _sentence(rng, 20), 400 + k) for k in range(40)]
    cfg = _cfg(
        tmp_path,
        [_write(tmp_path / "a.jsonl", a_rows), _write(tmp_path / "b.jsonl", b_rows)],
        test_fraction=0.3,
        dev_fraction=0.2,
        seed=5,
    )
    m = build_snapshot(cfg)
    from onbrand.data.records import canonicalize

    where = _split_of(cfg)
    assert len(where) == len(a_rows) + len(b_rows) and m["quarantined_by_reason"] == {}
    pairs = [(canonicalize(x)["id"], canonicalize(y)["id"]) for x, y in planted]
    assert all(where[x] == where[y] for x, y in pairs)
    # With 24 clusters over three splits, the planted pairs do not all land in one split by luck.
    assert len({where[x] for x, _ in pairs}) == 3
    assert all(v < cfg.near_dup_threshold for v in m["leakage"]["max_similarity"].values())
    assert set(m["leakage"]["max_similarity"]) == {"train|dev", "train|test", "dev|test"}
    assert m["counts"]["judge"]["pairs"] == 0 and m["counts"]["dev"]["pairs"] > 0


def test_fixed_test_near_twin_quarantines_the_train_record_and_names_it(tmp_path):
    rng = random.Random(2)
    p, c = _sentence(rng, 40), _sentence(rng, 30)
    twin = _row(p, c, 0)
    test_rows = [twin] + [_row(_sentence(rng, 15), _sentence(rng, 20), k) for k in range(1, 5)]
    pool = [
        _row(_one_word_changed(p), _sentence(rng, 20), 10),  # prompt near-twin
        _row(_sentence(rng, 15), _one_word_changed(c), 11),  # chosen near-twin
        *[_row(_sentence(rng, 15), _sentence(rng, 20), 20 + k) for k in range(20)],
    ]
    cfg = _cfg(
        tmp_path,
        [_write(tmp_path / "pool.jsonl", pool)],
        test_inputs=[_write(tmp_path / "test.jsonl", test_rows)],
    )
    m = build_snapshot(cfg)
    from onbrand.data.records import canonicalize

    twin_id = canonicalize(twin)["id"]
    leaks = [q for q in _quarantine(cfg) if q["reason"] == "split_leak"]
    assert sorted(q["line"] for q in leaks) == [1, 2] and {q["field"] for q in leaks} == {"prompt", "chosen"}
    assert all(q["twin"]["id"] == twin_id and q["twin"]["split"] == "test" for q in leaks)
    assert all(twin_id in q["message"] and q["twin"]["similarity"] >= 0.8 for q in leaks)
    assert m["counts"]["test"]["pairs"] == 5 and m["counts"]["train"]["pairs"] == 20


def test_fixed_splits_priority_test_over_dev_over_judge(tmp_path):
    rng = random.Random(3)
    p, q = _sentence(rng, 40), _sentence(rng, 40)
    test_rows = [_row(p, _sentence(rng, 20), 0)]
    dev_rows = [_row(_one_word_changed(p), _sentence(rng, 20), 1), _row(q, _sentence(rng, 20), 2)]
    judge_rows = [_row(q, _sentence(rng, 20), 3), _row(_sentence(rng, 15), _sentence(rng, 20), 4)]
    cfg = _cfg(
        tmp_path,
        [_write(tmp_path / "pool.jsonl", [_row(_sentence(rng, 15), _sentence(rng, 20), 9)])],
        test_inputs=[_write(tmp_path / "t.jsonl", test_rows)],
        dev_inputs=[_write(tmp_path / "d.jsonl", dev_rows)],
        judge_inputs=[_write(tmp_path / "j.jsonl", judge_rows)],
    )
    m = build_snapshot(cfg)
    leaks = {(q["file"], q["line"]): q for q in _quarantine(cfg) if q["reason"] == "split_leak"}
    assert set(leaks) == {(str(tmp_path / "d.jsonl"), 1), (str(tmp_path / "j.jsonl"), 1)}
    assert leaks[(str(tmp_path / "d.jsonl"), 1)]["twin"]["split"] == "test"
    judge_leak = leaks[(str(tmp_path / "j.jsonl"), 1)]
    assert (
        judge_leak["twin"]["split"] == "dev" and "prompt also in the fixed dev split" in judge_leak["message"]
    )
    assert {k: v["pairs"] for k, v in m["counts"].items()} == {"train": 1, "dev": 1, "test": 1, "judge": 1}
    assert [s["split"] for s in m["sources"]] == ["test", "dev", "judge", "pool"]


def test_lsh_path_finds_the_exact_pairs():
    rng = random.Random(4)
    texts = []
    for k in range(300):
        texts.append(_sentence(rng, rng.randint(10, 50)))
        if k % 4 == 0:
            texts.append(_one_word_changed(texts[-1]))
        if k % 9 == 0:
            texts.append(texts[-1] + " extra words here")
    exact = near_duplicate_pairs(texts, 0.8)
    assert len(exact) >= 60 and all(s >= 0.8 for _, _, s in exact)
    assert near_duplicate_pairs(texts, 0.8, exact_limit=0) == exact
    assert near_duplicate_pairs(texts, 0.6, exact_limit=0) == near_duplicate_pairs(texts, 0.6)


def test_shingles_jaccard_and_chosen_near_twin_rate_is_strict():
    assert shingles("Hello, WORLD  again!") == {"hello world again"}
    a, b = shingles("a b c d e f"), shingles("a b c d e g")
    assert jaccard(a, b) == pytest.approx(3 / 5)
    from onbrand.data.records import canonicalize

    base = " ".join(VOCAB[:30])
    recs = [
        canonicalize({"prompt": f"q{k}", "chosen": text, "rejected": "no"})
        for k, text in enumerate([base, base + " w399", " ".join(VOCAB[100:130]), base])
    ]
    tw = chosen_near_twin_rate(recs)
    assert tw == {"rate": 0.75, "records_with_near_twin": 3, "compared": 4, "n": 5, "threshold": 0.8}
    # 26 shared 5-grams of 27: Jaccard 0.963 > 0.8, but not > 0.97 (strictly greater).
    assert chosen_near_twin_rate(recs, threshold=0.97)["records_with_near_twin"] == 2


def test_records_near_an_adversarial_prompt_are_kept_out_of_training(tmp_path):
    from onbrand.data.adversarial import adversarial_prompts
    from onbrand.data.brand import load_brand

    adv, other = adversarial_prompts(load_brand(CARD))[:2]
    rng = random.Random(6)
    pool = [
        _row("Quick one. " + adv["prompt"], _sentence(rng, 20), 0),  # contains it
        *[_row(_sentence(rng, 15), _sentence(rng, 20), k) for k in range(1, 20)],
    ]
    test_rows = [_row(other["prompt"], _sentence(rng, 20), 50)]  # test may hold one
    files = [_write(tmp_path / "pool.jsonl", pool)]
    cfg = _cfg(tmp_path, files, test_inputs=[_write(tmp_path / "t.jsonl", test_rows)])
    m = build_snapshot(cfg)
    leaks = [q for q in _quarantine(cfg) if q["reason"] == "split_leak"]
    assert len(leaks) == 1 and leaks[0]["line"] == 1 and leaks[0]["twin"]["id"] == adv["id"]
    assert adv["id"] in leaks[0]["message"] and m["counts"]["test"]["pairs"] == 1
    cfg_off = _cfg(tmp_path, files, adversarial_check=False, test_fraction=0.0)
    assert build_snapshot(cfg_off)["counts"]["train"]["pairs"] == 20


def test_bad_split_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="test_fraction 0.5 \\+ dev_fraction 0.3 \\+ judge_fraction 0.2"):
        DataConfig(inputs=["x"], test_fraction=0.5, dev_fraction=0.3, judge_fraction=0.2)
    with pytest.raises(ValueError, match=r"near_dup_threshold must be in \(0.0, 1.0\]"):
        DataConfig(inputs=["x"], near_dup_threshold=0.0)
    with pytest.raises(ValueError, match=r"dev_fraction must be in \[0.0, 1.0\)"):
        DataConfig(inputs=["x"], dev_fraction=1.0)
    # A fraction whose split has a fixed file is unused, so it does not count towards the sum.
    assert (
        DataConfig(inputs=["x"], test_inputs=["t"], test_fraction=0.5, dev_fraction=0.6).dev_fraction == 0.6
    )


def test_demo_snapshot_has_no_cross_split_near_duplicate(tmp_path, monkeypatch):
    """Acceptance: the manifest's max cross-split similarity < threshold on the demo snapshot."""
    from onbrand.config import load_config

    monkeypatch.chdir(REPO)
    cfg = load_config(DataConfig, "configs/data/demo.yaml", [f"out={tmp_path / 'snap'}", "tokenizer="])
    m = build_snapshot(cfg)
    leak = m["leakage"]
    assert leak["threshold"] == cfg.near_dup_threshold and "train|test" in leak["max_similarity"]
    assert all(v < cfg.near_dup_threshold for v in leak["max_similarity"].values())
    assert len(leak["closest"]) == 5 and leak["closest"][0]["similarity"] == max(
        leak["max_similarity"].values()
    )
    assert m["counts"]["train"]["pairs"] >= 200 and m["counts"]["test"]["pairs"] >= 50
