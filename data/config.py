"""``DataConfig``: what ``onbrand data import|snapshot|report`` read (``configs/data/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from onbrand.config import check_range

FORMATS = ("auto", "canonical", "trl", "standard", "hh-rlhf", "ultrafeedback", "csv")


@dataclass
class DataConfig:
    """Inputs, brand card, tokenizer checks, split and output of one dataset snapshot.

    Paths are relative to the current directory; ``pkg:<path>`` means a file bundled inside the
    ``onbrand.data`` package (e.g. ``pkg:brands/aurora/product.jsonl``).
    """

    name: str = "demo"
    inputs: list[str] = field(default_factory=list)
    # Files whose records ALL go to the test split (the fixed eval split); their prompts are
    # removed from train (reason split_leak) so no prompt is in both.
    test_inputs: list[str] = field(default_factory=list)
    format: str = "auto"
    brand: str = ""  # brand card YAML; records without a brand get its id
    tokenizer: str = "embedded:smollm2-135m-instruct"  # "" skips the tokenizer checks
    max_length: int = 512  # prompt + completion tokens, system prompt included
    min_completion_tokens: int = 8  # truncation must leave at least this many completion tokens
    test_fraction: float = 0.2  # used only when test_inputs is empty
    seed: int = 0
    max_chars: int = 20_000  # per-row size cap ("absurd size")
    out: str = "runs/demo/snapshot"
    report_dir: str = ""  # default: <out>/report
    strict: bool = False  # exit non-zero when any row is quarantined

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        check_range("max_length", self.max_length, 16, 1_000_000)
        check_range("min_completion_tokens", self.min_completion_tokens, 1, self.max_length)
        check_range("test_fraction", self.test_fraction, 0.0, 1.0, hi_open=True)
        check_range("max_chars", self.max_chars, 1, None)
        if not self.out:
            raise ValueError("out must be a directory path, got ''")

    @property
    def report_path(self) -> str:
        return self.report_dir or f"{self.out}/report"
