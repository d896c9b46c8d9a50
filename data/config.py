"""``DataConfig``: what ``onbrand data import|snapshot|report`` read (``configs/data/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from onbrand.config import check_range
from onbrand.data.formats import FORMATS


@dataclass
class FormatOptions:
    """Field names of Label Studio / Argilla exports whose projects do not use the templates' names.

    The YAML twin of ``onbrand data import``'s ``--ls-*`` / ``--argilla-*`` flags, so a snapshot
    config can read such an export too (the flags override these). Empty = the format's defaults
    (docs/data.md, "From Label Studio and Argilla"); a key that is not one of these six is an error.
    """

    ls_prompt_field: str = ""  # Label Studio data key of the prompt (default prompt)
    ls_left_field: str = ""  # data key of the Pairwise tag's left answer (default answer1|text1)
    ls_right_field: str = ""  # data key of the right answer (default answer2|text2)
    argilla_prompt_field: str = ""  # Argilla field of the prompt (default prompt)
    argilla_response_fields: list[str] = field(default_factory=list)  # [a, b] (default response1, response2)
    argilla_question: str = ""  # ranking/label question to read (default: the one naming a or b)

    def __post_init__(self) -> None:
        pair = self.argilla_response_fields
        if pair and (len(pair) != 2 or not all(pair) or pair[0] == pair[1]):
            raise ValueError(f"argilla_response_fields: expected two different names [a, b], got {pair!r}")

    def as_options(self) -> dict[str, object]:
        """The ``options`` mapping the tool formats read: only the names that were set."""
        opts: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        opts["argilla_response_fields"] = tuple(self.argilla_response_fields)
        return {k: v for k, v in opts.items() if v}


@dataclass
class DataConfig:
    """Inputs, brand card, tokenizer checks, split and output of one dataset snapshot.

    Paths are relative to the current directory; ``pkg:<path>`` means a file bundled inside the
    ``onbrand.data`` package (e.g. ``pkg:brands/aurora/product.jsonl``).
    """

    name: str = "demo"
    inputs: list[str] = field(default_factory=list)
    # Files whose records ALL go to the test split (the fixed eval split); pool records whose
    # prompt or chosen text near-duplicates one of them are kept out (reason split_leak).
    test_inputs: list[str] = field(default_factory=list)
    # The same for the dev split (all tuning) and the judge split (reward model of the eval).
    # Priority between fixed files: test > dev > judge (the lower split's near-twin is quarantined).
    dev_inputs: list[str] = field(default_factory=list)
    judge_inputs: list[str] = field(default_factory=list)
    format: str = "auto"
    # Label Studio / Argilla field names (``format_options: {ls_prompt_field: question, ...}``).
    format_options: FormatOptions = field(default_factory=FormatOptions)
    brand: str = ""  # brand card YAML; records without a brand get its id
    tokenizer: str = "embedded:smollm2-135m-instruct"  # "" skips the tokenizer checks
    max_length: int = 512  # prompt + completion tokens, system prompt included
    min_completion_tokens: int = 8  # truncation must leave at least this many completion tokens
    # Share of the pool's (``inputs``) near-duplicate clusters per split, per channel; each one is
    # used only when that split has no fixed file. The rest is train.
    test_fraction: float = 0.2
    dev_fraction: float = 0.0
    judge_fraction: float = 0.0
    near_dup_threshold: float = 0.8  # word 3-gram Jaccard of prompt or chosen: same cluster / a leak
    adversarial_check: bool = True  # quarantine non-test records near the card's adversarial prompts
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
        for name in ("test_fraction", "dev_fraction", "judge_fraction"):
            check_range(name, getattr(self, name), 0.0, 1.0, hi_open=True)
        used = {s: getattr(self, f"{s}_fraction") for s in self.pool_splits}
        if sum(used.values()) >= 1.0:
            parts = " + ".join(f"{s}_fraction {v}" for s, v in used.items())
            raise ValueError(f"{parts} must be < 1 (the rest of the pool is train)")
        check_range("near_dup_threshold", self.near_dup_threshold, 0.0, 1.0, lo_open=True)
        check_range("max_chars", self.max_chars, 1, None)
        if not self.out:
            raise ValueError("out must be a directory path, got ''")

    @property
    def fixed_inputs(self) -> dict[str, list[str]]:
        """Fixed split files in priority order (test > dev > judge)."""
        return {"test": self.test_inputs, "dev": self.dev_inputs, "judge": self.judge_inputs}

    @property
    def all_inputs(self) -> list[str]:
        """Every file the snapshot reads: the fixed split files (priority order), then the pool."""
        return [p for files in self.fixed_inputs.values() for p in files] + list(self.inputs)

    @property
    def pool_splits(self) -> list[str]:
        """Splits the pool (``inputs``) fills by fraction: those without a fixed file."""
        return [s for s, files in self.fixed_inputs.items() if not files]

    @property
    def report_path(self) -> str:
        return self.report_dir or f"{self.out}/report"
