"""Cross-split leakage: which near-duplicates are twins, which records are quarantined, and how
close the splits of a snapshot come to each other.

- ``neighbours``: per record, every near-duplicate prompt or chosen text (word 3-gram Jaccard >=
  threshold, ``onbrand.data.similarity``) and every identical normalized prompt; the snapshot's
  split clusters over this relation;
- ``drop_fixed_leaks``: quarantine (``split_leak``, naming the twin) a record with a near-twin in
  a higher-priority split (test > dev > judge > the pool);
- ``drop_adversarial``: quarantine records whose prompt near-duplicates (or contains) one of the
  brand card's adversarial prompts (``onbrand.data.adversarial``);
- ``leakage``: the manifest's ``leakage`` block (max similarity per split pair, the closest pairs);
- ``leakage_section`` / ``md_leakage``: that block in the data report, with excerpts.
"""

from __future__ import annotations

import html
from collections import defaultdict
from typing import Any

from onbrand.data.records import prompt_key
from onbrand.data.similarity import cross_group_pairs, jaccard, messages_text, set_pairs, shingles, words
from onbrand.data.validate import Quarantined

SPLITS = ("train", "dev", "test", "judge")
FIXED_SPLITS = ("test", "dev", "judge")  # fixed-file splits in priority order
TEXT_FIELDS = ("prompt", "chosen")  # near-duplicates of either put two records in one cluster
MIN_TRAIN_PAIRS = 200  # below: too few pairs to see an effect of alignment
MIN_TEST_PROMPTS = 50  # below: the win-rate CI is too wide to see an effect
EXCERPT_CHARS = 80


def prompt_text(r: dict[str, Any]) -> str:
    """The non-system prompt turns (what ``prompt_key`` groups on), as one text."""
    return "\n".join(m["content"] for m in r["prompt"] if m["role"] != "system")


def chosen_text(r: dict[str, Any]) -> str:
    return messages_text(r["chosen"])


class Shingled:
    """Word 3-gram sets of every record's prompt and chosen text, computed once per snapshot."""

    def __init__(self) -> None:
        self.sets: dict[str, dict[str, set[str]]] = {"prompt": {}, "chosen": {}}

    def get(self, field: str, r: dict[str, Any]) -> set[str]:
        cache = self.sets[field]
        if r["id"] not in cache:
            cache[r["id"]] = shingles(prompt_text(r) if field == "prompt" else chosen_text(r))
        return cache[r["id"]]


def neighbours(
    records: list[dict[str, Any]], threshold: float, sh: Shingled
) -> dict[int, list[tuple[float, str, int]]]:
    """Index -> ``(similarity, field, other index)`` for every near-duplicate prompt or chosen text
    (word 3-gram Jaccard >= threshold) and every identical normalized prompt."""
    out: dict[int, list[tuple[float, str, int]]] = defaultdict(list)
    for fld in TEXT_FIELDS:
        for i, j, sim in set_pairs([sh.get(fld, r) for r in records], threshold):
            out[i].append((sim, fld, j))
            out[j].append((sim, fld, i))
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_key[prompt_key(r)].append(i)
    for members in by_key.values():
        for i in members:
            out[i] += [(1.0, "prompt", j) for j in members if j != i]
    return out


def _quarantined(r: dict[str, Any], fld: str, msg: str, twin: dict[str, Any]) -> Quarantined:
    src = r.get("source") or {}
    return Quarantined(
        src.get("file", ""), src.get("line", 0), "split_leak", fld, msg, record_id=r["id"], twin=twin
    )


def _leak(r: dict[str, Any], dest: str, twin: dict[str, Any], twin_split: str, fld: str, sim: float):
    if sim >= 1.0 and fld == "prompt" and prompt_key(r) == prompt_key(twin):
        msg = f"prompt also in the fixed {twin_split} split ({twin['id']}): kept out of {dest}"
    else:
        msg = (
            f"{fld} near-duplicates {twin['id']} in the fixed {twin_split} split "
            f"(word 3-gram Jaccard {sim:.3f}): kept out of {dest}"
        )
    info = {"id": twin["id"], "split": twin_split, "field": fld, "similarity": round(sim, 4)}
    return _quarantined(r, fld, msg, info)


def drop_fixed_leaks(
    fixed: dict[str, list[dict[str, Any]]], pool: list[dict[str, Any]], threshold: float, sh: Shingled
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], list[Quarantined]]:
    """Quarantine (``split_leak``) every record with a near-twin in a higher-priority split:
    test > dev > judge > the pool. The closest twin (then the highest split, then id) is named."""
    origins = [*FIXED_SPLITS, "pool"]
    items = [(o, r) for o in origins for r in (fixed.get(o, []) if o != "pool" else pool)]
    records = [r for _, r in items]
    near = neighbours(records, threshold, sh)
    dropped: set[int] = set()
    problems = []
    for i, (origin, r) in enumerate(items):
        rank = origins.index(origin)
        twins = [
            (-sim, origins.index(items[j][0]), records[j]["id"], fld, j)
            for sim, fld, j in near.get(i, [])
            if j not in dropped and origins.index(items[j][0]) < rank
        ]
        if twins:
            neg, _, _, fld, j = min(twins)
            dest = "train" if origin == "pool" else origin
            problems.append(_leak(r, dest, records[j], items[j][0], fld, -neg))
            dropped.add(i)
    keep = [(o, r) for i, (o, r) in enumerate(items) if i not in dropped]
    return (
        {s: [r for o, r in keep if o == s] for s in FIXED_SPLITS},
        [r for o, r in keep if o == "pool"],
        problems,
    )


def adversarial_index(prompts: list[dict[str, Any]]) -> list[tuple[dict[str, Any], set[str], str]]:
    """``(prompt, its shingles, its normalized words padded with spaces)`` per adversarial prompt
    (``onbrand.data.adversarial.adversarial_prompts``), built once per snapshot."""
    return [(a, shingles(a["prompt"]), " " + " ".join(words(a["prompt"])) + " ") for a in prompts]


def drop_adversarial(
    records: list[dict[str, Any]],
    advs: list[tuple[dict[str, Any], set[str], str]],
    threshold: float,
    sh: Shingled,
) -> tuple[list[dict[str, Any]], list[Quarantined]]:
    """Quarantine records whose prompt near-duplicates (or contains) one of the adversarial prompts
    (``advs`` from :func:`adversarial_index`): those prompts test the model and never enter training."""
    kept, problems = [], []
    for r in records:
        mine = sh.get("prompt", r)
        flat = " " + " ".join(words(prompt_text(r))) + " "
        hit = None
        for adv, sets, needle in advs:
            sim = jaccard(mine, sets)
            if sim >= threshold or needle in flat:
                hit = (adv, sim)
                break
        if hit is None:
            kept.append(r)
            continue
        adv, sim = hit
        msg = (
            f"prompt near-duplicates adversarial prompt {adv['id']} (rule {adv['rule_id']}, word 3-gram "
            f"Jaccard {sim:.3f} or contains it): adversarial prompts never enter training"
        )
        info = {"id": adv["id"], "split": "adversarial", "field": "prompt", "similarity": round(sim, 4)}
        problems.append(_quarantined(r, "prompt", msg, info))
    return kept, problems


def leakage(
    splits: dict[str, list[dict[str, Any]]], threshold: float, sh: Shingled, top: int = 5
) -> dict[str, Any]:
    """Max cross-split similarity per split pair (prompt and chosen) and the ``top`` closest pairs."""
    items = [(s, r) for s in SPLITS for r in splits.get(s, [])]
    groups = [s for s, _ in items]
    best: dict[str, float] = {}
    closest = []
    method = ""
    for fld in TEXT_FIELDS:
        pairs, method = cross_group_pairs([sh.get(fld, r) for _, r in items], groups)
        for i, j, sim in pairs:
            key = f"{groups[i]}|{groups[j]}"
            best[key] = max(best.get(key, 0.0), sim)
            closest.append((-sim, fld, items[i][1]["id"], items[j][1]["id"], i, j))
    names = [s for s in SPLITS if splits.get(s)]
    pair_keys = [f"{a}|{b}" for k, a in enumerate(names) for b in names[k + 1 :]]
    closest.sort()
    return {
        "threshold": threshold,
        "method": f"word 3-gram Jaccard of prompt and chosen; {method}",
        "max_similarity": {k: round(best.get(k, 0.0), 4) for k in pair_keys},
        "closest": [
            {
                "a_split": groups[i],
                "a_id": a,
                "b_split": groups[j],
                "b_id": b,
                "field": fld,
                "similarity": round(-neg, 4),
            }
            for neg, fld, a, b, i, j in closest[:top]
        ],
    }


def leakage_section(manifest: dict[str, Any], splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The manifest's ``leakage`` block with a short excerpt of both texts of each closest pair."""
    leak = manifest.get("leakage")
    if not leak:
        return {"recorded": False}
    by_id = {r["id"]: r for recs in splits.values() for r in recs}

    def excerpt(rid: str, fld: str) -> str:
        r = by_id.get(rid)
        text = "" if r is None else (prompt_text(r) if fld == "prompt" else chosen_text(r))
        text = " ".join(text.split())
        return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"

    closest = [
        {**c, "a_excerpt": excerpt(c["a_id"], c["field"]), "b_excerpt": excerpt(c["b_id"], c["field"])}
        for c in leak.get("closest", [])
    ]
    return {"recorded": True, **leak, "closest": closest}


def size_warnings(splits: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Warnings when train has < 200 pairs or test < 50 distinct prompts (too few to see an effect)."""
    train = len(splits.get("train", []))
    test_prompts = len({prompt_key(r) for r in splits.get("test", [])})
    out = []
    if train < MIN_TRAIN_PAIRS:
        out.append(f"train has {train} pairs (< {MIN_TRAIN_PAIRS}): too few to see an effect")
    if test_prompts < MIN_TEST_PROMPTS:
        out.append(f"test has {test_prompts} prompts (< {MIN_TEST_PROMPTS}): too few to see an effect")
    return out


def md_escape(text: str) -> str:
    """User text made safe for a Markdown table cell (HTML-escaped, ``|`` escaped)."""
    return html.escape(str(text)).replace("|", "\\|")


def md_leakage(rep: dict[str, Any]) -> list[str]:
    """The data report's "Leakage" section (``rep["leakage"]``, from ``leakage_section``; user text
    escaped)."""
    leak = rep.get("leakage") or {}
    lines = ["## Leakage", ""]
    if not leak.get("recorded"):
        return lines + [
            "Not recorded in this snapshot's manifest (rebuild it with onbrand data snapshot).",
            "",
        ]
    lines += [
        f"Maximum cross-split similarity ({md_escape(leak['method'])}); the split keeps near-duplicates "
        f"(>= {leak['threshold']}) inside one split, so every value should be below it.",
        "",
        "| splits | max similarity |",
        "|---|---|",
    ]
    lines += [
        f"| {md_escape(k)} | {v:.3f}{' **(leak)**' if v >= leak['threshold'] else ''} |"
        for k, v in leak["max_similarity"].items()
    ]
    if leak["closest"]:
        lines += ["", "Closest cross-split pairs:", "", "| similarity | field | a | b |", "|---|---|---|---|"]
        lines += [
            f"| {c['similarity']:.3f} | {c['field']} | {c['a_split']} `{c['a_id'][:12]}`: "
            f"{md_escape(c['a_excerpt'])} | {c['b_split']} `{c['b_id'][:12]}`: {md_escape(c['b_excerpt'])} |"
            for c in leak["closest"]
        ]
    return lines + [""]
