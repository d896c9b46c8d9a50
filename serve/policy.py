"""The guard's configuration (``configs/guard/*.yaml``) and its policy: what to do with an answer
that breaks the brand card's rules.

Each rule kind of the card (``banned_phrase``, ``banned_claim``, ``required_element``,
``length_limit``) gets an action; ``rules`` overrides it for single rule ids. Actions, mildest first:

- ``log``: the answer goes out unchanged; the log records the failed rules;
- ``flag``: as ``log``, plus the response header ``X-Onbrand-Flag: <rule ids>``;
- ``regenerate``: ask the upstream again with a new seed, up to ``max_regenerations`` times; the
  first answer that passes every regenerate/block rule goes out; if none does, the fallback;
- ``block``: the answer is replaced by ``fallback_message`` (the brand card has no fallback
  message field, so the guard config holds it).

When several rules fail, the strictest action wins. Streamed answers (``stream: true``) are
checked when the stream ends, after the client has the text: ``regenerate`` and ``block`` are
applied as ``flag`` there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from onbrand.config import check_range
from onbrand.data.brand import RULE_KINDS, RuleCheck

Action = Literal["log", "flag", "regenerate", "block"]
ACTIONS: tuple[str, ...] = ("log", "flag", "regenerate", "block")  # mildest first
SEVERITY = {a: i for i, a in enumerate(ACTIONS)}
DEFAULT_POLICY: dict[str, str] = {
    "banned_phrase": "flag",
    "banned_claim": "block",
    "required_element": "flag",
    "length_limit": "log",
}
DEFAULT_FALLBACK = (
    "Thanks for your message. I can't answer that well here, so a member of our team will follow up."
)


@dataclass
class LogSection:
    """Where and how the conversation log is written (see onbrand.serve.convlog)."""

    dir: str = "guard-log"
    redact: bool = True  # mask e-mails, phone and card numbers before writing
    segment_max_mb: float = 64.0  # rotate the JSONL segment at this size...
    segment_max_s: float = 3600.0  # ...or this age
    compact: bool = True  # closed segments -> Parquet (atomically), JSONL removed
    # Every record is written and flushed to the OS before the client gets its response (a crash
    # of the guard loses nothing answered); fsync to disk: "always" (per record, before the
    # response), "interval" (every fsync_interval_ms by a background thread) or "never" (the OS).
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval_ms: float = 1000.0

    def __post_init__(self) -> None:
        if not self.dir.strip():
            raise ValueError("log.dir must not be empty")
        check_range("segment_max_mb", self.segment_max_mb, 0.0, None, lo_open=True)
        check_range("segment_max_s", self.segment_max_s, 0.0, None, lo_open=True)
        check_range("fsync_interval_ms", self.fsync_interval_ms, 1.0, 600_000.0)


@dataclass
class GuardConfig:
    """``onbrand guard``: an OpenAI-compatible proxy that checks answers against the brand card."""

    upstream: str = "http://127.0.0.1:8000/v1"  # the OpenAI-compatible server (vllm serve)
    brand: str = "configs/brands/aurora.yaml"
    export: str = ""  # the served export's directory (its manifest.json gives the export id)
    host: str = "127.0.0.1"
    port: int = 8080
    policy: dict[str, Action] = field(default_factory=lambda: dict(DEFAULT_POLICY))
    rules: dict[str, Action] = field(default_factory=dict)  # per rule id, wins over policy
    max_regenerations: int = 2
    fallback_message: str = DEFAULT_FALLBACK
    channel_header: str = "X-Onbrand-Channel"
    default_channel: str = ""  # channel when the request has no header ("" = none)
    timeout_s: float = 120.0  # upstream read timeout -> 504
    connect_timeout_s: float = 5.0  # upstream connect timeout -> 502
    max_connections: int = 256  # to the upstream, in all
    upstream_pools: int = 8  # connection pools the connections are spread over (less CPU per request)
    log: LogSection = field(default_factory=LogSection)

    def __post_init__(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"upstream must be an http(s) URL, got {self.upstream!r}")
        bad = sorted(set(self.policy) - set(RULE_KINDS))
        if bad:
            raise ValueError(f"policy: unknown rule kind(s) {bad}; rule kinds: {', '.join(RULE_KINDS)}")
        self.policy = {**DEFAULT_POLICY, **self.policy}
        check_range("port", self.port, 0, 65535)
        check_range("max_regenerations", self.max_regenerations, 0, 10)
        check_range("timeout_s", self.timeout_s, 0.0, None, lo_open=True)
        check_range("connect_timeout_s", self.connect_timeout_s, 0.0, None, lo_open=True)
        check_range("max_connections", self.max_connections, 1, 100_000)
        check_range("upstream_pools", self.upstream_pools, 1, min(64, self.max_connections))
        if not self.fallback_message.strip():
            raise ValueError("fallback_message must not be empty")

    @property
    def upstream_root(self) -> str:
        """The upstream URL without a trailing ``/v1``: request paths are forwarded as they come."""
        root = self.upstream.rstrip("/")
        return root[: -len("/v1")] if root.endswith("/v1") else root


def rule_action(cfg: GuardConfig, check: RuleCheck) -> str:
    """The configured action for one failed check (rule id override, else its kind's)."""
    return cfg.rules.get(check.rule_id) or cfg.policy.get(check.kind, "log")


def decide(cfg: GuardConfig, checks: list[RuleCheck]) -> tuple[str, list[str]]:
    """(action, failed rule ids): ``pass`` when every check passed, else the strictest action."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        return "pass", []
    action = max((rule_action(cfg, c) for c in failed), key=SEVERITY.__getitem__)
    return action, [c.rule_id for c in failed]


def streamed_action(action: str) -> str:
    """A streamed answer is already sent when it is checked: regenerate/block become flag."""
    return "flag" if action in ("regenerate", "block") else action
