"""The canonical record JSONL itself (what ``onbrand annotate export`` and ``data import`` write)."""

from __future__ import annotations

from typing import Any

from onbrand.data.records import FIELDS


def detect(obj: dict[str, Any]) -> bool:
    # Canonical rows carry their content id; plain TRL rows do not.
    return isinstance(obj.get("id"), str) and isinstance(obj.get("prompt"), list)


def convert(obj: dict[str, Any]) -> dict[str, Any]:
    # The id is recomputed from content by canonicalize (a stale id never survives an edit).
    return {k: obj[k] for k in FIELDS if k in obj and k != "id"}
