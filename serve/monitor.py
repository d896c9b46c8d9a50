"""``onbrand monitor``: what the served model says, per time window and channel, against the release
eval; drift is flagged with one-sided tests corrected for multiple testing (``monitor_stats``).

Streaming, constant memory: the log is read one exchange at a time (``conversations``), processed
in chunks of :data:`CHUNK`, and each (window, channel) keeps counters only (violations per rule,
answers failing any rule, length moments, refusals, guard fallbacks) plus a seeded reservoir of at
most ``scored_per_window`` exchanges for the optional reward-model and voice scores. Memory grows
with the number of windows, never with the number of exchanges.

Checks (each window x scope, scope = all channels and, with ``per_channel``, each channel):

- ``rule:<id>`` and ``any_rule``: violation rate vs the release baseline's (two-proportion test);
  flagged only when also at least ``min_rate_increase`` above it;
- ``reward`` / ``voice``: mean lower than the baseline's by at least ``max_reward_drop`` /
  ``max_voice_drop``; ``length``: mean/baseline outside ``[1/max_length_ratio, max_length_ratio]``
  (two-sided);
- ``refusal_rate`` / ``fallback_rate``: above an absolute ceiling (the eval has no baseline for them).

All p-values of one run form one family (Holm by default: family-wise false-alarm rate <= alpha).
"""

from __future__ import annotations

import datetime as _dt
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from onbrand.config import check_range
from onbrand.serve.conversations import Conversation
from onbrand.serve.monitor_stats import Moments

CHUNK = 1024
WINDOWS = ("hour", "day", "week")
ALL = "all"
NO_CHANNEL = "(none)"
FALLBACK_ACTIONS = ("block",)  # the guard replaced the answer with the card's fallback message
FLAG_ACTIONS = ("flag", "regenerate", "block")
DEFAULT_REFUSALS = [
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:no|')t|am unable to|won'?t)\b",
    r"\bI can(?:no|')t (?:help|assist) with (?:that|this)\b",
    r"\bAs an AI\b",
]


@dataclass
class Thresholds:
    """When a window drifts. Like the release gate's thresholds, every key is required in the YAML
    (``configs/monitor/*.yaml``), so a threshold is written in one place; ``null`` turns a check off."""

    alpha: float  # family-wise false-alarm rate (holm) or false discovery rate (bh) per monitor run
    correction: Literal["holm", "bh"]
    min_window_n: int  # windows (per scope) with fewer exchanges are reported, not tested
    min_rate_increase: float | None  # rule / any-rule violation rate above baseline by at least this
    max_length_ratio: float | None  # window/baseline mean length must stay within [1/r, r]
    max_reward_drop: float | None  # reward-model mean may fall by at most this (score units)
    max_voice_drop: float | None  # brand-voice similarity mean may fall by at most this (cosine)
    max_refusal_rate: float | None  # absolute ceiling on refusals ("I can't help with that")
    max_fallback_rate: float | None  # absolute ceiling on the guard's fallback answers (action block)

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, 0.0, 0.5, lo_open=True)
        check_range("min_window_n", self.min_window_n, 1, None)
        for name in ("min_rate_increase", "max_refusal_rate", "max_fallback_rate"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 0.0, 1.0)
        if self.max_length_ratio is not None:
            check_range("max_length_ratio", self.max_length_ratio, 1.0, None)
        for name in ("max_reward_drop", "max_voice_drop"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 0.0, None)


@dataclass
class ToAnnotate:
    """``--to-annotate``: what goes to the annotators (see ``onbrand.serve.feedback``)."""

    max_flagged: int = 200  # every flagged exchange up to this many (the rest are counted)
    n_uncertain: int = 20  # smallest reward-model margin between served answer and alternative
    uncertain_pool: int = 100  # random exchanges scored to find the uncertain ones
    n_random: int = 20  # random control sample
    seed: int = 0
    max_new_tokens: int = 128
    temperature: float = 0.9
    top_p: float = 0.95

    def __post_init__(self) -> None:
        for name in ("max_flagged", "n_uncertain", "uncertain_pool", "n_random"):
            check_range(name, getattr(self, name), 0, 1_000_000)
        if self.n_uncertain > self.uncertain_pool:
            raise ValueError(
                f"n_uncertain ({self.n_uncertain}) must be <= uncertain_pool ({self.uncertain_pool})"
            )
        check_range("max_new_tokens", self.max_new_tokens, 1, 32768)
        check_range("temperature", self.temperature, 0.0, 10.0)
        check_range("top_p", self.top_p, 0.0, 1.0, lo_open=True)


@dataclass
class MonitorConfig:
    """``configs/monitor/*.yaml``: windows, inputs, thresholds and the feedback sample."""

    thresholds: Thresholds
    window: Literal["hour", "day", "week"] = "day"
    per_channel: bool = True  # also test each channel (against the overall release baseline)
    brand: str = ""  # brand card; "" = the one the export / eval report names
    baseline: str = ""  # export dir, eval dir or report.json; "" = none (only absolute checks)
    reward: str = ""  # reward run for scores; "" = none, "eval" = the run the eval report used
    voice: bool = False  # brand-voice similarity (needs the embedder package)
    scored_per_window: int = 200  # reservoir per window for reward / voice scores
    length_unit: Literal["tokens", "words"] = "tokens"  # tokens need a tokenizer (export dir)
    tokenizer: str = ""  # "" = the export's (or the eval's base model's) tokenizer
    refusal_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSALS))
    rules_from_log: bool = True  # use the guard's rule results when a record has them
    strict: bool = False  # an unreadable row is an error (default: counted and reported)
    max_examples: int = 3  # example exchanges per (window, rule) in the report
    batch_size: int = 32  # reward-model scoring batch
    seed: int = 0
    out_dir: str = "runs/monitor"
    to_annotate: ToAnnotate = field(default_factory=ToAnnotate)

    def __post_init__(self) -> None:
        check_range("scored_per_window", self.scored_per_window, 0, 1_000_000)
        check_range("max_examples", self.max_examples, 0, 100)
        check_range("batch_size", self.batch_size, 1, 4096)
        for i, pat in enumerate(self.refusal_patterns):
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"refusal_patterns.{i}: invalid regex {pat!r}: {e}") from None


# ----------------------------------------------------------------------------- windows
def window_start(ts: _dt.datetime, size: str) -> _dt.datetime:
    """The UTC start of the hour / day / ISO week (Monday) holding ``ts``."""
    if size == "hour":
        return ts.replace(minute=0, second=0, microsecond=0)
    day = ts.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if size == "day" else day - _dt.timedelta(days=day.weekday())


def window_label(start: _dt.datetime, size: str) -> str:
    """``2026-12-01T00/day``: the window's start hour (UTC) and its size."""
    return f"{start:%Y-%m-%dT%H}/{size}"


def production_source(label: str) -> str:
    """The ``source`` of a pair judged from production: ``production:2026-12-01T00/day``."""
    return f"production:{label}"


# ----------------------------------------------------------------------------- aggregation
class WindowAgg:
    """Counters of one (window, scope); constant size."""

    __slots__ = ("n", "rule_k", "any_k", "length", "refusal_k", "action_n", "fallback_k", "actions")

    def __init__(self) -> None:
        self.n = 0
        self.rule_k: Counter = Counter()
        self.any_k = 0
        self.length = Moments()
        self.refusal_k = 0
        self.action_n = 0  # exchanges whose guard action is known
        self.fallback_k = 0
        self.actions: Counter = Counter()

    def add(self, failed: list[str], length: float, refusal: bool, action: str | None) -> None:
        self.n += 1
        for rule in failed:
            self.rule_k[rule] += 1
        self.any_k += bool(failed)
        self.length.add(length)
        self.refusal_k += refusal
        if action is not None:
            self.action_n += 1
            self.fallback_k += action in FALLBACK_ACTIONS
            self.actions[action] += 1


@dataclass
class Scored:
    """A reservoir entry: an exchange kept for reward / voice scoring."""

    prompt: list[dict[str, str]]
    response: str
    channel: str | None
    reward: float | None = None
    voice: float | None = None


class Reservoir:
    """Seeded reservoir sample of at most ``k`` items (Algorithm R)."""

    def __init__(self, k: int, rng: random.Random):
        self.k, self.rng, self.seen, self.items = k, rng, 0, []

    def offer(self, make) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(make())
        else:
            j = self.rng.randrange(self.seen)
            if j < self.k:
                self.items[j] = make()


@dataclass
class Aggregate:
    """Everything one pass over the log keeps."""

    window: str
    windows: dict[tuple[str, str], WindowAgg] = field(default_factory=dict)
    samples: dict[str, Reservoir] = field(default_factory=dict)  # window label -> reservoir
    examples: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    rule_kinds: dict[str, str] = field(default_factory=dict)
    channels: Counter = field(default_factory=Counter)
    n: int = 0
    rules_computed: int = 0  # exchanges whose rules the monitor computed from the card
    first_ts: str | None = None
    last_ts: str | None = None


def rule_results(conv: Conversation, card, from_log: bool) -> list[tuple[str, str, bool, str]]:
    """(rule, kind, passed, detail) per rule: the guard's results, else the brand card's check."""
    if from_log and conv.rules is not None:
        return [
            (r["rule"], str(r.get("kind") or ""), r["passed"], str(r.get("detail") or "")) for r in conv.rules
        ]
    if card is None:
        raise ValueError(
            f"{conv.file}:{conv.line}: rules: the record has no rule results and no brand card was given "
            "(pass --brand configs/brands/<id>.yaml or --baseline <export dir>)"
        )
    return [(c.rule_id, c.kind, c.passed, c.detail) for c in card.check(conv.response, conv.channel)]


def is_flagged(conv: Conversation, checks: list[tuple[str, str, bool, str]]) -> bool:
    """An exchange people should see: a failed rule, or the guard flagged / replaced it."""
    return (conv.action in FLAG_ACTIONS) or any(not c[2] for c in checks)


# ----------------------------------------------------------------------------- the pass
def length_counter(cfg: MonitorConfig, tokenizer: str | None):
    """(texts -> lengths, unit, note): tokens with the release tokenizer when there is one, else words."""
    if cfg.length_unit == "tokens" and tokenizer:
        from pathlib import Path

        from tokenizers import Tokenizer

        from onbrand.models import resolve_model

        folder = (
            Path(tokenizer) if (Path(tokenizer) / "tokenizer.json").exists() else resolve_model(tokenizer)
        )
        if not (folder / "tokenizer.json").exists():
            raise FileNotFoundError(f"{folder}: no tokenizer.json (set tokenizer: or length_unit: words)")
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

        def count(texts: list[str]) -> list[int]:
            return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

        return count, "tokens", f"tokens of {tokenizer}'s tokenizer"
    note = "words (no tokenizer: the eval's token lengths are not comparable, length is not tested)"
    if cfg.length_unit == "words":
        note = "words (length_unit: words; the eval measures tokens, so length is not tested)"
    return (lambda texts: [len(t.split()) for t in texts]), "words", note


@dataclass
class PassContext:
    cfg: MonitorConfig
    card: Any  # BrandCard or None
    lengths: Any  # texts -> lengths
    refusal: re.Pattern[str] | None
    rng: random.Random
    visit: Any = None  # optional callback(conv, checks, label) for each exchange (feedback sampling)


def aggregate(convs, ctx: PassContext) -> Aggregate:
    """One streaming pass: counters per (window, scope), reservoirs and examples."""
    agg = Aggregate(ctx.cfg.window)
    chunk: list[Conversation] = []
    for conv in convs:
        chunk.append(conv)
        if len(chunk) >= CHUNK:
            _process(agg, chunk, ctx)
            chunk = []
    if chunk:
        _process(agg, chunk, ctx)
    return agg


def _process(agg: Aggregate, chunk: list[Conversation], ctx: PassContext) -> None:
    cfg = ctx.cfg
    lengths = ctx.lengths([c.response for c in chunk])
    for conv, length in zip(chunk, lengths):
        checks = rule_results(conv, ctx.card, cfg.rules_from_log)
        agg.rules_computed += not (cfg.rules_from_log and conv.rules is not None)
        failed = [c[0] for c in checks if not c[2]]
        for c in checks:
            if c[0] not in agg.rule_kinds:
                agg.rule_kinds[c[0]] = c[1]
        label = window_label(window_start(conv.ts, cfg.window), cfg.window)
        channel = conv.channel or NO_CHANNEL
        refusal = bool(ctx.refusal is not None and ctx.refusal.search(conv.response))
        for scope in (ALL, channel) if cfg.per_channel else (ALL,):
            key = (label, scope)
            w = agg.windows.get(key)
            if w is None:
                w = agg.windows[key] = WindowAgg()
            w.add(failed, float(length), refusal, conv.action)
        _keep_examples(agg, conv, checks, label, cfg.max_examples)
        if cfg.scored_per_window:
            res = agg.samples.get(label)
            if res is None:
                res = agg.samples[label] = Reservoir(cfg.scored_per_window, ctx.rng)
            res.offer(lambda conv=conv: Scored(conv.prompt, conv.response, conv.channel))
        agg.channels[channel] += 1
        agg.n += 1
        iso = conv.ts.isoformat()
        if agg.first_ts is None or iso < agg.first_ts:
            agg.first_ts = iso
        if agg.last_ts is None or iso > agg.last_ts:
            agg.last_ts = iso
        if ctx.visit is not None:
            ctx.visit(conv, checks, label)


def _keep_examples(agg: Aggregate, conv: Conversation, checks, label: str, keep: int) -> None:
    for rule, _, passed, detail in checks:
        if passed or not keep:
            continue
        ex = agg.examples.setdefault((label, rule), [])
        if len(ex) < keep:
            ex.append({"id": conv.id, "where": f"{conv.file}:{conv.line}", "detail": detail,
                       "response": conv.response[:300]})  # fmt: skip


def score_samples(agg: Aggregate, scorer, embedder, card, batch_size: int) -> None:
    """Reward-model and voice scores of every reservoir entry, in batches."""
    items = [it for res in agg.samples.values() for it in res.items]
    if scorer is not None:
        for i in range(0, len(items), batch_size):
            part = items[i : i + batch_size]
            convs = [list(it.prompt) + [{"role": "assistant", "content": it.response}] for it in part]
            for it, s in zip(part, scorer.score(convs)):
                it.reward = float(s)
    if embedder is not None and items:
        from onbrand.embedder import similarities

        sims = similarities(
            embedder, [it.response for it in items], [it.channel for it in items], card.exemplars
        )
        for it, s in zip(items, sims):
            it.voice = float(s)


def refusal_regex(patterns: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
