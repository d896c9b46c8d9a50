"""Where the judge's answers come from: an OpenAI-compatible endpoint, or a local model.

Both take a list of chats and return one :class:`Reply` per chat, in order; a failed request is a
``Reply`` with ``text=None`` and an ``error`` kind, never an exception, so one bad answer never
stops an eval (it is counted as invalid).

``EndpointBackend`` uses the official ``openai`` client (``AsyncOpenAI``), with our own retry loop
instead of the client's: we need the retries and each failure kind counted for the report, and a
400 from a server that does not support guided decoding answered by retrying without it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from onbrand.engines import Request, Sampling, get_engine
from onbrand.eval.judge.rubric import REGEX, SCHEMA, VERDICTS
from onbrand.models import model_hash, resolve_model

# Guided-decoding forms, tried in order until the endpoint accepts one (structured: auto | on):
# vLLM's own per-request regex first (no free whitespace, see rubric.REGEX), then OpenAI's
# standard response_format (OpenAI, vLLM, most servers).
GUIDES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "json": [
        ("vllm structured_outputs regex", {"extra_body": {"structured_outputs": {"regex": REGEX}}}),
        ("response_format json_schema", {"response_format": {"type": "json_schema",
                                                            "json_schema": {"name": "verdict", "schema": SCHEMA}}}),
    ],
    "token": [("vllm structured_outputs choice", {"extra_body": {"structured_outputs": {"choice": list(VERDICTS)}}})],
}  # fmt: skip


class JudgeSetupError(ValueError):
    """The judge cannot run at all (endpoint unreachable, unknown model, missing API key)."""


@dataclass
class Reply:
    text: str | None
    error: str | None = None  # timeout | connection | http_<status> | bad_response
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    cached: bool = False
    seconds: float = 0.0  # from the first attempt to the answer (retries and backoff included)


@dataclass
class Usage:
    """What the judge cost in this run (cache hits cost nothing)."""

    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    structured_refused: bool = False


def _error_kind(exc: Exception) -> tuple[str, bool]:
    """(kind, retryable) for an exception from the openai client."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        return f"http_{code}", code == 429 or code >= 500
    return "bad_response", False


class EndpointBackend:
    """Chat completions from ``cfg.endpoint`` (``vllm serve``, a hosted API, any OpenAI-compatible server)."""

    kind = "endpoint"

    def __init__(self, cfg, seed: int = 0):
        self.cfg = cfg
        self.api_key = "EMPTY"  # never the caller's OPENAI_API_KEY by accident: only api_key_env is read
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise JudgeSetupError(
                    f"judge.api_key_env: the environment variable {cfg.api_key_env} is not set"
                )
            self.api_key = key
        self.model = cfg.model
        self.url = cfg.endpoint  # credentials in it are refused by JudgeConfig
        self.root: str | None = None
        self.guides = GUIDES[cfg.output] if cfg.structured != "off" else []
        self.level = 0  # index into guides: moves on when the endpoint refuses one (400)
        self.rng = random.Random(seed)

    @property
    def structured(self) -> str | None:
        """The guided-decoding form in use (``None`` = plain decoding)."""
        return self.guides[self.level][0] if self.level < len(self.guides) else None

    def _client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(
            base_url=self.cfg.endpoint, api_key=self.api_key, timeout=self.cfg.timeout_s, max_retries=0
        )

    def probe(self) -> dict[str, Any]:
        """List the served models (fail fast, before any generation); pick ``model`` when unset."""
        from openai import OpenAI

        client = OpenAI(
            base_url=self.cfg.endpoint, api_key=self.api_key, timeout=self.cfg.timeout_s, max_retries=1
        )
        try:
            served = client.models.list().data
        except Exception as e:  # noqa: BLE001 - any failure here means the judge cannot run
            kind, _ = _error_kind(e)
            raise JudgeSetupError(f"judge.endpoint {self.url}: cannot list models ({kind}: "
                                  f"{type(e).__name__})") from None  # fmt: skip
        finally:
            client.close()
        names = [m.id for m in served]
        if self.model is None:
            if len(names) != 1:
                raise JudgeSetupError(f"judge.model is not set and {self.url} serves {names or 'no models'}: "
                                      "name one")  # fmt: skip
            self.model = names[0]
        elif names and self.model not in names:
            raise JudgeSetupError(
                f"judge.model {self.model!r} is not served by {self.url}; it serves {names}"
            )
        match = next((m for m in served if m.id == self.model), None)
        self.root = getattr(match, "root", None)  # vLLM reports the model's path here
        return self.identity()

    def identity(self) -> dict[str, Any]:
        # The endpoint URL is part of the identity only when the server does not say what it serves.
        return {
            "model": self.model,
            "root": self.root,
            **({} if self.root else {"endpoint": self.url}),
        }

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "endpoint": self.url, "model": self.model, "root": self.root}

    async def _one(self, client, sem: asyncio.Semaphore, messages, usage: Usage) -> Reply:
        import openai

        attempts, kind = 0, "bad_response"
        async with sem:
            t0 = time.perf_counter()
            while attempts <= self.cfg.max_retries:
                attempts += 1
                level = self.level
                extra = self.guides[level][1] if level < len(self.guides) else {}
                try:
                    resp = await client.chat.completions.create(
                        model=self.model, messages=messages, max_tokens=self.cfg.max_tokens,
                        temperature=self.cfg.temperature, **extra,
                    )  # fmt: skip
                    text = resp.choices[0].message.content
                    u = resp.usage
                    return Reply(text if isinstance(text, str) else None, None if isinstance(text, str) else "bad_response",
                                 getattr(u, "prompt_tokens", 0) or 0, getattr(u, "completion_tokens", 0) or 0, attempts,
                                 seconds=time.perf_counter() - t0)  # fmt: skip
                except openai.BadRequestError:
                    # This guided-decoding form is refused: try the next one (or plain decoding in
                    # "auto"), at once and without counting a retry.
                    last = len(self.guides) - (1 if self.cfg.structured == "on" else 0)
                    if level < last:
                        self.level = max(self.level, level + 1)
                        usage.structured_refused = True
                        attempts -= 1
                        continue
                    kind, retry = "http_400", False
                except Exception as e:  # noqa: BLE001 - counted per kind, never raised
                    kind, retry = _error_kind(e)
                if not retry:
                    break
                if attempts <= self.cfg.max_retries:
                    await asyncio.sleep(
                        self.cfg.backoff_s * 2 ** (attempts - 1) * (1 + 0.25 * self.rng.random())
                    )
        return Reply(None, kind, attempts=attempts, seconds=time.perf_counter() - t0)

    async def _all(self, chats: list[list[dict]], usage: Usage) -> list[Reply]:
        sem = asyncio.Semaphore(self.cfg.concurrency)
        async with self._client() as client:
            return await asyncio.gather(*(self._one(client, sem, m, usage) for m in chats))

    def complete(self, chats: list[list[dict]], usage: Usage) -> list[Reply]:
        if self.model is None:
            self.probe()
        return asyncio.run(self._all(chats, usage)) if chats else []


class EngineBackend:
    """A local judge model through onbrand's engines (vLLM when importable, else transformers).

    No guided decoding here: the parser's strictness is what keeps verdicts honest."""

    kind = "local"

    def __init__(self, cfg, engine_kind: str, engine_options: dict[str, Any]):
        self.cfg = cfg
        self.path = resolve_model(cfg.model)
        self.engine_kind, self.options = engine_kind, engine_options
        self.structured = None

    def probe(self) -> dict[str, Any]:
        return self.identity()

    @functools.cached_property
    def _identity(self) -> dict[str, Any]:
        return {"model": str(self.cfg.model), "hash": model_hash(self.path)}  # hashes the weights: once

    def identity(self) -> dict[str, Any]:
        return self._identity

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": str(self.cfg.model), "path": str(self.path)}

    def complete(self, chats: list[list[dict]], usage: Usage) -> list[Reply]:
        if not chats:
            return []
        engine = get_engine(self.engine_kind, self.path, None, **self.options)
        try:
            sampling = Sampling(max_new_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature)
            gens = engine.generate([Request(m) for m in chats], sampling)
        finally:
            engine.close()
        return [Reply(g.text, None, g.prompt_tokens, len(g.token_ids[0]), 1) for g in gens]


def make_backend(cfg, engine_kind: str = "auto", engine_options: dict[str, Any] | None = None, seed: int = 0):
    if cfg.endpoint:
        return EndpointBackend(cfg, seed)
    if not cfg.model:
        raise JudgeSetupError(
            "metrics.judge needs judge.endpoint (an OpenAI-compatible URL) or judge.model (a local model)"
        )
    return EngineBackend(cfg, engine_kind, engine_options or {})
