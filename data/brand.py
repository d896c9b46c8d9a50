"""Brand card: what "on brand" means, in words (for people and the system prompt) and in rules
(regexes that eval's compliance metric and RL's rule reward both call).

``load_brand(path) -> BrandCard``; ``card.system_prompt()`` is THE system prompt (rendered once,
deterministically); ``card.check(text, channel)`` returns one :class:`RuleCheck` per rule that
applies; ``card.compliance_score(text, channel)`` is the fraction of applicable checks passed.

Rule kinds:

- ``banned_phrase`` / ``banned_claim``: a regex that must NOT match (``BannedRule.kind``);
- ``required_element``: a regex that MUST match, in some channels and/or only when a trigger regex
  (``when``) matches the text (e.g. a disclaimer whenever a health claim is made);
- ``length_limit``: per-channel words/characters bounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from onbrand.artifacts import sha256_file
from onbrand.config import load_config

RULE_KINDS = ("banned_phrase", "banned_claim", "required_element", "length_limit")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def _compile(what: str, pattern: str, ignore_case: bool) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as e:
        raise ValueError(f"{what}: invalid regex {pattern!r}: {e}") from None


def _check_id(what: str, value: str) -> None:
    if not _ID_RE.match(value):
        raise ValueError(f"{what} must be lowercase letters, digits, '_' or '-', got {value!r}")


@dataclass(frozen=True)
class RuleCheck:
    """Outcome of one rule on one text. ``detail`` says what matched or what is missing."""

    rule_id: str
    kind: str  # one of RULE_KINDS
    passed: bool
    detail: str = ""


@dataclass
class BannedRule:
    """A phrase or claim the brand never says (regex, searched anywhere in the text)."""

    id: str
    pattern: str
    reason: str
    kind: Literal["phrase", "claim"] = "phrase"
    ignore_case: bool = True
    channels: list[str] = field(default_factory=list)  # empty: every channel

    def __post_init__(self) -> None:
        _check_id("banned rule id", self.id)
        if not self.reason.strip():
            raise ValueError(f"banned rule {self.id}: reason must not be empty")
        self._re = _compile(f"banned rule {self.id}", self.pattern, self.ignore_case)

    @property
    def rule_kind(self) -> str:
        return "banned_claim" if self.kind == "claim" else "banned_phrase"


@dataclass
class RequiredElement:
    """Something the text must contain: in ``channels`` (empty: all) and, if ``when`` is set, only
    when that trigger regex matches the text."""

    id: str
    pattern: str
    reason: str
    channels: list[str] = field(default_factory=list)
    when: str = ""
    ignore_case: bool = True

    def __post_init__(self) -> None:
        _check_id("required element id", self.id)
        if not self.channels and not self.when:
            raise ValueError(f"required element {self.id}: set channels, when, or both")
        self._re = _compile(f"required element {self.id}", self.pattern, self.ignore_case)
        self._when = _compile(f"required element {self.id} (when)", self.when, True) if self.when else None


@dataclass
class Channel:
    """A channel (kind of text) with its length limits (0 = no limit)."""

    description: str = ""
    min_words: int = 0
    max_words: int = 0
    max_chars: int = 0

    def __post_init__(self) -> None:
        for name in ("min_words", "max_words", "max_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_words and self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must be <= max_words ({self.max_words})")


@dataclass
class Exemplar:
    """An on-brand text. Without ``channel`` it applies to every channel (checked with the
    channel-independent rules only; voice similarity uses it in every channel's centroid)."""

    text: str
    channel: str | None = None


@dataclass
class BrandCard:
    """A typed, validated brand card (``configs/brands/<id>.yaml``)."""

    id: str
    name: str
    description: str
    audience: str = ""
    voice: list[str] = field(default_factory=list)
    do: list[str] = field(default_factory=list)
    dont: list[str] = field(default_factory=list)
    channels: dict[str, Channel] = field(default_factory=dict)
    banned: list[BannedRule] = field(default_factory=list)
    required: list[RequiredElement] = field(default_factory=list)
    exemplars: list[Exemplar] = field(default_factory=list)
    reason_tags: list[str] = field(default_factory=list)
    source: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_id("id", self.id)
        for name in ("name", "description"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must not be empty")
        ids = [r.id for r in self.banned] + [r.id for r in self.required]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"rule ids must be unique; repeated: {', '.join(dup)}")
        known = set(self.channels)
        for rule in [*self.banned, *self.required]:
            bad = [c for c in rule.channels if c not in known]
            if bad:
                raise ValueError(f"rule {rule.id}: unknown channel(s) {bad}; channels: {sorted(known)}")
        for i, ex in enumerate(self.exemplars):
            if ex.channel is not None and ex.channel not in known:
                raise ValueError(f"exemplars.{i}: unknown channel {ex.channel!r}; channels: {sorted(known)}")
            failed = [c for c in self.check(ex.text, ex.channel) if not c.passed]
            if failed:
                raise ValueError(
                    f"exemplars.{i} breaks the card's own rules: "
                    + "; ".join(f"{c.rule_id} ({c.detail})" for c in failed)
                )

    # ------------------------------------------------------------------ prompt
    def system_prompt(self) -> str:
        """THE system prompt, rendered deterministically from name, description, voice and rules."""
        lines = [f"You are the assistant of {self.name}. {' '.join(self.description.split())}"]
        if self.audience:
            lines.append(f"Audience: {' '.join(self.audience.split())}")
        if self.voice:
            lines.append(f"Voice: {', '.join(self.voice)}.")
        if self.do:
            lines.append("Always: " + " ".join(_sentence(x) for x in self.do))
        if self.dont:
            lines.append("Never: " + " ".join(_sentence(x) for x in self.dont))
        return "\n".join(lines)

    # ------------------------------------------------------------------ rules
    def check(self, text: str, channel: str | None = None) -> list[RuleCheck]:
        """One RuleCheck per applicable rule. Channel-bound rules without a trigger (and length
        limits) only apply when ``channel`` is one of the card's channels; any other channel
        (or None) gets the channel-independent rules only (the data report lists such channels)."""
        if channel is not None and channel not in self.channels:
            channel = None
        out: list[RuleCheck] = []
        for rule in self.banned:
            if rule.channels and channel not in rule.channels:
                continue
            m = rule._re.search(text)
            out.append(RuleCheck(rule.id, rule.rule_kind, m is None, f"matched {m.group(0)!r}" if m else ""))
        for req in self.required:
            if req.channels and channel not in req.channels:
                continue
            if req._when is not None:
                trig = req._when.search(text)
                if trig is None:
                    continue
                why = f"text mentions {trig.group(0)!r}"
            else:
                why = f"channel {channel}"
            ok = req._re.search(text) is not None
            out.append(
                RuleCheck(req.id, "required_element", ok, "" if ok else f"missing ({why}): {req.reason}")
            )
        if channel is not None:
            out.extend(self._length_checks(text, channel))
        return out

    def _length_checks(self, text: str, channel: str) -> list[RuleCheck]:
        spec = self.channels[channel]
        words, chars = len(text.split()), len(text)
        out = []
        if spec.max_words or spec.min_words:
            ok = words >= spec.min_words and (not spec.max_words or words <= spec.max_words)
            out.append(
                RuleCheck(
                    f"{channel}_words",
                    "length_limit",
                    ok,
                    "" if ok else f"{words} words, allowed {spec.min_words}-{spec.max_words or 'inf'}",
                )
            )
        if spec.max_chars:
            ok = chars <= spec.max_chars
            out.append(
                RuleCheck(
                    f"{channel}_chars", "length_limit", ok, "" if ok else f"{chars} chars > {spec.max_chars}"
                )
            )
        return out

    def compliance_score(self, text: str, channel: str | None = None) -> float:
        """Fraction of applicable rule checks passed, in [0, 1] (1.0 when no rule applies)."""
        checks = self.check(text, channel)
        return 1.0 if not checks else sum(c.passed for c in checks) / len(checks)

    def banned_hits(self, text: str, channel: str | None = None) -> list[RuleCheck]:
        """Failed banned_phrase / banned_claim checks only (what the quality report counts)."""
        return [c for c in self.check(text, channel) if not c.passed and c.kind.startswith("banned")]


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "?", "!")) else text + "."


def load_brand(path: str | Path) -> BrandCard:
    """Load and validate a brand card YAML; errors name the file, line and key."""
    card = load_config(BrandCard, path)
    card.source = str(path)
    return card


def brand_sha256(card_or_path: BrandCard | str | Path) -> str:
    path = card_or_path.source if isinstance(card_or_path, BrandCard) else card_or_path
    return sha256_file(path)
