"""Composed, weighted rewards for RL rollouts, each component logged on its own.

For a completion ``y`` to prompt ``x`` (channel ``c``) the task reward is::

    R(x, y) = sum_k w_k * r_k(x, y)

with components ``r_k`` (config ``rewards: [{kind, weight, ...}]``):

- ``reward_model``: the learned reward model's score, ``RewardScorer(run).score(conversations)``
  (a conversation = the prompt messages + one assistant message);
- ``rules``: the brand card's rule score ``card.compliance_score(y, c)`` in [0, 1] (banned phrases
  and claims, required elements, length limits: the same checks eval's compliance metric runs);
- ``voice``: cosine similarity of ``y`` to the card's exemplar centroid of channel ``c`` (eval's
  voice metric, all-MiniLM-L6-v2);
- ``regex``: the number of matches of ``pattern`` in ``y`` (a weight < 0 penalises it; e.g. ``"!"``);
- ``length``: the number of completion tokens (a weight < 0 is a length penalty).

The KL penalty to the reference is not a component here: it needs log-probs and is applied in the
recipe (``training/rl.py``), where ``beta`` lives; its value is still logged as ``reward/kl_penalty``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from onbrand.config import check_range
from onbrand.embedder import load_embedder, similarities
from onbrand.scoring import load_scorer

RewardKind = Literal["reward_model", "rules", "voice", "regex", "length"]


@dataclass
class RewardTerm:
    """One weighted reward component. ``name`` is the metric suffix (default: the kind)."""

    kind: RewardKind
    weight: float = 1.0
    run: str | None = None  # reward_model: the reward run dir
    pattern: str | None = None  # regex: counted in the completion
    name: str | None = None

    def __post_init__(self) -> None:
        check_range(f"rewards.{self.kind}.weight", self.weight, -1e6, 1e6)
        if self.kind == "reward_model" and not self.run:
            raise ValueError("rewards: kind reward_model needs run: <reward run dir>, got none")
        if self.kind == "regex":
            if not self.pattern:
                raise ValueError("rewards: kind regex needs pattern: <regex>, got none")
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"rewards: invalid regex {self.pattern!r}: {e}") from None

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass
class Rollout:
    """What the reward functions see of one completion."""

    messages: list[dict[str, str]]  # the prompt as given to the policy (with the system prompt)
    text: str
    n_tokens: int
    channel: str | None = None


class RewardComposer:
    """``score(rollouts) -> (total (N,), {label: raw (N,)})``; loads scorers lazily, once."""

    def __init__(self, terms: list[RewardTerm], card=None):
        if not terms:
            raise ValueError("rewards: at least one reward component is needed (rewards: [...])")
        labels = [t.label for t in terms]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"rewards: component names must be unique (set name:); repeated: {dup}")
        needs_card = [t.kind for t in terms if t.kind in ("rules", "voice")]
        if needs_card and card is None:
            raise ValueError(f"rewards: {needs_card[0]} needs a brand card (data.brand), got none")
        self.terms = terms
        self.card = card
        self._scorers: dict[str, Any] = {}

    def _reward_model(self, term: RewardTerm, rollouts: list[Rollout]) -> np.ndarray:
        if term.run not in self._scorers:
            self._scorers[term.run] = load_scorer(term.run)
        # Conversations without the system turn: the reward run prepends the brand's own system
        # prompt (the one it was trained under), exactly as for its training records.
        convs = [
            [m for m in r.messages if m["role"] != "system"] + [{"role": "assistant", "content": r.text}]
            for r in rollouts
        ]
        return np.asarray(self._scorers[term.run].score(convs), dtype=float)

    def _voice(self, rollouts: list[Rollout]) -> np.ndarray:
        texts = [r.text for r in rollouts]
        return similarities(load_embedder(), texts, [r.channel for r in rollouts], self.card.exemplars)

    def component(self, term: RewardTerm, rollouts: list[Rollout]) -> np.ndarray:
        """Raw (unweighted) values (N,) of one component."""
        if term.kind == "reward_model":
            return self._reward_model(term, rollouts)
        if term.kind == "rules":
            return np.asarray([self.card.compliance_score(r.text, r.channel) for r in rollouts], dtype=float)
        if term.kind == "voice":
            return np.asarray(self._voice(rollouts), dtype=float)
        if term.kind == "regex":
            pat = re.compile(term.pattern)
            return np.asarray([len(pat.findall(r.text)) for r in rollouts], dtype=float)
        if term.kind == "length":
            return np.asarray([r.n_tokens for r in rollouts], dtype=float)
        raise ValueError(f"unknown reward kind {term.kind!r}")

    def score(self, rollouts: list[Rollout]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        parts = {t.label: self.component(t, rollouts) for t in self.terms}
        total = np.zeros(len(rollouts), dtype=float)
        for t in self.terms:
            total += t.weight * parts[t.label]
        return total, parts


def group_advantages(rewards, group_size: int, algorithm: str, scale: bool = True, eps: float = 1e-4):
    """Per-completion advantages from rewards (P * G,) laid out prompt-major (G per prompt).

    GRPO: ``A_i = (r_i - mean_g r) / (std_g r + eps)`` (``scale=False``: no division, Dr. GRPO);
    RLOO: ``A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_g r)`` (leave-one-out baseline).
    ``std`` is the unbiased sample std (as TRL). Works on numpy arrays or torch tensors.
    """
    if group_size < 2:
        raise ValueError(f"rollout.num_generations must be >= 2 for a group baseline, got {group_size}")
    r = rewards.reshape(-1, group_size)
    centred = r - r.mean(1, keepdims=True) if isinstance(r, np.ndarray) else r - r.mean(1, keepdim=True)
    if algorithm == "rloo":
        adv = centred * (group_size / (group_size - 1))
    elif algorithm == "grpo":
        if scale:
            std = r.std(1, ddof=1, keepdims=True) if isinstance(r, np.ndarray) else r.std(1, keepdim=True)
            adv = centred / (std + eps)
        else:
            adv = centred
    else:
        raise ValueError(f"rl.algorithm must be grpo or rloo, got {algorithm!r}")
    return adv.reshape(-1)
