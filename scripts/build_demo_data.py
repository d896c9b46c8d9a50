"""Build a brand's bundled demo preference data from its template bank (deterministic).

    python scripts/build_demo_data.py --brand aurora
    python scripts/build_demo_data.py --brand <id> --counts channel=N ... --test-per-channel K

Reads ``data/brands/<brand>/bank.yaml`` and ``configs/brands/<brand>.yaml``; writes the files named
in ``--layout`` (one source format per group of channels, so ``onbrand data import`` is exercised)
plus the fixed test split as canonical JSONL, and prints the balance figures (chosen-longer share,
near-duplicates, rule checks). Every chosen text must pass every card rule and every rejected text
must fail at least one, or the script stops with the offending text.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from onbrand.data.brand import load_brand
from onbrand.data.records import canonicalize, normalize_text
from onbrand.data.report import near_duplicate_rate
from onbrand.runs import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
TAGS = {  # card rule id -> annotator reason tag
    "shouting": "tone",
    "exclamation_spam": "tone",
    "hype_words": "tone",
    "pressure_selling": "tone",
    "dismissive": "respect",
    "hashtag_spam": "tone",
    "guarantee": "guarantee",
    "medical_claim": "banned_claim",
    "competitor_bashing": "competitor",
    "health_disclaimer": "missing_disclaimer",
    "complaint_apology": "respect",
    "complaint_next_step": "helpfulness",
}
ANNOTATORS = ("ann-ines", "ann-kofi", "ann-mei")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _first_sentence(s: str) -> str:
    m = re.match(r"(.+?[.?!])(\s|$)", s)
    return m.group(1) if m else s


def expand_items(ch: dict[str, Any]) -> list[dict[str, Any]]:
    """Each bank item, once per value of its ``p``/``c`` list (product or competitor slot)."""
    out = []
    for item in ch["items"]:
        for key in ("p", "c"):
            if isinstance(item.get(key), list):
                out += [{**item, key: v} for v in item[key]]
                break
        else:
            out.append(item)
    return out


def combos(item: dict[str, Any]) -> list[tuple[int, int]]:
    """(question, answer) variant pairs of an item, ordered so consecutive uses change both."""
    nq, na = len(item["q"]), len(item["a"])
    return sorted(itertools.product(range(nq), range(na)), key=lambda qa: ((qa[1] - qa[0]) % na, qa[0]))


def render_pair(
    ch: dict[str, Any],
    item: dict[str, Any],
    fillers: dict[str, list[str]],
    combo: tuple[int, int],
    rng: random.Random,
) -> tuple[str, str, dict[str, str]]:
    """(prompt, chosen, {style: rejected}) for one (question, answer) variant pair of ``item``."""
    slots = {"p": item.get("p", ""), "c": item.get("c", "")}
    q = item["q"][combo[0]].format(**slots)
    opener = ch["openers"][rng.randrange(len(ch["openers"]))]
    # A sentence-ending opener ("Not happy. ") starts a new sentence; "Quick question: " does not.
    prompt = _cap(opener) + (_cap(q) if not opener or opener.rstrip()[-1] in ".?!" else q)
    a = item["a"][combo[1]].format(**slots)
    lead = ch["leads"][rng.randrange(len(ch["leads"]))]
    chosen = _cap(lead + a + ch["tails"][rng.randrange(len(ch["tails"]))])
    pick = {name: vals[rng.randrange(len(vals))] for name, vals in fillers.items()}
    for key, vals in item.items():  # item-level slots for rejected styles (blame, cure, bash, ...)
        if key not in ("q", "a", "p", "c") and isinstance(vals, list):
            pick[key] = _cap(vals[rng.randrange(len(vals))].format(**slots))
    if "fix" in ch:
        pick["fix"] = ch["fix"][rng.randrange(len(ch["fix"]))]
    values = {**slots, **pick, "a": a, "a_cap": _cap(a), "a_first": _cap(_first_sentence(a)), "a_short": a}
    values["a_upper"] = _cap(a).upper()
    values["a_first_upper"] = values["a_first"].upper()
    for key in ("fix", "promise_item"):
        if key in values:
            values[f"{key}_upper"] = values[key].upper()
    # A pleasantry lead ("Thanks for asking. ") only ever on the chosen side is a spurious feature:
    # DPO learned it as "the brand" and opened every channel with it, complaints included (dropping
    # the apology). Channels marked lead_on_rejected put the same lead on the rejected side too.
    prefix = lead if ch.get("lead_on_rejected") else ""
    rejected = {}
    for style, tpl in ch["rejected_styles"].items():
        try:
            text = tpl.format(**values)
        except KeyError:
            continue  # this style needs a slot the item does not have
        with_lead = _cap(prefix + text)
        # only the case differs (shouting the answer): the lead must stay, or the pair is "identical"
        same = normalize_text(with_lead) == normalize_text(chosen)
        rejected[style] = _cap(text) if same else with_lead
    return prompt, chosen, rejected


def choose_rejected(chosen: str, options: dict[str, str], state: dict[str, int], order: list[str]) -> str:
    """Pick a style, steering the running share of 'chosen longer' towards 50%."""
    longer = state["chosen_longer"] > 0.5 * max(1, state["n"])
    want = [s for s in order if s in options and (len(options[s]) >= len(chosen)) == longer]
    style = want[0] if want else next(s for s in order if s in options)
    order.remove(style)
    order.append(style)  # rotate so styles stay varied
    return style


def build_channel(
    card, name: str, ch: dict[str, Any], fillers, n: int, n_test: int, rng, states
) -> list[dict[str, Any]]:
    """``n`` pairs of one channel; the first ``n_test`` are the fixed test split. ``states`` (test,
    train) carry the running chosen-longer counts used to steer the rejected style choice."""
    items = expand_items(ch)
    rng.shuffle(items)
    uses: Counter = Counter()
    seen_prompts: set[str] = set()
    order = list(ch["rejected_styles"])
    out = []
    for item in itertools.islice(itertools.cycle(items), n * 8):
        if len(out) == n:
            break
        key = json.dumps(item, sort_keys=True)
        todo = combos(item)
        if uses[key] >= len(todo):
            continue  # every (question, answer) pairing of this item is used: no near-copies
        for _ in range(8):  # another opener when this exact prompt is taken
            prompt, chosen, options = render_pair(ch, item, fillers, todo[uses[key]], rng)
            if prompt.casefold() not in seen_prompts:
                break
        uses[key] += 1
        if prompt.casefold() in seen_prompts:
            continue
        bad = [c for c in card.check(chosen, name) if not c.passed]
        if bad:
            raise SystemExit(f"chosen breaks the card ({name}): {chosen!r}: {bad}")
        options = {s: t for s, t in options.items() if any(not c.passed for c in card.check(t, name))}
        if not options:
            raise SystemExit(f"no rejected style breaks a rule for {prompt!r}")
        state = states[0] if len(out) < n_test else states[1]
        style = choose_rejected(chosen, options, state, order)
        rejected = options[style]
        failed = [c.rule_id for c in card.check(rejected, name) if not c.passed]
        state["n"] += 1
        state["chosen_longer"] += len(chosen) > len(rejected)
        seen_prompts.add(prompt.casefold())
        out.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "brand": card.id,
                "channel": name,
                "reason_tags": sorted(
                    {TAGS.get(r, "length" if r.startswith(name) else "tone") for r in failed}
                ),
                "rejected_style": style,
            }
        )
    if len(out) < n:
        raise SystemExit(f"channel {name}: only {len(out)} distinct prompts, asked for {n}")
    return out


def annotate(records: list[dict[str, Any]], rng: random.Random, created: str) -> None:
    """Synthetic provenance: one annotator per pair, two or three on about one pair in five (they
    agree: the bank's chosen side always follows the card)."""
    for i, r in enumerate(records):
        k = 1 if rng.random() > 0.2 else rng.choice((2, 3))
        r["annotators"] = sorted(rng.sample(ANNOTATORS, k))
        r["created_at"] = f"{created}T{9 + i % 8:02d}:{i % 60:02d}:00+00:00"


# ----------------------------------------------------------------------------- writers
def _meta(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("brand", "channel", "annotators", "reason_tags", "created_at") if k in r}


def as_trl(r):
    return {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], **_meta(r)}


def as_standard(r):
    return {
        "prompt": r["prompt"][0]["content"],
        "chosen": r["chosen"][0]["content"],
        "rejected": r["rejected"][0]["content"],
        **_meta(r),
    }


def as_hh(r):
    pre = f"\n\nHuman: {r['prompt'][0]['content']}\n\nAssistant: "
    return {
        "chosen": pre + r["chosen"][0]["content"],
        "rejected": pre + r["rejected"][0]["content"],
        **_meta(r),
    }


def as_uf(r, rng):
    user = r["prompt"][0]
    sc = rng.choice((7.0, 7.5, 8.0, 8.5, 9.0))
    return {
        "prompt": user["content"],
        "prompt_id": r["id"][:16],
        "chosen": [user, r["chosen"][0]],
        "rejected": [user, r["rejected"][0]],
        "messages": [user, r["chosen"][0]],
        "score_chosen": sc,
        "score_rejected": sc - rng.choice((2.0, 3.0, 4.0)),
        **_meta(r),
    }


def as_csv(records) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["prompt", "chosen", "rejected", "brand", "channel", "annotators", "reason_tags", "created_at"]
    )
    for r in records:
        w.writerow(
            [
                r["prompt"][0]["content"],
                r["chosen"][0]["content"],
                r["rejected"][0]["content"],
                r["brand"],
                r["channel"],
                ";".join(r.get("annotators", [])),
                ";".join(r.get("reason_tags", [])),
                r.get("created_at", ""),
            ]
        )
    return buf.getvalue()


def write(out: Path, layout: dict[str, dict[str, Any]], train, test, rng) -> dict[str, int]:
    counts = {}
    for fname, spec in layout.items():
        recs = (
            test if spec["format"] == "canonical" else [r for r in train if r["channel"] in spec["channels"]]
        )
        if spec["format"] == "csv":
            text = as_csv(recs)
        else:
            conv = {
                "trl": as_trl,
                "standard": as_standard,
                "hh-rlhf": as_hh,
                "canonical": lambda r: r,
                "ultrafeedback": lambda r: as_uf(r, rng),
            }[spec["format"]]
            text = "".join(json.dumps(conv(r), ensure_ascii=False) + "\n" for r in recs)
        atomic_write_text(out / fname, text)
        counts[fname] = len(recs)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brand", default="aurora")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--created", default="2026-11-20", help="date stamped on created_at")
    p.add_argument("--out", help="output folder (default: data/brands/<brand>, next to the bank)")
    args = p.parse_args(argv)
    src = REPO / "data" / "brands" / args.brand
    out = Path(args.out) if args.out else src
    bank = yaml.safe_load((src / "bank.yaml").read_text())
    card = load_brand(REPO / "configs" / "brands" / f"{args.brand}.yaml")
    rng = random.Random(args.seed)
    build = bank["build"]
    train, test = [], []
    for name, ch in bank["channels"].items():
        n_train, n_test = build["counts"][name], build["test_per_channel"]
        # Steer each channel (and split) towards chosen-longer in half of its pairs.
        states = ({"n": 0, "chosen_longer": 0}, {"n": 0, "chosen_longer": 0})
        recs = build_channel(card, name, ch, bank["fillers"], n_train + n_test, n_test, rng, states)
        test += recs[:n_test]
        train += recs[n_test:]
    annotate(train, rng, args.created)
    annotate(test, rng, args.created)
    for r in train + test:
        r.pop("rejected_style")
        r.update(canonicalize(r))
        r["source"] = None
    test = [{k: v for k, v in r.items() if k != "source"} for r in test]
    counts = write(out, build["layout"], train, test, rng)
    every = train + test
    longer = sum(len(r["chosen"][0]["content"]) > len(r["rejected"][0]["content"]) for r in every)
    print(
        json.dumps(
            {
                "files": counts,
                "pairs": len(every),
                "train": len(train),
                "test": len(test),
                "channels": dict(Counter(r["channel"] for r in every)),
                "chosen_longer_share": round(longer / len(every), 3),
                "near_duplicate_rate": near_duplicate_rate(every),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
