"""Build a brand's bundled demo preference data from its template bank (deterministic).

    python scripts/build_demo_data.py --brand aurora [--out DIR]

Reads ``data/brands/<brand>/bank.yaml`` and ``configs/brands/<brand>.yaml``. Whole bank *items*
(an item with all its product/competitor expansions) go to one split, so a test item's facts and
phrasings never appear in train: per channel, ``build.splits`` pairs go to test, dev and judge
(fixed canonical JSONL files) and the rest to train, written in the source formats named in
``build.layout`` (so ``onbrand data import`` is exercised). Every chosen text must pass every card
rule and every rejected text must fail at least one, or the script stops with the offending text.
A rendering whose chosen answer has a near-twin among those already kept (word 5-gram Jaccard >
0.8) is skipped, and each answer text is used at most ``build.max_uses_per_answer`` times. The
script prints the balance figures and stops when more than ``build.max_near_twin_rate`` of chosen
answers still have a near-twin.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

from onbrand.artifacts import atomic_write_text
from onbrand.data.brand import load_brand
from onbrand.data.records import canonicalize, normalize_text
from onbrand.data.report import near_duplicate_rate
from onbrand.data.similarity import chosen_near_twin_rate, shingles

REPO = Path(__file__).resolve().parent.parent
SPLITS = ("test", "dev", "judge", "train")  # fill order: the fixed splits first, train gets the rest
TWIN_N, TWIN_JACCARD = 5, 0.8  # a chosen near-twin: word 5-gram Jaccard strictly above 0.8
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


def expand_item(item: dict[str, Any]) -> list[dict[str, Any]]:
    """One bank item, once per value of its ``p``/``c`` list (product or competitor slot)."""
    for key in ("p", "c"):
        if isinstance(item.get(key), list):
            return [{**item, key: v} for v in item[key]]
    return [item]


def combos(n_exp: int, n_q: int, n_a: int) -> list[tuple[int, int, int]]:
    """(expansion, question, answer) triples of an item: every answer once, then every answer
    again with another expansion and question, and so on (consecutive uses change all three)."""
    per_a = [
        sorted(
            itertools.product(range(n_exp), range(n_q)),
            key=lambda eq, a=a: ((eq[0] - a) % n_exp, (eq[1] - a - eq[0]) % n_q),
        )
        for a in range(n_a)
    ]
    return [(*per_a[a][r], a) for r in range(n_exp * n_q) for a in range(n_a)]


class TwinIndex:
    """Chosen answers kept so far, indexed by word 5-gram, to refuse near-twins of them."""

    def __init__(self) -> None:
        self.sets: list[set[str]] = []
        self.postings: dict[str, list[int]] = defaultdict(list)

    def has_twin(self, text: str) -> bool:
        s = shingles(text, n=TWIN_N)
        shared = Counter(j for g in s for j in self.postings.get(g, ()))
        return any(k / (len(s) + len(self.sets[j]) - k) > TWIN_JACCARD for j, k in shared.items())

    def add(self, text: str) -> None:
        s = shingles(text, n=TWIN_N)
        for g in s:
            self.postings[g].append(len(self.sets))
        self.sets.append(s)


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


def item_pairs(card, name, ch, item, ctx) -> list[dict[str, Any]]:
    """Every usable rendering of one bank item (all its expansions): distinct prompts, answers
    used at most ``max_uses`` times, no chosen near-twin of one already kept, checked against the
    card. ``ctx`` carries the rng, fillers, the twin index and the seen prompts/answer uses."""
    rng, twins, uses = ctx["rng"], ctx["twins"], ctx["uses"]
    exp = expand_item(item)
    out = []
    for e, q, a in combos(len(exp), len(item["q"]), len(item["a"])):
        core = normalize_text(item["a"][a].format(p=exp[e].get("p", ""), c=exp[e].get("c", "")))
        if uses[core] >= ctx["max_uses"]:
            continue
        for _ in range(8):  # another opener / lead / tail when the prompt or chosen is taken
            prompt, chosen, options = render_pair(ch, exp[e], ctx["fillers"], (q, a), rng)
            if prompt.casefold() not in ctx["prompts"] and not twins.has_twin(chosen):
                break
        else:
            ctx["skipped"] += 1
            continue
        bad = [c for c in card.check(chosen, name) if not c.passed]
        if bad:
            raise SystemExit(f"chosen breaks the card ({name}): {chosen!r}: {bad}")
        options = {s: t for s, t in options.items() if any(not c.passed for c in card.check(t, name))}
        if not options:
            raise SystemExit(f"no rejected style breaks a rule for {prompt!r}")
        uses[core] += 1
        ctx["prompts"].add(prompt.casefold())
        twins.add(chosen)
        out.append({"prompt": prompt, "chosen": chosen, "options": options})
    return out


def assign_items(groups: list[list[dict]], want: dict[str, int | None]) -> dict[str, list[dict]]:
    """Whole items to splits in ``SPLITS`` order: each split takes the subset of the remaining
    items (first found, in shuffled order) whose pair count reaches its ``want`` with the least
    overshoot (None: all the rest). Pairs of an item beyond a split's need are dropped, never
    moved to another split."""
    todo = list(groups)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        need = want.get(split)
        take = list(range(len(todo))) if need is None else _least_overshoot([len(g) for g in todo], need)
        for k in take:
            out[split] += todo[k]
        todo = [g for k, g in enumerate(todo) if k not in take]
        if need is not None:
            out[split] = out[split][:need]
    return out


def _least_overshoot(sizes: list[int], need: int) -> list[int]:
    """Indices of a subset of ``sizes`` with sum >= ``need``, as small a sum as possible (0/1
    subset sum; the first subset found for each sum wins, so the choice is deterministic)."""
    best: dict[int, list[int]] = {0: []}
    for k, size in enumerate(sizes):
        for total, subset in sorted(best.items(), reverse=True):
            if total < need and total + size not in best:
                best[total + size] = subset + [k]
    reached = [t for t in best if t >= need]
    return best[min(reached)] if reached else list(range(len(sizes)))


def choose_rejected(chosen: str, options: dict[str, str], state: dict[str, int], order: list[str]) -> str:
    """Pick a style, steering the running share of 'chosen longer' towards 50%."""
    longer = state["chosen_longer"] > 0.5 * max(1, state["n"])
    want = [s for s in order if s in options and (len(options[s]) >= len(chosen)) == longer]
    style = want[0] if want else next(s for s in order if s in options)
    order.remove(style)
    order.append(style)  # rotate so styles stay varied
    return style


def to_record(card, name: str, pair: dict[str, Any], state: dict[str, int], order: list[str]) -> dict:
    style = choose_rejected(pair["chosen"], pair["options"], state, order)
    rejected = pair["options"][style]
    failed = [c.rule_id for c in card.check(rejected, name) if not c.passed]
    state["n"] += 1
    state["chosen_longer"] += len(pair["chosen"]) > len(rejected)
    return {
        "prompt": [{"role": "user", "content": pair["prompt"]}],
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "brand": card.id,
        "channel": name,
        "reason_tags": sorted({TAGS.get(r, "length" if r.startswith(name) else "tone") for r in failed}),
    }


def build_channel(card, name: str, ch: dict[str, Any], build: dict[str, Any], ctx) -> dict[str, list[dict]]:
    """The records of one channel per split, whole items per split, styles steered per split."""
    items = list(ch["items"])
    ctx["rng"].shuffle(items)
    groups = [g for g in (item_pairs(card, name, ch, it, ctx) for it in items) if g]
    want = {s: build["splits"].get(s, 0) for s in SPLITS if s != "train"}
    want["train"] = build.get("train_per_channel")  # None: every item left
    by_split = assign_items(groups, want)
    for split, n in build["splits"].items():
        if len(by_split[split]) < n:
            raise SystemExit(f"channel {name}: only {len(by_split[split])} {split} pairs, asked for {n}")
    order = list(ch["rejected_styles"])
    return {split: _records(card, name, pairs, order) for split, pairs in by_split.items()}


def _records(card, name, pairs, order) -> list[dict]:
    state = {"n": 0, "chosen_longer": 0}  # steer each channel and split towards 50% chosen-longer
    return [to_record(card, name, p, state, order) for p in pairs]


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


def write(out: Path, layout: dict[str, dict[str, Any]], splits: dict[str, list[dict]], rng) -> dict[str, int]:
    counts = {}
    for fname, spec in layout.items():
        if spec["format"] == "canonical":
            recs = [{k: v for k, v in r.items() if k != "source"} for r in splits[spec["split"]]]
        else:
            recs = [r for r in splits["train"] if r["channel"] in spec["channels"]]
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


def summary(splits: dict[str, list[dict]], counts: dict[str, int], skipped: int) -> dict[str, Any]:
    every = [r for s in SPLITS for r in splits[s]]
    longer = sum(len(r["chosen"][0]["content"]) > len(r["rejected"][0]["content"]) for r in every)
    return {
        "files": counts,
        "pairs": len(every),
        "splits": {s: len(splits[s]) for s in SPLITS},
        "channels": {
            s: dict(sorted(Counter(r["channel"] for r in splits[s]).items())) for s in SPLITS if splits[s]
        },
        "chosen_longer_share": round(longer / len(every), 3),
        "renderings_skipped": skipped,
        "chosen_near_twin_rate": chosen_near_twin_rate(every, n=TWIN_N, threshold=TWIN_JACCARD),
        "near_duplicate_rate": near_duplicate_rate(every),
    }


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
    ctx = {
        "rng": rng,
        "fillers": bank["fillers"],
        "twins": TwinIndex(),
        "uses": Counter(),
        "prompts": set(),
        "max_uses": build.get("max_uses_per_answer", 1),
        "skipped": 0,
    }
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for name, ch in bank["channels"].items():
        for split, recs in build_channel(card, name, ch, build, ctx).items():
            splits[split] += recs
    for split in SPLITS:
        annotate(splits[split], rng, args.created)
        for r in splits[split]:
            r.update(canonicalize(r))
            r["source"] = None
    counts = write(out, build["layout"], splits, rng)
    info = summary(splits, counts, ctx["skipped"])
    print(json.dumps(info, indent=2))
    rate, limit = info["chosen_near_twin_rate"]["rate"], build.get("max_near_twin_rate", 0.05)
    if rate > limit:
        raise SystemExit(f"chosen near-twin rate {rate} > {limit}: add answer variants to the bank")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
