"""One reader per source format. JSON row formats expose ``detect(obj) -> bool`` and
``convert(obj) -> dict`` (canonical-shaped, raising ``RecordError``); CSV streams rows itself.

Annotation-tool exports (Label Studio tasks, Argilla records) hold several annotators' verdicts in
one row: they expose ``convert_many(obj, options) -> list[Judgement]`` instead of ``convert``
(:mod:`onbrand.data.formats.judgements`), and the importer makes one record per verdict.

``detect_format(obj)`` tries the JSON formats most-specific first.
"""

from __future__ import annotations

from typing import Any

from onbrand.data.formats import argilla, canonical, hh_rlhf, label_studio, standard, trl, ultrafeedback

# Most specific first: UltraFeedback and HH-RLHF rows also have chosen/rejected keys. The tool
# exports come first: they need a ``data``/``fields`` object no preference-pair row has.
JSON_FORMATS = {
    "label-studio": label_studio,
    "argilla": argilla,
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
# Formats whose rows carry several judgements (``convert_many``); their options by format.
MULTI_FORMATS = {name: mod.OPTIONS for name, mod in JSON_FORMATS.items() if hasattr(mod, "convert_many")}


def detect_format(obj: Any) -> str | None:
    """Name of the first JSON format whose ``detect`` accepts ``obj``, else None."""
    if not isinstance(obj, dict):
        return None
    for name, mod in JSON_FORMATS.items():
        if mod.detect(obj):
            return name
    return None
