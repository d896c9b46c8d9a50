"""The metric registry: each metric family declares itself in its own module of this package.

A family says (a) its ``metrics.<name>`` switch and default, (b) how it is computed from an
:class:`EvalContext`, (c) how report.md shows it (verdict-table rows, an optional section) and
which release-gate checks read it. ``EvalConfig.metrics`` is derived from the switches, the runner
computes the families in ``order`` and the report takes its rows from here. Every module of
``onbrand.eval.metrics`` is imported on first use, so a new metric is one file::

    from onbrand.eval.metrics.registry import Metric, register, row

    def compute(ctx):  # -> stored as report.json metrics["shout"] (None: skipped / stored itself)
        return {"aligned": sum(t.isupper() for t in ctx.aligned_texts) / len(ctx.aligned_texts)}

    def rows(m, judge):  # m = report.json metrics; judge = its judge_independence record
        return [row("Answers in capitals", "—", f"{m['shout']['aligned']:.3f}", "—", "info")]

    register(Metric("shout", order=90, compute=compute, rows=((130, rows),)))
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, make_dataclass
from functools import cache, cached_property
from typing import Any

# A pairwise rate (win rate, accuracy) at "no difference": the null the report's sides are read from.
RATE_NULL = 0.5
Row = dict[str, str]
RowsFn = Callable[[dict[str, Any], "dict[str, Any] | None"], list[Row]]


@dataclass(frozen=True)
class Metric:
    """One metric family. ``order`` is the compute order (also the order of the ``metrics:`` keys);
    ``rows`` and ``section`` carry their own positions in report.md (lower = higher up)."""

    name: str  # registry id and the `metrics.<name>` switch
    order: int
    # ctx -> the result (stored at report.json metrics[key]), or None when it skipped or stored itself.
    compute: Callable[[EvalContext], Any] | None = None
    default: bool | None = True  # the switch's default; None = no switch (always on when its input exists)
    help: str = ""  # one line for the `metrics:` docs
    result_key: str = ""  # key in report.json metrics (default: name); rows and sections need it
    rows: tuple[tuple[int, RowsFn], ...] = ()  # (table position, metrics -> verdict rows)
    primary: Mapping[str, int] = field(default_factory=dict)  # row label -> rank as the verdict's primary
    section: tuple[int, Callable[[dict[str, Any]], list[str]]] | None = None  # (position, its md lines)
    sample_fields: Callable[[dict[str, Any], int], dict[str, Any]] | None = None  # extra samples.jsonl fields
    gate_checks: tuple[str, ...] = ()  # names of the onbrand.eval.gate checks that read this metric

    @property
    def key(self) -> str:
        return self.result_key or self.name


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric family (at import of its module); names are unique."""
    if metric.name in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is registered twice")
    _REGISTRY[metric.name] = metric
    return metric


@cache
def _discover() -> None:
    """Import every module of this package: each registers its metrics."""
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{info.name}")


def all_metrics() -> list[Metric]:
    _discover()
    return sorted(_REGISTRY.values(), key=lambda m: m.order)


def get(name: str) -> Metric:
    _discover()
    return _REGISTRY[name]


def metrics_config_class(module: str) -> type:
    """The ``metrics:`` section of ``EvalConfig``: one bool per switchable family, its default from
    the registry (an unknown ``metrics.<key>`` is then the config loader's "unknown key" error)."""
    switches = [m for m in all_metrics() if m.default is not None]
    cls = make_dataclass("MetricsConfig", [(m.name, bool, field(default=m.default)) for m in switches])
    cls.__module__ = module
    cls.__doc__ = (
        "Which metric families to compute (each is skipped with a note when its input is missing):\n"
        + ("\n".join(f"- {m.name} (default {str(m.default).lower()}): {m.help}" for m in switches))
    )
    return cls


def log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def enabled(metric: Metric, metrics_cfg: Any) -> bool:
    return metric.default is None or bool(getattr(metrics_cfg, metric.name))


# ----------------------------------------------------------------------------- computing
@dataclass
class EvalContext:
    """What a metric computes from: the config, both models' answers (one row per sample), the card,
    the scorers, and ``metrics`` (report.json's, filled in compute order) and ``warnings``."""

    cfg: Any  # onbrand.eval.config.EvalConfig
    aligned: Any  # onbrand.eval.inputs.Aligned
    prompts: Any  # onbrand.eval.inputs.PromptSet (ids, prompts, channels, held-out pairs)
    chats: list[list[dict[str, str]]]  # the prompts with the brand system prompt
    base_gen: list  # onbrand.engines.Generation per row
    aligned_gen: list
    card: Any = None  # onbrand.data.brand.BrandCard
    scorer: Any = None  # a reward scorer given by the caller (else cfg.reward is loaded)
    embedder: Any = None  # a sentence embedder given by the caller (else MiniLM)
    judge: Any = None  # the prepared LLM judge (metrics.judge)
    adversarial: Any = None  # onbrand.eval.metrics.adversarial.AdversarialRun
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=lambda: {"skipped": {}})
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def base_texts(self) -> list[str]:
        return [g.text for g in self.base_gen]

    @cached_property
    def aligned_texts(self) -> list[str]:
        return [g.text for g in self.aligned_gen]

    @cached_property
    def base_tokens(self) -> list[int]:
        return [len(g.token_ids[0]) for g in self.base_gen]

    @cached_property
    def aligned_tokens(self) -> list[int]:
        return [len(g.token_ids[0]) for g in self.aligned_gen]

    @cached_property
    def channels(self) -> list[str | None]:
        """The prompts' channels, ``None`` for a channel the brand card lacks (with a warning)."""
        channels = self.prompts.channels
        if self.card is None:
            return channels
        known = set(getattr(self.card, "channels", {}) or {})
        unknown = sorted({c for c in channels if c is not None and c not in known})
        if unknown:
            self.warnings.append(
                f"prompt channels {unknown} are not in the brand card: their channel rules are not checked"
            )
        return [c if c in known else None for c in channels]

    def skip(self, key: str, reason: str) -> None:
        self.metrics["skipped"][key] = reason

    def shared(self, name: str, make: Callable[[], Any]) -> Any:
        """One object per eval shared by several metrics (e.g. the log-prob models), made on first use."""
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]

    def timing(self, name: str, since: float) -> None:
        """``metrics.timings[name]``: seconds since ``since`` (``timings`` moves after the newest result)."""
        timings = self.metrics.pop("timings", {})
        timings[name] = round(time.perf_counter() - since, 1)
        self.metrics["timings"] = timings


def compute_all(ctx: EvalContext) -> dict[str, Any]:
    """Every enabled family in order; a family whose input is missing records itself in ``skipped``."""
    seconds: dict[str, float] = {}
    for metric in all_metrics():
        if metric.compute is None or not enabled(metric, ctx.cfg.metrics):
            continue
        t0 = time.perf_counter()
        result = metric.compute(ctx)
        # Per family (a family's first use also pays for shared models, e.g. the log-prob pass).
        seconds[metric.key] = round(time.perf_counter() - t0, 1)
        if result is not None:
            ctx.metrics[metric.key] = result
    timings = ctx.metrics.pop("timings", {})
    ctx.metrics["timings"] = {**timings, "metric_s": seconds}
    ctx.channels  # noqa: B018 - the unknown-channel warning even when no metric read the channels
    return ctx.metrics


# ----------------------------------------------------------------------------- reporting
def fmt_ci(e: dict | None, digits: int = 3) -> str:
    """``value [low, high]`` of an estimate (``—`` when absent)."""
    if not e:
        return "—"
    return f"{e['value']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def side(est: dict, null: float, lower_is_better: bool = False) -> str:
    """Which side a CI favours relative to ``null`` (:data:`RATE_NULL` for rates, 0 for differences
    aligned - base); ``lower_is_better`` for rates such as violations."""
    above, below = ("base", "aligned") if lower_is_better else ("aligned", "base")
    if est["low"] > null:
        return above
    if est["high"] < null:
        return below
    return "inconclusive"


def row(metric: str, base: str, aligned: str, delta: str, better: str, note: str = "") -> Row:
    """One verdict-table row; ``better`` is aligned | base | inconclusive | info (no side)."""
    return dict(metric=metric, base=base, aligned=aligned, delta=delta, better=better, note=note)


def table_rows(m: dict[str, Any], judge: dict[str, Any] | None = None) -> list[Row]:
    """The verdict table: every present family's rows, by position."""
    groups = [(pos, fn) for metric in all_metrics() if metric.key in m for pos, fn in metric.rows]
    return [r for _, fn in sorted(groups, key=lambda g: g[0]) for r in fn(m, judge)]


def primary_ranks() -> dict[str, int]:
    """Row label -> rank (lower first) of the rows that can be the verdict's primary metric."""
    return {label: rank for metric in all_metrics() for label, rank in metric.primary.items()}


def sections_md(m: dict[str, Any]) -> list[str]:
    """The report.md sections of the present families, by position."""
    found = [metric.section for metric in all_metrics() if metric.section and metric.key in m]
    return [line for _, fn in sorted(found, key=lambda s: s[0]) for line in fn(m)]


def sample_fields(m: dict[str, Any], i: int) -> dict[str, Any]:
    """Extra ``samples.jsonl`` fields of row ``i`` (e.g. each side's reward)."""
    out: dict[str, Any] = {}
    for metric in all_metrics():
        if metric.sample_fields is not None and metric.key in m:
            out.update(metric.sample_fields(m, i))
    return out
