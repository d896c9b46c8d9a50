"""Text statistics that need no model, shared by RL's Goodhart monitor and eval's drift metric.

- ``distinct_n``: unique word n-grams / all word n-grams over all texts (corpus level; low = the
  model says the same things to everyone).
- ``repetition_rate``: the fraction of a text's word n-grams that repeat an earlier n-gram of the
  same text (degenerate loops score high).
- ``common_prefix``: how many leading tokens two token sequences share (where a prompt ends inside
  a tokenized pair; how far two engines' greedy outputs agree).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+|[^\w\s]")


def common_prefix(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(texts: list[str], n: int = 2) -> float:
    grams = [tuple(w[i : i + n]) for t in texts for w in [words(t)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 4) -> float:
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)
