"""Scorers: anything with ``.score(conversations) -> list[float]`` (higher = more on-brand).

Eval and RL score answers with a trained run (the reward model) without importing the stage that
trained it: a package registers a loader for a run ``kind`` under the ``onbrand.scorers`` entry
point group (``pyproject.toml``: ``reward = "onbrand.training.reward_model:RewardScorer"``), the way
vLLM finds its platform plugins. A run of another kind, or a kind nobody registered, is a clear error.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from onbrand.lineage import load_run

GROUP = "onbrand.scorers"


class Scorer(Protocol):
    def score(self, conversations: list[list[dict]]) -> list[float]: ...


def scorer_kinds() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load_scorer(run_dir: str | Path, **options) -> Scorer:
    """The scorer for a trained run (``run.json["kind"]`` picks the registered loader)."""
    kind = load_run(run_dir).get("kind")
    found = [ep for ep in entry_points(group=GROUP) if ep.name == kind]
    if not found:
        raise ValueError(
            f"{run_dir}: run kind {kind!r} is not a scorer (scorer kinds: {', '.join(scorer_kinds()) or 'none'})"
        )
    return found[0].load()(run_dir, **options)
