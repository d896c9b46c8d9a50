"""The pairwise LLM judge: rubric from the brand card, OpenAI-compatible endpoint or local model,
both answer orders, strict parsing, a verdict cache (see ``pairwise.py``)."""

from onbrand.eval.judge.backends import JudgeSetupError
from onbrand.eval.judge.pairwise import SELF_JUDGED, Judge, prepare

__all__ = ["SELF_JUDGED", "Judge", "JudgeSetupError", "prepare"]
