"""One reader per source format. JSON formats expose ``detect(obj) -> bool`` and
``convert(obj) -> dict`` (canonical-shaped, raising ``RecordError``); CSV streams rows itself.

``detect_format(obj)`` tries the JSON formats most-specific first.
"""

from __future__ import annotations

from typing import Any

from onbrand.data.formats import canonical, hh_rlhf, standard, trl, ultrafeedback

# Most specific first: UltraFeedback and HH-RLHF rows also have chosen/rejected keys.
JSON_FORMATS = {
    "ultrafeedback": ultrafeedback,
    "hh-rlhf": hh_rlhf,
    "canonical": canonical,
    "trl": trl,
    "standard": standard,
}
# CSV/TSV files are a container, not a row shape: their rows are read as the ``standard`` format.
CONTAINER_FORMATS = ("csv",)
# Every value ``format:`` / ``--format`` accepts (the one list; ``auto`` detects per row or file).
FORMATS = ("auto", *JSON_FORMATS, *CONTAINER_FORMATS)


def detect_format(obj: Any) -> str | None:
    """Name of the first JSON format whose ``detect`` accepts ``obj``, else None."""
    if not isinstance(obj, dict):
        return None
    for name, mod in JSON_FORMATS.items():
        if mod.detect(obj):
            return name
    return None
