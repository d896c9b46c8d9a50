"""UltraFeedback-binarized rows (HuggingFaceH4/ultrafeedback_binarized): ``prompt`` string,
``chosen``/``rejected`` full message lists (user turn included), ``score_chosen``/``score_rejected``.

The shared leading messages become the prompt. A pair whose chosen score is not higher than the
rejected score is quarantined (``bad_scores``) rather than silently trusted."""

from __future__ import annotations

from typing import Any

from onbrand.data.formats.trl import META, split_shared_prefix
from onbrand.data.records import RecordError


def detect(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("chosen"), list) and ("score_chosen" in obj or "score_rejected" in obj)


def _score(obj: dict[str, Any], key: str) -> float:
    v = obj.get(key)
    if v is None:
        raise RecordError("missing_field", key, "is required for UltraFeedback rows")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordError("wrong_type", key, f"expected a number, got {type(v).__name__}")
    return float(v)


def convert(obj: dict[str, Any]) -> dict[str, Any]:
    sc, sr = _score(obj, "score_chosen"), _score(obj, "score_rejected")
    if not sc > sr:
        raise RecordError("bad_scores", "score_chosen", f"chosen score {sc} is not above rejected score {sr}")
    if not isinstance(obj.get("rejected"), list):
        raise RecordError("wrong_type", "rejected", "expected a list of messages")
    prompt, chosen, rejected = split_shared_prefix(obj["chosen"], obj["rejected"])
    if not prompt:
        raise RecordError("bad_structure", "prompt", "chosen and rejected share no leading user turn")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **{k: obj[k] for k in META if k in obj}}
