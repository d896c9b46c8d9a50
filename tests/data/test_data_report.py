"""Quality report: length bias and the Goodhart flag, banned hits in chosen, near-duplicates,
agreement (kappa against scikit-learn, alpha against Krippendorff's published example), files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onbrand.cli import main
from onbrand.data.brand import load_brand
from onbrand.data.records import canonicalize
from onbrand.data.report import (
    _md_openings,
    annotator_votes,
    banned_in_chosen,
    chosen_only_openings,
    length_bias,
    near_duplicate_rate,
)

REPO = Path(__file__).resolve().parents[2]
CARD = REPO / "configs" / "brands" / "aurora.yaml"


def _rec(prompt, chosen, rejected, **kw):
    return canonicalize({"prompt": prompt, "chosen": chosen, "rejected": rejected, **kw})


def test_length_bias_share_ratio_and_goodhart_flag():
    recs = [
        _rec(
            f"q{i}", "a much longer chosen answer" if i < 7 else "short", "brief" if i < 7 else "a longer one"
        )
        for i in range(10)
    ]
    lb = length_bias(recs)
    assert lb["chosen_longer_share_chars"] == 0.7 and lb["goodhart_warning"] is True
    toks = {r["id"]: [10, 5, 9] for r in recs}  # by tokens chosen is never longer
    lb = length_bias(recs, toks)
    assert lb["chosen_longer_share_tokens"] == 0.0 and lb["goodhart_warning"] is False
    assert lb["median_length_ratio_tokens"] == pytest.approx(5 / 9, abs=1e-4)


def test_openings_only_chosen_answers_have_are_flagged():
    recs = [_rec(f"q{i}", f"Thanks for asking! Answer {i}.", f"Nope {i}.") for i in range(11)]
    recs += [_rec(f"p{i}", f"Sure, the <b>|lamp {i}", f"Sure, the <b>|lamp is bad {i}") for i in range(12)]
    recs += [_rec(f"r{i}", f"Glad you asked {i}", f"x {i}") for i in range(9)]  # under min_count
    recs += [_rec("s", "Thanks for asking, no.", "Thanks for asking, maybe.")]  # 11 of 12 still >= 0.9
    op = chosen_only_openings(recs, share=0.9)
    assert op["flagged"] == [{"opening": "thanks for asking", "chosen": 12, "rejected": 1}]
    assert chosen_only_openings(recs, share=0.95)["flagged"] == []  # 12/13 < 0.95
    op["flagged"].append({"opening": "<script>|x", "chosen": 10, "rejected": 0})
    md = "\n".join(_md_openings({"chosen_only_openings": op}))
    assert "| thanks for asking | 12 | 1 |" in md and "&lt;script&gt;\\|x" in md and "<script>" not in md


def test_banned_hits_in_chosen_are_counted():
    card = load_brand(CARD)
    recs = [
        _rec("Is it good?", "It is 100% guaranteed.", "Fine.", channel="product_question"),
        _rec("And Halo?", "It dims to one percent at night.", "BEST EVER!!", channel="product_question"),
    ]
    b = banned_in_chosen(recs, card)
    assert b["hits"] == 1 and b["by_rule"] == {"guarantee": 1} and b["examples"][0]["id"] == recs[0]["id"]


def test_near_duplicates_found_and_distinct_texts_not():
    base = (
        "the dawn lamp brightens slowly over thirty minutes from a soft amber to a clear daylight white "
        "before your alarm, and you can set the length in the app between ten and sixty minutes"
    )
    recs = [
        _rec("Tell me about Dawn.", base, "NO IDEA"),
        _rec("Tell me about Dawn!", base + " today", "NO IDEA"),
        _rec("Halo charging?", "The base has a ten watt wireless pad for phones.", "Dunno, google it"),
    ]
    nd = near_duplicate_rate(recs)
    assert (
        nd["pairs"] == 1
        and nd["records_with_near_duplicate"] == 2
        and nd["rate"] == pytest.approx(2 / 3, abs=1e-4)
    )


def test_report_leakage_section_split_counts_and_small_data_warnings(tmp_path):
    from onbrand.data.config import DataConfig
    from onbrand.data.report import write_report
    from onbrand.data.snapshot import build_snapshot

    rows = [
        {
            "prompt": f"<script>|{i} Tell me about lamp {i} in the {('red', 'blue', 'green')[i % 3]} room?",
            "chosen": f"<script>|{i} Lamp {i} has a warm light and a dimmer.",
            "rejected": f"NO {i}!!",
        }
        for i in range(40)
    ]
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "snap"
    build_snapshot(
        DataConfig(inputs=[str(src)], tokenizer="", out=str(out), test_fraction=0.25, dev_fraction=0.25)
    )
    rep = write_report(out, out / "report")
    md = (out / "report" / "report.md").read_text()
    leak = rep["leakage"]
    assert set(rep["counts"]) == {"train", "dev", "test", "judge"} and rep["counts"]["dev"]["pairs"] == 10
    assert (
        set(leak["max_similarity"]) == {"train|dev", "train|test", "dev|test"} and len(leak["closest"]) == 5
    )
    top = leak["closest"][0]
    assert top["similarity"] == max(leak["max_similarity"].values()) < 0.8
    assert top["a_excerpt"].startswith("<script>|") and "## Leakage" in md and top["a_id"][:12] in md
    assert "&lt;script&gt;\\|" in md and "<script>" not in md
    assert rep["warnings"] == [
        "train has 20 pairs (< 200): too few to see an effect",
        "test has 10 prompts (< 50): too few to see an effect",
    ]
    assert "> **Warning**: train has 20 pairs (&lt; 200): too few to see an effect." in md
    assert "Chosen answers with a near-twin" in md and rep["chosen_near_twins"]["compared"] == 40


def test_agreement_votes_kappa_matches_sklearn_and_alpha_matches_krippendorff():
    cohen_kappa_score = pytest.importorskip("sklearn.metrics").cohen_kappa_score

    from onbrand.stats.agreement import agreement_report, krippendorff_alpha

    # 12 pairs judged by a and b; b flips its preference on 3 of them.
    recs = []
    for i in range(12):
        c, r = f"good answer {i}", f"bad answer {i}"
        recs.append(_rec(f"q{i}", c, r, annotators=["a"] + ([] if i in (2, 5, 9) else ["b"])))
        if i in (2, 5, 9):
            recs.append(_rec(f"q{i}", r, c, annotators=["b"]))
    triples = annotator_votes(recs)
    votes = {(k, a): v for k, a, v in triples}
    keys = sorted({k for k, _, _ in triples})
    va, vb = [votes[(k, "a")] for k in keys], [votes[(k, "b")] for k in keys]
    assert sum(x != y for x, y in zip(va, vb)) == 3 and len(set(va)) == 2  # two real categories
    rep = agreement_report(triples)
    assert rep["cohen_kappa"][0]["kappa"] == pytest.approx(cohen_kappa_score(va, vb), abs=1e-4)
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: 0.743.
    units = [
        [1, 1, 1],
        [2, 2, 3, 2],
        [3, 3, 3, 3],
        [3, 3, 3, 3],
        [2, 2, 2, 2],
        [1, 2, 3, 4],
        [4, 4, 4, 4],
        [1, 1, 2, 1],
        [2, 2, 2, 2],
        [5, 5, 5],
        [1, 1],
        [3],
    ]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)


def test_cli_demo_import_snapshot_report(tmp_path, monkeypatch, capsys):
    """Acceptance: import the demo files, snapshot and report; zero banned hits in chosen."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "demo"
    over = [f"out={out}/snapshot", "tokenizer="]  # the tokenizer path is covered in test_data_snapshot
    assert main(["data", "import", "--out", str(out / "imported")]) == 0
    assert "quarantined 0" in capsys.readouterr().out
    assert main(["data", "snapshot", *over]) == 0
    assert main(["data", "report", *over]) == 0
    rep = json.loads((out / "snapshot" / "report" / "report.json").read_text())
    md = (out / "snapshot" / "report" / "report.md").read_text()
    png = (out / "snapshot" / "report" / "lengths.png").read_bytes()
    assert (
        png[:4] == b"\x89PNG"
        and "## Length bias" in md
        and "Banned-phrase/claim hits in **chosen**: **0**" in md
    )
    assert rep["banned_in_chosen"]["hits"] == 0 and rep["rejected_rule_failures"]["share_failing"] == 1.0
    assert rep["length_bias"]["all"]["chosen_longer_share_chars"] <= 0.6
    assert rep["near_duplicates"]["rate"] < 0.05
    assert "## Leakage" in md and rep["leakage"]["recorded"] and rep["warnings"] == []
    counts = rep["counts"]
    assert counts["train"]["pairs"] >= 200 and counts["test"]["pairs"] >= 50
    assert len(counts["train"]["channels"]) >= 6 and len(rep["import"]["formats"]) >= 5
    assert rep["agreement"]["items_overlapping"] > 0
