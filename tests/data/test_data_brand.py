"""Brand card: schema validation, the system prompt, rule checks and the shipped cards/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from onbrand.config import ConfigError
from onbrand.data.brand import RULE_KINDS, load_brand

REPO = Path(__file__).resolve().parents[2]
AURORA = REPO / "configs" / "brands" / "aurora.yaml"


@pytest.fixture(scope="module")
def card():
    return load_brand(AURORA)


def test_system_prompt_is_deterministic_and_carries_the_card(card):
    sp = card.system_prompt()
    assert sp == load_brand(AURORA).system_prompt()
    assert sp.startswith("You are the assistant of Aurora Home.")
    for words in ("warm, precise", "Never:", "Always:", "Criticise competitors"):
        assert words in sp
    assert "SmolLM" not in sp


@pytest.mark.parametrize(
    "text, channel, rule, kind",
    [
        ("This lamp is a GAME changer for your bedroom.", "product_question", "shouting", "banned_phrase"),
        ("Love it! So good! Wow.", "social_post", "exclamation_spam", "banned_phrase"),
        (
            "Results are 100% guaranteed for every customer here.",
            "guarantee_request",
            "guarantee",
            "banned_claim",
        ),
        (
            "The Dawn lamp cures insomnia within a week of use.",
            "health_claim",
            "medical_claim",
            "banned_claim",
        ),
        (
            "Lumina lamps are overpriced junk, honestly, buy ours.",
            "competitor_request",
            "competitor_bashing",
            "banned_claim",
        ),
        (
            "Our lamp helps with insomnia and makes mornings calm.",
            "health_claim",
            "health_disclaimer",
            "required_element",
        ),
        (
            "Reply with your order number and we will send a replacement.",
            "complaint_reply",
            "complaint_apology",
            "required_element",
        ),
        (
            "Meet the new Dawn lamp with its soft sunrise for gentle mornings",
            "email_subject",
            "email_subject_chars",
            "length_limit",
        ),
    ],
)
def test_check_detects_each_rule_kind(card, text, channel, rule, kind):
    checks = {c.rule_id: c for c in card.check(text, channel)}
    assert rule in checks, sorted(checks)
    assert checks[rule].kind == kind and kind in RULE_KINDS
    assert not checks[rule].passed and checks[rule].detail
    assert 0.0 <= card.compliance_score(text, channel) < 1.0


def test_on_brand_text_passes_everything(card):
    text = (
        "I'm sorry your Halo light stopped pairing. Please reply with your order number and we will "
        "send you a replacement today."
    )
    checks = card.check(text, "complaint_reply")
    assert checks and all(c.passed for c in checks)
    assert card.compliance_score(text, "complaint_reply") == 1.0
    # The health disclaimer applies in any channel once its trigger matches.
    assert any(c.rule_id == "health_disclaimer" for c in card.check("Fall asleep faster with it.", None))
    assert card.banned_hits(text, "complaint_reply") == []


def test_channel_rules_need_a_known_channel(card):
    checks = card.check("Reply with your order number.")
    assert "complaint_apology" not in {c.rule_id for c in checks}
    assert not any(c.kind == "length_limit" for c in checks)
    text = "Reply with your order number. It is 100% guaranteed."
    assert card.check(text, "fax") == card.check(text, None)  # unknown channel: channel-free rules


@pytest.mark.parametrize(
    "body, needle",
    [
        ("banned:\n  - id: x\n    pattern: '(unclosed'\n    reason: r\n", "invalid regex"),
        ("banned:\n  - id: x\n    pattern: a\n    reason: r\n    channels: [fax]\n", "unknown channel"),
        (
            "exemplars:\n  - channel: c\n    text: WE GUARANTEE IT\n"
            "banned:\n  - id: caps\n    pattern: '[A-Z]{4,}'\n    ignore_case: false\n    reason: r\n",
            "breaks the card's own rules",
        ),
        ("required:\n  - id: r1\n    pattern: x\n    reason: r\n", "set channels, when, or both"),
        ("colour: blue\n", "unknown key"),
    ],
)
def test_bad_cards_fail_with_file_and_reason(tmp_path, body, needle):
    path = tmp_path / "bad.yaml"
    path.write_text("id: b\nname: B\ndescription: d\nchannels:\n  c: {max_words: 5}\n" + body)
    with pytest.raises(ConfigError) as e:
        load_brand(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_every_shipped_card_loads():
    cards = sorted((REPO / "configs" / "brands").glob("*.yaml"))
    assert len(cards) >= 2
    for path in cards:
        c = load_brand(path)
        assert c.system_prompt() and c.channels and c.banned


AURORA_FILES = {
    "product_complaint.trl.jsonl",
    "social_email.csv",
    "health.hh-rlhf.jsonl",
    "competitor.uf.jsonl",
    "guarantee.standard.jsonl",
    "test.canonical.jsonl",
    "dev.canonical.jsonl",
    "judge.canonical.jsonl",
}


@pytest.mark.parametrize(
    "brand, files, fixed",
    [
        ("aurora", AURORA_FILES, {"test": 14, "dev": 7, "judge": 20}),
        ("ember", {"pairs.csv", "test.canonical.jsonl", "judge.canonical.jsonl"}, {"test": 2, "judge": 2}),
    ],
)
def test_bundled_data_is_what_the_generator_builds(tmp_path, brand, files, fixed):
    """docs/data.md says how the demo data was built: rebuilding it gives the shipped bytes, every
    shipped data file included, with the fixed splits per channel and few chosen near-twins."""
    import json
    import subprocess
    import sys

    script = REPO / "scripts" / "build_demo_data.py"
    done = subprocess.run(
        [sys.executable, str(script), "--brand", brand, "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    shipped = REPO / "data" / "brands" / brand
    built = {p.name for p in tmp_path.iterdir()}
    assert built == files == {p.name for p in shipped.iterdir()} - {"bank.yaml"}
    assert all((shipped / name).read_bytes() == (tmp_path / name).read_bytes() for name in built)
    info = json.loads(done.stdout)
    assert (
        info["chosen_near_twin_rate"]["rate"] <= 0.05
        and info["chosen_near_twin_rate"]["compared"] == info["pairs"]
    )
    channels = info["channels"]["train"].keys()
    for split, per_channel in fixed.items():
        assert info["channels"][split] == {c: per_channel for c in channels}
    assert info["splits"]["train"] >= (300 if brand == "aurora" else 32)
    assert 0.4 <= info["chosen_longer_share"] <= 0.6


def test_builder_keeps_each_bank_item_inside_one_split():
    """Whole items per split: the fixed splits get exactly their size when item sizes allow, and
    no item's pairs land in two splits (a test item's facts never appear in train)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_demo_data", REPO / "scripts" / "build_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sizes = [4, 16, 3, 12, 4, 3, 16, 4, 3, 16, 4]
    groups = [[(k, i) for i in range(n)] for k, n in enumerate(sizes)]
    out = mod.assign_items(groups, {"test": 14, "dev": 7, "judge": 20, "train": None})
    assert {s: len(out[s]) for s in ("test", "dev", "judge")} == {"test": 14, "dev": 7, "judge": 20}
    items = {s: {k for k, _ in pairs} for s, pairs in out.items()}
    assert sum(len(v) for v in items.values()) == len(sizes)  # every item in exactly one split
    assert len(out["train"]) == sum(sizes) - 41  # exact fits: nothing dropped
