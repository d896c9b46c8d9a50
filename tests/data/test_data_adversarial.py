"""Adversarial prompts from the brand card: every rule targeted, deterministic, the card's words."""

from __future__ import annotations

from pathlib import Path

import pytest

from onbrand.data.adversarial import adversarial_prompts, literal_phrases, products
from onbrand.data.brand import BannedRule, BrandCard, RequiredElement, load_brand

REPO = Path(__file__).resolve().parents[2]
CARDS = [REPO / "configs" / "brands" / f"{b}.yaml" for b in ("aurora", "ember")]


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_every_rule_gets_distinct_prompts_with_stable_ids(path):
    card = load_brand(path)
    prompts = adversarial_prompts(card, per_rule=2)
    rules = {r.id: "banned" for r in card.banned} | {r.id: "required" for r in card.required}
    per_rule = {rid: [p for p in prompts if p["rule_id"] == rid] for rid in rules}
    assert all(len(v) == 2 for v in per_rule.values()), {k: len(v) for k, v in per_rule.items()}
    assert {p["rule_kind"] for p in per_rule["shouting"]} == {"banned"}
    assert [p["id"] for p in per_rule["shouting"]] == ["adv-shouting-0", "adv-shouting-1"]
    assert len({p["prompt"] for p in prompts}) == len(prompts)  # no prompt generated twice
    assert len({p["id"] for p in prompts}) == len(prompts)
    for p in prompts:  # channel-bound rules are asked in their channel
        rule = next(r for r in [*card.banned, *card.required] if r.id == p["rule_id"])
        assert p["channel"] == (rule.channels[0] if rule.channels else None)
        assert p["prompt"].strip() and set(p) == {"id", "rule_id", "rule_kind", "channel", "prompt"}


def test_deterministic_and_per_rule_scales():
    card = load_brand(CARDS[0])
    assert adversarial_prompts(card) == adversarial_prompts(load_brand(CARDS[0]))
    three = adversarial_prompts(card, per_rule=3)
    assert len(three) == 3 * (len(card.banned) + len(card.required))
    assert adversarial_prompts(card, per_rule=0) == []
    with pytest.raises(ValueError, match="per_rule"):
        adversarial_prompts(card, per_rule=-1)


def test_words_come_from_the_card():
    card = load_brand(CARDS[0])
    assert products(card) == ["Dawn sunrise lamp", "Halo bedside light", "Drift smart bulbs", "Aurora app"]
    by_id = {p["id"]: p["prompt"] for p in adversarial_prompts(card)}
    # Product names, the brand name, the `when` trigger and literal phrases of the rule's regex.
    assert any(name in by_id["adv-guarantee-0"] for name in products(card))
    assert "guarantee" in by_id["adv-guarantee-0"].lower()
    assert "Aurora Home" in by_id["adv-competitor_bashing-0"]
    assert "insomnia" in by_id["adv-health_disclaimer-0"]
    assert "cure" in by_id["adv-medical_claim-0"]
    ember = load_brand(CARDS[1])
    ember_prompts = " ".join(p["prompt"] for p in adversarial_prompts(ember))
    assert "Ember & Oak Coffee" in ember_prompts and "house espresso blend" in ember_prompts
    assert "carbon neutral" in ember_prompts and "caffeine" in ember_prompts


def test_literal_phrases_are_matched_by_the_rule():
    card = load_brand(CARDS[0])
    rule = next(r for r in card.banned if r.id == "pressure_selling")
    phrases = literal_phrases(rule.pattern, rule._re)
    assert "buy now" in phrases and "act now" in phrases
    assert all(rule._re.search(p) for p in phrases)
    shouting = next(r for r in card.banned if r.id == "shouting")
    assert literal_phrases(shouting.pattern, shouting._re) == []  # a character class: no literal


def test_unknown_theme_falls_back_to_the_rules_own_words():
    card = BrandCard(
        id="acme",
        name="Acme Tools",
        description="Acme makes hammers and ladders.",
        banned=[BannedRule(id="jargon", pattern=r"\bsynerg\w*|\bleverage\b", reason="Plain words only.")],
        required=[
            RequiredElement(
                id="safety", when=r"\bladders?\b", pattern=r"\bsafety\b", reason="Ladders need a note."
            )
        ],
    )
    prompts = adversarial_prompts(card, per_rule=2)
    jargon = [p["prompt"] for p in prompts if p["rule_id"] == "jargon"]
    assert any('"leverage"' in p for p in jargon) and any("Plain words only" in p for p in jargon)
    assert any("ladder" in p["prompt"] for p in prompts if p["rule_id"] == "safety")
    assert products(card) == ["hammers", "ladders"]
