"""Near-duplicate text detection: word n-gram shingles, Jaccard, all pairs above a threshold.

One implementation for the data stage (split clustering, split-leak checks, the manifest's
``leakage`` block) and the data report (near-duplicate and chosen near-twin rates).

- ``shingles(text, n)``: the set of word n-grams of ``normalize_text(text)`` (words are ``\\w+``
  runs, so punctuation does not make a text new);
- ``near_duplicate_pairs(texts, threshold, n)``: every pair ``i < j`` with Jaccard >= threshold.
  Up to ``EXACT_LIMIT`` texts every pair is compared (with the length filter: Jaccard <= min/max
  of the set sizes); above it a MinHash-LSH index (numpy, fixed seed) proposes candidates and each
  candidate is verified exactly, so every reported similarity is exact and the output is
  deterministic (a pair the index misses is possible but, at the band settings below, rare:
  a pair at the threshold is a candidate with probability > 0.999).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from onbrand.data.records import normalize_text

EXACT_LIMIT = 3000  # texts; above this MinHash-LSH proposes the candidate pairs
LSH_BANDS = 32
LSH_SEED = 0
LSH_CHUNK = 200_000  # shingles hashed per numpy step (bounds memory)
_WORD = re.compile(r"\w+")

Pair = tuple[int, int, float]


def words(text: str) -> list[str]:
    return _WORD.findall(normalize_text(text))


def shingles(text: str, n: int = 3) -> set[str]:
    """Word n-grams of the normalized text (a text shorter than n words is one shingle)."""
    w = words(text)
    return {" ".join(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def near_duplicate_pairs(
    texts: Sequence[str], threshold: float = 0.8, n: int = 3, exact_limit: int = EXACT_LIMIT
) -> list[Pair]:
    """All pairs ``(i, j, similarity)``, ``i < j``, with word n-gram Jaccard >= ``threshold``."""
    return set_pairs([shingles(t, n) for t in texts], threshold, exact_limit)


def set_pairs(sets: Sequence[set[str]], threshold: float, exact_limit: int = EXACT_LIMIT) -> list[Pair]:
    """``near_duplicate_pairs`` on precomputed shingle sets (sorted by i, j)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if len(sets) <= exact_limit:
        return _exact_pairs(sets, threshold)
    return _verify(sets, _lsh_candidates(sets, threshold), threshold)


def _exact_pairs(sets: Sequence[set[str]], threshold: float) -> list[Pair]:
    order = sorted(range(len(sets)), key=lambda i: len(sets[i]))
    out: list[Pair] = []
    for pos, i in enumerate(order):
        a = sets[i]
        limit = len(a) / threshold  # a larger set than this cannot reach the threshold
        for j in order[pos + 1 :]:
            b = sets[j]
            if len(b) > limit:
                break
            sim = jaccard(a, b)
            if sim >= threshold:
                out.append((min(i, j), max(i, j), sim))
    return sorted(out)


def _verify(sets: Sequence[set[str]], candidates: set[tuple[int, int]], threshold: float) -> list[Pair]:
    out = []
    for i, j in sorted(candidates):
        sim = jaccard(sets[i], sets[j])
        if sim >= threshold:
            out.append((i, j, sim))
    return out


def _rows_per_band(threshold: float, bands: int = LSH_BANDS) -> int:
    # Rows r such that the S-curve midpoint (1/b)^(1/r) sits well below the threshold (high recall).
    target = max(0.05, 0.6 * threshold)
    return int(min(8, max(1, math.floor(math.log(bands) / -math.log(target)))))


def _hash64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def minhash_signatures(sets: Sequence[set[str]], num_perm: int, seed: int = LSH_SEED) -> np.ndarray:
    """``(len(sets), num_perm)`` uint64 MinHash signatures (multiply-shift hash family, seeded)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    sig = np.empty((len(sets), num_perm), dtype=np.uint64)
    start = 0
    while start < len(sets):
        stop, size = start, 0
        while stop < len(sets) and (size == 0 or size + len(sets[stop]) <= LSH_CHUNK):
            size += max(1, len(sets[stop]))
            stop += 1
        hv = [
            np.array(sorted(_hash64(s) for s in sets[k]) or [0], dtype=np.uint64) for k in range(start, stop)
        ]
        lens = np.array([len(h) for h in hv])
        flat = np.concatenate(hv)
        with np.errstate(over="ignore"):
            perm = (flat[:, None] * a[None, :] + b[None, :]) >> np.uint64(11)
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
        sig[start:stop] = np.minimum.reduceat(perm, offsets, axis=0)
        start = stop
    return sig


def _lsh_candidates(sets: Sequence[set[str]], threshold: float) -> set[tuple[int, int]]:
    rows = _rows_per_band(threshold)
    sig = minhash_signatures(sets, LSH_BANDS * rows)
    candidates: set[tuple[int, int]] = set()
    for band in range(LSH_BANDS):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        block = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        for i in range(len(sets)):
            buckets[block[i].tobytes()].append(i)
        for members in buckets.values():
            if len(members) > 1:
                candidates.update(itertools.combinations(members, 2))
    return candidates


def cross_group_pairs(
    sets: Sequence[set[str]],
    groups: Sequence[str],
    floor: float = 0.0,
    exact_limit: int = EXACT_LIMIT,
    lsh_floor: float = 0.5,
) -> tuple[list[Pair], str]:
    """Pairs of items in DIFFERENT groups with similarity > ``floor`` (all of them when exact), and
    the method used. Above ``exact_limit`` only LSH candidates >= ``lsh_floor`` are measured."""
    if len(sets) > exact_limit:
        cut = max(floor, lsh_floor)
        pairs = set_pairs(sets, cut, exact_limit)
        method = f"minhash-lsh candidates, exact Jaccard verification (pairs under {cut} not measured)"
        return [p for p in pairs if groups[p[0]] != groups[p[1]]], method
    out: list[Pair] = []
    for i, j in itertools.combinations(range(len(sets)), 2):
        if groups[i] == groups[j]:
            continue
        a, b = sets[i], sets[j]
        if min(len(a), len(b)) <= floor * max(len(a), len(b)):
            continue  # Jaccard <= min/max <= floor
        sim = jaccard(a, b)
        if sim > floor:
            out.append((i, j, sim))
    return out, "exact Jaccard, all cross-group pairs"


def messages_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


def near_duplicate_rate(records: list[dict[str, Any]], threshold: float = 0.8) -> dict[str, Any]:
    """``{"rate", "records_with_near_duplicate", "pairs", "threshold", "compared"}`` over the whole
    record (normalized prompt + chosen + rejected, word 3-grams)."""
    recs = sorted(records, key=lambda r: r.get("id") or "")
    texts = [
        messages_text(r["prompt"]) + "\n" + messages_text(r["chosen"]) + "\n" + messages_text(r["rejected"])
        for r in recs
    ]
    pairs = near_duplicate_pairs(texts, threshold, 3)
    flagged = {k for i, j, _ in pairs for k in (i, j)}
    n = len(recs)
    return {
        "rate": round(len(flagged) / n, 4) if n else 0.0,
        "records_with_near_duplicate": len(flagged),
        "pairs": len(pairs),
        "threshold": threshold,
        "compared": n,
    }


def chosen_near_twin_rate(
    records: list[dict[str, Any]], n: int = 5, threshold: float = 0.8
) -> dict[str, Any]:
    """Share of records whose CHOSEN text has another record's chosen with word ``n``-gram Jaccard
    strictly greater than ``threshold`` (a bank that recombines a few answer variants scores high)."""
    recs = sorted(records, key=lambda r: r.get("id") or "")
    pairs = near_duplicate_pairs([messages_text(r["chosen"]) for r in recs], threshold, n)
    flagged = {k for i, j, sim in pairs if sim > threshold for k in (i, j)}
    return {
        "rate": round(len(flagged) / len(recs), 4) if recs else 0.0,
        "records_with_near_twin": len(flagged),
        "compared": len(recs),
        "n": n,
        "threshold": threshold,
    }


class UnionFind:
    """Disjoint sets over ``0..n-1`` (path halving, union by smaller root: deterministic)."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return [out[k] for k in sorted(out)]
