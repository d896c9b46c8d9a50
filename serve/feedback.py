"""``onbrand monitor --to-annotate``: production exchanges back to people, and their judgements back
into the data.

What is sent (one annotation task per exchange, pairing the served answer with a fresh alternative
from the same model, so annotators judge two answers to the same production prompt):

- **flagged**: every exchange with a failed brand rule or a guard action flag / regenerate / block
  (up to ``max_flagged``; the number left out is reported);
- **uncertain** (active learning): from a seeded random pool of ``uncertain_pool`` other exchanges,
  the ``n_uncertain`` with the smallest reward-model margin ``|r(served) - r(alternative)|``: where
  the reward model cannot tell the two apart, a human label teaches it most;
- **random**: a seeded control sample of ``n_random`` other exchanges (what an unbiased sample of
  production looks like to people).

Each task's ``source`` is the production window (``production:2026-12-01T00/day``) with the log
file, line and exchange id; :func:`export_feedback` writes the judged pairs as canonical records,
one ``production-<window>.jsonl`` file per window, so a snapshot built from them lists the window
in its manifest's ``sources`` and in every record's ``source.file``.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onbrand.serve.conversations import Conversation
from onbrand.serve.monitor import ToAnnotate, is_flagged, production_source

PRODUCTION = "production:"


@dataclass
class Item:
    conv: Conversation
    window: str
    failed: list[str]
    selection: str = ""
    alternative: str | None = None
    margin: float | None = None
    rewards: tuple[float, float] | None = None


@dataclass
class FeedbackSampler:
    """Called for every exchange during the monitor's pass: keeps the flagged ones (bounded) and a
    seeded reservoir of the others; memory is bounded by the configured sample sizes."""

    cfg: ToAnnotate
    flagged: list[Item] = field(default_factory=list)
    flagged_total: int = 0
    pool: list[Item] = field(default_factory=list)
    seen: int = 0
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.cfg.seed)
        self.k = self.cfg.n_random + self.cfg.uncertain_pool

    def __call__(self, conv: Conversation, checks, window: str) -> None:
        if not conv.prompt or conv.prompt[-1]["role"] != "user" or not conv.prompt[-1]["content"].strip():
            self.skipped["prompt_not_ending_with_user"] += 1
            return
        if not conv.response.strip():
            self.skipped["empty_response"] += 1
            return
        failed = [c[0] for c in checks if not c[2]]
        if is_flagged(conv, checks):
            self.flagged_total += 1
            if len(self.flagged) < self.cfg.max_flagged:
                self.flagged.append(Item(conv, window, failed, "flagged"))
            return
        self.seen += 1
        if len(self.pool) < self.k:
            self.pool.append(Item(conv, window, failed))
        else:
            j = self.rng.randrange(self.seen)
            if j < self.k:
                self.pool[j] = Item(conv, window, failed)


# ----------------------------------------------------------------------------- alternatives
class EndpointGenerator:
    """Alternatives from an OpenAI-compatible endpoint (``vllm serve``, the guard, ...)."""

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8):
        from openai import OpenAI

        # The key comes from the environment only; it is never logged or stored.
        self.client = OpenAI(base_url=url, api_key=os.environ.get(api_key_env) or "EMPTY", max_retries=2)
        self.url, self.model, self.concurrency = url, model, concurrency

    def describe(self) -> dict[str, Any]:
        return {"via": "endpoint", "url": self.url, "model": self.model}

    def generate(self, prompts: list[list[dict]], cfg: ToAnnotate) -> list[str]:
        def one(i_p):
            i, p = i_p
            r = self.client.chat.completions.create(
                model=self.model, messages=p, max_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed + i,
            )  # fmt: skip
            return r.choices[0].message.content or ""

        from openai import OpenAIError

        try:
            with ThreadPoolExecutor(self.concurrency) as pool:
                return list(pool.map(one, enumerate(prompts)))
        except OpenAIError as e:  # an unreachable endpoint or a wrong model name: the user's to fix
            raise ValueError(f"--generate-url {self.url}: {type(e).__name__}: {e}") from None


class EngineGenerator:
    """Alternatives from one of onbrand's engines (vLLM or transformers) on a local model."""

    def __init__(self, model: str, engine: str = "auto", adapter: str | None = None):
        self.model, self.engine, self.adapter = model, engine, adapter

    def describe(self) -> dict[str, Any]:
        return {"via": "engine", "engine": self.engine, "model": str(self.model), "adapter": self.adapter}

    def generate(self, prompts: list[list[dict]], cfg: ToAnnotate) -> list[str]:
        from onbrand.engines import Request, Sampling, get_engine

        sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed)  # fmt: skip
        adapters = {"policy": self.adapter} if self.adapter else None
        eng = get_engine(self.engine, base_model=self.model, adapters=adapters)
        self.engine = eng.kind
        try:
            reqs = [
                Request(p, adapter="policy" if self.adapter else None, id=str(i))
                for i, p in enumerate(prompts)
            ]
            return [g.text for g in eng.generate(reqs, sampling)]
        finally:
            eng.close()


# ----------------------------------------------------------------------------- selection
def _score_margins(items: list[Item], scorer, batch_size: int) -> None:
    convs = []
    for it in items:
        for text in (it.conv.response, it.alternative):
            convs.append(list(it.conv.prompt) + [{"role": "assistant", "content": text}])
    scores: list[float] = []
    for i in range(0, len(convs), batch_size):
        scores += [float(s) for s in scorer.score(convs[i : i + batch_size])]
    for j, it in enumerate(items):
        served, alt = scores[2 * j], scores[2 * j + 1]
        it.rewards, it.margin = (served, alt), abs(served - alt)


def require_reward(cfg: ToAnnotate, has_reward: bool) -> None:
    if cfg.n_uncertain and not has_reward:
        raise ValueError(
            "--to-annotate picks uncertain exchanges with the reward model: pass --reward <run> "
            "(or reward: eval), or set to_annotate.n_uncertain=0"
        )


def select(
    sampler: FeedbackSampler, generator, scorer, batch_size: int = 32
) -> tuple[list[Item], dict[str, int]]:
    """Generate alternatives, score margins, pick flagged + uncertain + random; returns (items, counts)."""
    cfg = sampler.cfg
    require_reward(cfg, scorer is not None)
    pool = list(sampler.pool)
    random.Random(cfg.seed + 1).shuffle(pool)
    control = pool[: cfg.n_random]
    candidates = pool[cfg.n_random :] if cfg.n_uncertain else []
    for it in control:
        it.selection = "random"
    items = sampler.flagged + candidates + control
    texts = generator.generate([list(it.conv.prompt) for it in items], cfg) if items else []
    for it, text in zip(items, texts):
        it.alternative = text
    if scorer is not None and items:
        _score_margins(items, scorer, batch_size)
    candidates.sort(key=lambda it: it.margin)
    for it in candidates[: cfg.n_uncertain]:
        it.selection = "uncertain"
    chosen = sampler.flagged + candidates[: cfg.n_uncertain] + control
    counts = Counter(it.selection for it in chosen)
    counts["flagged_left_out"] = sampler.flagged_total - len(sampler.flagged)
    counts.update({f"skipped:{k}": v for k, v in sampler.skipped.items()})
    return chosen, dict(counts)


def to_tasks(items: list[Item], generated: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """annotate tasks ``{"prompt", "a": served, "b": alternative, "channel", "source"}``; pairs whose
    alternative is empty or the served answer again are not queued (their count is returned)."""
    tasks, identical = [], 0
    for it in items:
        alt = (it.alternative or "").strip()
        if not alt or alt == it.conv.response.strip():
            identical += 1
            continue
        c = it.conv
        source = {
            "file": production_source(it.window), "line": c.line, "log": c.file, "conversation_id": c.id,
            "selection": it.selection, "failed_rules": it.failed, "action": c.action, "margin": it.margin,
            "rewards": {"served": it.rewards[0], "alternative": it.rewards[1]} if it.rewards else None,
            "generated": generated,
        }  # fmt: skip
        tasks.append(
            {"prompt": c.prompt, "a": c.response, "b": it.alternative, "channel": c.channel, "source": source}
        )
    return tasks, identical


def send(sessions, project_name: str, tasks: list[dict[str, Any]], brand_path: str | None) -> dict[str, Any]:
    """Add the tasks to the project (created from the brand card when it does not exist yet)."""
    from onbrand.annotate import service

    with sessions() as s:
        try:
            project = service.get_project(s, project_name)
        except LookupError:
            if not brand_path:
                raise ValueError(
                    f"no project {project_name!r} and no brand card to create it (pass --brand)"
                ) from None
            project = service.create_project(s, project_name, service.brand_facts(brand_path))
        return {"project": project.name, **service.add_tasks(s, project, tasks)}


# ----------------------------------------------------------------------------- judgements -> data
def feedback_file(source_file: str) -> str:
    """``production:2026-12-01T00/day`` -> ``production-2026-12-01T00-day.jsonl``."""
    return source_file.replace(":", "-", 1).replace("/", "-") + ".jsonl"


def export_feedback(sessions, project_name: str, out_dir: str | Path) -> dict[str, Any]:
    """The project's judgements as canonical records, one JSONL per production window (``source``
    keeps the window); pairs from elsewhere go to ``annotate-<project>.jsonl``."""
    from onbrand.annotate.pooling import export_records, write_jsonl
    from onbrand.annotate.service import get_project
    from onbrand.artifacts import safe_name

    with sessions() as s:
        try:
            project = get_project(s, project_name)
        except LookupError as e:
            raise ValueError(str(e)) from None
        records, counts = export_records(s, project)
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        src = str((rec.get("source") or {}).get("file") or "")
        name = (
            feedback_file(src) if src.startswith(PRODUCTION) else f"annotate-{safe_name(project.name)}.jsonl"
        )
        groups.setdefault(name, []).append(rec)
    out = Path(out_dir)
    for name, recs in sorted(groups.items()):
        write_jsonl(out / name, recs)
    return {"files": {str(out / n): len(r) for n, r in sorted(groups.items())}, "counts": counts}
