"""Goodhart and drift signals that need no model: response lengths, distinct-2, repetition.

- ``distinct_2``: unique word bigrams / all word bigrams over all responses of a model (corpus
  level; low = the model says the same things to everyone).
- ``repetition``: per response, the fraction of word 4-grams that repeat an earlier 4-gram of the
  same response (degenerate loops score high), averaged over responses.
The KL(aligned || base) estimate needs log-probs and lives in ``logprobs.py``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from onbrand.eval.metrics.stats import mean_ci

_WORD = re.compile(r"\w+|[^\w\s]")


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


def length_stats(token_counts) -> dict[str, Any]:
    x = np.asarray(token_counts, dtype=float)
    return {"mean": mean_ci(x).to_dict(), "median": float(np.median(x)), "max": float(x.max())}


def drift(aligned_texts, base_texts, aligned_tokens, base_tokens) -> dict[str, Any]:
    """Lengths (tokens), distinct-2 and repetition for both models, and the length ratio."""
    out = {}
    for name, texts, toks in (("aligned", aligned_texts, aligned_tokens), ("base", base_texts, base_tokens)):
        out[name] = {
            "tokens": length_stats(toks),
            "distinct_2": distinct_n(texts, 2),
            "repetition": mean_ci([repetition_rate(t) for t in texts]).to_dict(),
        }
    base_mean = out["base"]["tokens"]["mean"]["value"]
    out["length_ratio"] = out["aligned"]["tokens"]["mean"]["value"] / base_mean if base_mean else float("inf")
    return out
