"""The release baseline: what the eval measured for the released (aligned) model.

Found from an export directory (``manifest.json`` + ``eval/report.json``, the report the export
was gated on), an eval directory (``report.json``) or a report JSON itself. Per metric:

- a rule's violation rate: ``compliance.per_rule[rule].aligned_violations`` over ``aligned.n``
  answers (every answer counts, as in the eval: a rule that did not apply passed);
- ``any_rule``: the share of answers failing at least one rule (``1 - compliance.overall.aligned``);
- ``reward``: mean and standard error of ``rewards.aligned`` (the reward model's per-answer scores);
- ``voice``: the same from ``voice.aligned_per_sample`` (or the bootstrap CI of ``voice.aligned``);
- ``length``: the mean answer length in tokens, ``drift.aligned.tokens.mean`` (standard error
  from its bootstrap CI).

A metric the report lacks is ``None``: its checks are reported as "no baseline", not run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onbrand.artifacts import read_json
from onbrand.serve.monitor_stats import Z95


@dataclass
class Baseline:
    source: str
    run_id: str | None = None
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> {k, n, rate, kind}
    any_rule: dict[str, Any] | None = None  # {k, n, rate}
    reward: dict[str, float] | None = None  # {mean, se, n}
    voice: dict[str, float] | None = None
    length: dict[str, Any] | None = None  # {mean, se, n, unit}
    brand: str | None = None  # brand card path the eval used
    reward_run: str | None = None
    tokenizer: str | None = None  # where the release tokenizer is (export dir or the eval's base model)
    export_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def find_report(path: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """(report.json, export manifest or None) for an export dir, an eval dir or a report file."""
    path = Path(path)
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: baseline not found (expected an export dir, eval dir or report.json)"
        )
    manifest = read_json(path / "manifest.json") if (path / "manifest.json").exists() else None
    for cand in (path / "eval" / "report.json", path / "report.json"):
        if cand.exists():
            return cand, manifest
    raise FileNotFoundError(
        f"{path}: no eval report (looked for eval/report.json and report.json); "
        "pass --baseline <eval report dir or report.json>"
    )


def _se_from_ci(est: dict[str, Any]) -> float:
    return max(0.0, (float(est["high"]) - float(est["low"])) / (2 * Z95))


def _sample_stats(values: list[float]) -> dict[str, float] | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    n = len(vals)
    mean = sum(vals) / n
    var = sum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "se": math.sqrt(var / n), "n": n}


def _rules(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for rule, v in ((m.get("compliance") or {}).get("per_rule") or {}).items():
        n = int((v.get("aligned") or {}).get("n") or 0)
        k = int(v.get("aligned_violations") or 0)
        if n:
            out[rule] = {"k": k, "n": n, "rate": k / n, "kind": v.get("kind")}
    return out


def _means(m: dict[str, Any]) -> tuple[dict | None, dict | None, dict | None]:
    reward = _sample_stats((m.get("rewards") or {}).get("aligned") or [])
    voice_m = m.get("voice") or {}
    voice = _sample_stats(voice_m.get("aligned_per_sample") or [])
    if voice is None and voice_m.get("aligned"):
        est = voice_m["aligned"]
        voice = {"mean": float(est["value"]), "se": _se_from_ci(est), "n": int(est["n"])}
    tokens = (((m.get("drift") or {}).get("aligned") or {}).get("tokens") or {}).get("mean")
    length = None
    if tokens:
        length = {
            "mean": float(tokens["value"]),
            "se": _se_from_ci(tokens),
            "n": int(tokens["n"]),
            "unit": "tokens",
        }
    return reward, voice, length


def load_baseline(path: str | Path) -> Baseline:
    """The :class:`Baseline` of an export dir, eval dir or report JSON (errors name the file)."""
    report_path, manifest = find_report(path)
    try:
        report = read_json(report_path)
    except ValueError as e:
        raise ValueError(f"{report_path}: not a JSON eval report ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ValueError(f"{report_path}: not an onbrand eval report (no 'metrics')")
    m = report["metrics"]
    cfg = report.get("config") or {}
    overall = ((m.get("compliance") or {}).get("overall") or {}).get("aligned")
    any_rule = None
    if overall and overall.get("n"):
        n = int(overall["n"])
        k = int(round((1.0 - float(overall["value"])) * n))
        any_rule = {"k": k, "n": n, "rate": k / n}
    reward, voice, length = _means(m)
    export_dir = Path(path) if manifest is not None else None
    brand = (manifest or {}).get("brand", {}) or {}
    return Baseline(
        source=str(report_path),
        run_id=((report.get("inputs") or {}).get("aligned") or {}).get("run_id"),
        rules=_rules(m),
        any_rule=any_rule,
        reward=reward,
        voice=voice,
        length=length,
        brand=brand.get("path") or cfg.get("brand"),
        reward_run=cfg.get("reward"),
        tokenizer=str(export_dir)
        if export_dir and (export_dir / "tokenizer.json").exists()
        else cfg.get("base_model"),
        export_id=(manifest or {}).get("run_id"),
    )
