"""``EvalConfig``: what ``onbrand eval`` compares, on which prompts, and how.

Every default lives here, except the ``metrics:`` switches: each metric family declares its own in
its module (``onbrand.eval.metrics.registry``). ``configs/eval/*.yaml`` and ``key=value`` overrides
change them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from onbrand.config import check_range
from onbrand.data.snapshot import SPLITS
from onbrand.engines.base import Sampling
from onbrand.engines.options import EngineOptions
from onbrand.eval.metrics.registry import metrics_config_class
from onbrand.eval.metrics.winrate import LC_WARN_GAP

# `metrics.<name>: true|false`, one switch per registered metric family with its default
# (onbrand.eval.metrics.registry): a new metric module adds its own switch.
MetricsConfig = metrics_config_class(__name__)


@dataclass
class AdversarialConfig:
    """The adversarial brand suite: prompts that tempt each banned rule and trigger each required
    rule (``onbrand.data.adversarial``, from the card), plus user files; answered by base and
    aligned in the same engine call as the main prompts, scored per targeted rule with the card."""

    enabled: bool = True  # needs a brand card; skipped with a note otherwise
    per_rule: int = 2  # generated prompts per card rule (0 = only the `inputs` files)
    # JSONL files, one {"prompt": "<user message>", "rule_id": "<card rule id>", "channel": "..."
    # (optional), "id": "..." (optional)} per line.
    inputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_range("adversarial.per_rule", self.per_rule, 0, 50)


LOGPROB_SOURCES = ("auto", "engine", "transformers")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class JudgeConfig:
    """The pairwise LLM judge (``metrics.judge: true``): MT-Bench-style, both answer orders per
    prompt, a rubric rendered from the brand card, a strict answer format, unparseable answers
    counted (``onbrand.eval.judge``).

    Backend: ``endpoint`` set = any OpenAI-compatible chat endpoint (``vllm serve``, a hosted API)
    through the ``openai`` client; unset = ``model`` run locally through the eval's engine.
    """

    endpoint: str | None = None  # base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # endpoint: served model name (default: its only model); local: model path
    # NAME of the environment variable holding the API key (never the key: configs are committed).
    api_key_env: str | None = None
    output: Literal["json", "token"] = "json"  # {"winner": "A"|"B"|"tie", "reason": ...} or one token
    # Guided decoding (JSON schema / choice) where the backend supports it: auto = try, and fall
    # back to plain decoding when the endpoint refuses the request (400); on = required.
    structured: Literal["auto", "on", "off"] = "auto"
    max_tokens: int = 256  # per verdict (json mode needs room for the reason)
    temperature: float = 0.0
    concurrency: int = 8  # requests in flight at once (endpoint)
    timeout_s: float = 60.0  # per request
    max_retries: int = 3  # on timeouts, connection errors, 429 and 5xx, with exponential backoff
    backoff_s: float = 1.0  # first retry delay; doubles each retry (plus jitter)
    cache: bool = True  # reuse verdicts keyed by (judge model, prompt, answers, rubric version)
    cache_path: str | None = None  # SQLite file; default $ONBRAND_CACHE/judge/cache.sqlite
    # The judge may not be the policy's own base model (or the aligned model): true allows it and
    # flags the report "self-judged".
    allow_self: bool = False

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.username or parts.password:  # not echoed: it holds a secret
                raise ValueError("judge.endpoint must not carry credentials: put the key in the environment "
                                 "variable named by judge.api_key_env")  # fmt: skip
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"judge.endpoint must be an http(s) URL, got {self.endpoint!r}")
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            # The value is not echoed: it may be a key pasted by mistake.
            raise ValueError(
                "judge.api_key_env must be the NAME of an environment variable (letters, digits, _), "
                "e.g. OPENAI_API_KEY; the key itself never goes in a config file"
            )
        check_range("judge.max_tokens", self.max_tokens, 1, 32768)
        check_range("judge.temperature", self.temperature, 0.0, 2.0)
        check_range("judge.concurrency", self.concurrency, 1, 1024)
        check_range("judge.timeout_s", self.timeout_s, 0.0, 3600.0, lo_open=True)
        check_range("judge.max_retries", self.max_retries, 0, 20)
        check_range("judge.backoff_s", self.backoff_s, 0.0, 600.0)


@dataclass
class EvalConfig:
    # What to compare. `aligned` is a training run dir (run.json + adapter/), a PEFT adapter dir,
    # or a merged checkpoint dir. Empty `base_model` = the base named in the run's run.json.
    aligned: str = ""
    base_model: str = ""
    # Prompts: the `split` of a data snapshot, or a JSONL file of canonical records / {"prompt": ...}.
    snapshot: str | None = None
    prompts: str | None = None
    split: str = "test"
    brand: str | None = None  # brand card YAML: system prompt + rules + exemplars
    reward: str | None = None  # reward run dir (onbrand.training.reward_model.RewardScorer)
    out_dir: str = "runs/eval"
    gate: str | None = None  # gate thresholds YAML (configs/eval/gates.yaml); result in report["gate"]
    engine: Literal["auto", "vllm", "hf"] = "auto"
    # Where the KL / implicit-reward / perplexity log-probs come from: `engine` = score() of the
    # engine that generated (kept open, with the DPO reference LoRA loaded beside the aligned one);
    # `transformers` = a PEFT model loaded after generation; `auto` = engine when it is vLLM on a GPU
    # (on CPU the engine pass was slower: bench/results/scoring_parity.json). A merged
    # checkpoint is always scored with transformers. The report's metrics record `scored_by`.
    logprobs: Literal["auto", "engine", "transformers"] = "auto"
    sampling: Sampling = field(default_factory=Sampling)
    max_prompts: int = 64  # 0 = all prompts of the split
    max_pairs: int = 64  # held-out pairs for the implicit reward (0 = all)
    beta: float | None = None  # implicit-reward beta; default: the aligned run's dpo.beta (else 0.1)
    bootstrap: int = 1000  # bootstrap resamples for every CI
    ci: float = 0.95
    seed: int = 0
    lc_warn_gap: float = LC_WARN_GAP  # warn when raw and length-controlled win rates differ by more
    ppl_window: int = 256  # tokens per perplexity window
    ppl_max_tokens: int = 6000  # cap on general-text tokens scored per model
    samples_in_report: int = 6  # side-by-side answers shown in report.md
    threads: int = 0  # torch threads (0 = leave as is)
    batch_size: int = 16  # HF engine and log-prob scoring batch size
    # How vLLM starts (dtype, enforce_eager, kv_cache_gib, max_model_len, GPU memory, tensor parallel;
    # onbrand.engines.options); the local LLM judge uses the same.
    engine_options: EngineOptions = field(default_factory=EngineOptions)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # The reward model (judge) must not have been trained on any record the policy (aligned run and
    # its parent runs) was trained on; true reports anyway, flagged "judge saw training data".
    allow_judge_overlap: bool = False

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.logprobs not in LOGPROB_SOURCES:
            raise ValueError(f"logprobs must be one of {', '.join(LOGPROB_SOURCES)}, got {self.logprobs!r}")
        check_range("max_prompts", self.max_prompts, 0, None)
        check_range("max_pairs", self.max_pairs, 0, None)
        check_range("bootstrap", self.bootstrap, 50, 100000)
        check_range("ci", self.ci, 0.5, 1.0, hi_open=True)
        check_range("lc_warn_gap", self.lc_warn_gap, 0.0, 1.0)
        check_range("ppl_window", self.ppl_window, 16, 8192)
        check_range("ppl_max_tokens", self.ppl_max_tokens, 0, None)
        check_range("samples_in_report", self.samples_in_report, 0, 1000)
        check_range("threads", self.threads, 0, 1024)
        check_range("batch_size", self.batch_size, 1, 1024)
        if self.beta is not None:
            check_range("beta", self.beta, 0.0, None, lo_open=True)
        if self.snapshot and self.prompts:
            raise ValueError("give either snapshot or prompts, not both")
