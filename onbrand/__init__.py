"""onbrand: align an open LLM to a brand from human preference data."""

__version__ = "0.1.0"
