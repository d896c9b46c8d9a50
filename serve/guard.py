"""``onbrand guard``: an OpenAI-compatible proxy that checks every answer against the brand card.

Clients point their OpenAI SDK at the guard instead of at ``vllm serve`` (or any OpenAI-compatible
server). ``POST /v1/chat/completions`` and ``POST /v1/completions`` are checked with
``BrandCard.check(text, channel)`` (channel from the ``X-Onbrand-Channel`` request header) and
handled per :mod:`onbrand.serve.policy`; every exchange is written to the conversation log
(:mod:`onbrand.serve.convlog`) before the client gets the answer. Every other path (``/v1/models``
...) is passed through unchanged. Responses carry ``X-Onbrand-Exchange-Id`` (the record's ``id``),
``X-Onbrand-Action`` and, when rules failed under ``flag``/``regenerate``/``block``,
``X-Onbrand-Flag: <rule ids>``.

Streaming (``stream: true``): the upstream's server-sent events are passed through event by event;
the text is checked when the stream ends, so only ``log``/``flag`` apply (the flag goes out as the
SSE comment ``: x-onbrand-flag <rule ids>`` just before ``data: [DONE]``, which OpenAI clients
ignore). Upstream unreachable -> 502, upstream too slow -> 504, with an OpenAI-style error body;
the request's ``Authorization`` header goes to the upstream and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from onbrand.data.brand import BrandCard
from onbrand.serve.convlog import SCHEMA_ID, ConvLog, utc_now_iso
from onbrand.serve.policy import SEVERITY, GuardConfig, decide, streamed_action

ENDPOINTS = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions"}
# Request headers the proxy sets itself (hop-by-hop or recomputed); the rest go to the upstream.
DROP_REQUEST = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
                "proxy-authorization", "proxy-connection", "accept-encoding"}  # fmt: skip
DROP_RESPONSE = {"content-length", "connection", "keep-alive", "transfer-encoding", "content-encoding", "date",
                 "server"}  # fmt: skip


class UpstreamError(Exception):
    """The upstream could not be reached (502) or did not answer in time (504)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "upstream_error", "code": self.code}}


def error_body(message: str, type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def load_export_id(export_dir: str) -> str | None:
    """The served export's id: its manifest's ``export_id`` if set, else its ``run_id``."""
    if not export_dir:
        return None
    path = Path(export_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"export: {path} not found (set export to an onbrand export directory)"
        ) from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    return manifest.get("export_id") or manifest.get("run_id")


def _content_text(content: Any) -> str:
    """OpenAI message content as text (a list of parts: its text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def request_messages(endpoint: str, body: dict[str, Any]) -> list[dict[str, str]]:
    if endpoint == "chat.completions":
        return [{"role": str(m.get("role", "")), "content": _content_text(m.get("content"))}
                for m in body.get("messages") or [] if isinstance(m, dict)]  # fmt: skip
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = "\n".join(p if isinstance(p, str) else json.dumps(p) for p in prompt)
    return [{"role": "user", "content": str(prompt)}]


def choice_texts(endpoint: str, data: dict[str, Any]) -> list[str]:
    out = []
    for ch in data.get("choices") or []:
        if endpoint == "chat.completions":
            out.append(_content_text((ch.get("message") or {}).get("content")))
        else:
            out.append(str(ch.get("text") or ""))
    return out


def _set_choice_text(endpoint: str, choice: dict[str, Any], text: str) -> None:
    if endpoint == "chat.completions":
        choice.setdefault("message", {"role": "assistant"})["content"] = text
    else:
        choice["text"] = text


def _usage(data: dict[str, Any] | None) -> dict[str, int] | None:
    u = (data or {}).get("usage")
    if not isinstance(u, dict):
        return None
    return {
        "prompt_tokens": int(u.get("prompt_tokens") or 0),
        "completion_tokens": int(u.get("completion_tokens") or 0),
    }


def _add_usage(a: dict[str, int] | None, b: dict[str, int] | None) -> dict[str, int] | None:
    if a is None or b is None:
        return a or b
    return {k: a[k] + b[k] for k in a}


@dataclass
class Exchange:
    """One client request in flight: what the log record is built from."""

    endpoint: str
    model: str
    channel: str | None
    messages: list[dict[str, str]]
    stream: bool
    t0: float = field(default_factory=time.perf_counter)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    upstream_ms: float = 0.0
    attempts: int = 0
    usage: dict[str, int] | None = None
    flags: list[str] = field(default_factory=list)

    def headers(self, action: str) -> dict[str, str]:
        h = {"X-Onbrand-Exchange-Id": self.id, "X-Onbrand-Action": action}
        if self.flags:
            h["X-Onbrand-Flag"] = ",".join(dict.fromkeys(self.flags))
        return h


class Guard:
    """The proxy's state: config, brand card, conversation log, the upstream HTTP client."""

    def __init__(self, cfg: GuardConfig, card: BrandCard, convlog: ConvLog, export_id: str | None = None):
        self.cfg, self.card, self.convlog, self.export_id = cfg, card, convlog, export_id
        self.clients: list[httpx.AsyncClient] = []
        self._next = 0

    @property
    def client(self) -> httpx.AsyncClient:
        """The next of ``upstream_pools`` clients, round robin: httpcore's pool scans its
        connections (quadratically) at every request, so several small pools cost less CPU than one
        large one (bench: scripts/bench_guard.py)."""
        self._next = (self._next + 1) % len(self.clients)
        return self.clients[self._next]

    async def start(self) -> None:
        timeout = httpx.Timeout(self.cfg.timeout_s, connect=self.cfg.connect_timeout_s)
        per_pool = max(1, self.cfg.max_connections // self.cfg.upstream_pools)
        # Idle connections expire before the upstream's own keep-alive timeout (uvicorn, and so
        # vllm serve: 5 s), so the guard never sends a request on a connection being closed.
        limits = httpx.Limits(
            max_connections=per_pool, max_keepalive_connections=per_pool, keepalive_expiry=2.0
        )
        self.clients = [httpx.AsyncClient(base_url=self.cfg.upstream_root, timeout=timeout, limits=limits)
                        for _ in range(self.cfg.upstream_pools)]  # fmt: skip
        self.convlog.open()

    async def stop(self) -> None:
        for client in self.clients:
            await client.aclose()
        await asyncio.to_thread(self.convlog.close)  # compacts the last segment

    # ------------------------------------------------------------------ checks and records
    def checks(self, texts: list[str], channel: str | None) -> list:
        """Checks of choice 0, plus the failed checks of any other choice (detail says which)."""
        out = list(self.card.check(texts[0], channel)) if texts else []
        for i, text in enumerate(texts[1:], 1):
            out += [type(c)(c.rule_id, c.kind, False, f"choice {i}: {c.detail}")
                    for c in self.card.check(text, channel) if not c.passed]  # fmt: skip
        return out

    async def log(self, ex: Exchange, response: str, original: str | None, checks: list, action: str,
                  status: int) -> None:  # fmt: skip
        """Append the exchange's record to the conversation log (before the reply goes out)."""
        record = self.record(ex, response, original, checks, action, status)
        if self.cfg.log.fsync == "always":
            await asyncio.to_thread(self.convlog.append, record)
        else:
            self.convlog.append(record)

    def record(self, ex: Exchange, response: str, original: str | None, checks: list, action: str,
               status: int) -> dict[str, Any]:  # fmt: skip
        return {
            "schema": SCHEMA_ID, "id": ex.id, "ts": utc_now_iso(), "endpoint": ex.endpoint, "model": ex.model,
            "export_id": self.export_id, "channel": ex.channel, "messages": ex.messages, "response": response,
            "original_response": original, "latency_ms": round((time.perf_counter() - ex.t0) * 1000, 3),
            "upstream_ms": round(ex.upstream_ms, 3), "stream": ex.stream,
            "rules": [{"rule": c.rule_id, "kind": c.kind, "passed": c.passed, "detail": c.detail} for c in checks],
            "action": action, "attempts": ex.attempts, "status": status, "redacted": False, "usage": ex.usage,
        }  # fmt: skip

    async def fail(self, ex: Exchange, err: UpstreamError) -> JSONResponse:
        await self.log(ex, "", None, [], "error", err.status)
        return JSONResponse(err.body(), status_code=err.status, headers=ex.headers("error"))

    # ------------------------------------------------------------------ upstream
    def _map_error(self, e: httpx.HTTPError) -> UpstreamError:
        where = self.cfg.upstream
        if isinstance(e, (httpx.ConnectTimeout, httpx.ConnectError)):
            return UpstreamError(
                502, "upstream_unreachable", f"upstream {where} is unreachable: {type(e).__name__}"
            )
        if isinstance(e, httpx.TimeoutException):
            return UpstreamError(504, "upstream_timeout",
                                 f"upstream {where} did not answer within {self.cfg.timeout_s:g} s")  # fmt: skip
        return UpstreamError(502, "upstream_error", f"upstream {where} failed: {type(e).__name__}: {e}")

    async def post_json(self, ex: Exchange, path: str, headers: dict[str, str], body: dict[str, Any]
                        ) -> tuple[int, bytes, dict[str, Any] | None]:  # fmt: skip
        """POST to the upstream: (status, raw body, parsed JSON of a 2xx). Raises UpstreamError."""
        t = time.perf_counter()
        ex.attempts += 1
        try:
            r = await self.client.post(path, json=body, headers=headers)
        except httpx.HTTPError as e:
            raise self._map_error(e) from None
        finally:
            ex.upstream_ms += (time.perf_counter() - t) * 1000
        if r.status_code >= 300:
            return r.status_code, r.content, None
        try:
            data = r.json()
        except ValueError:
            raise UpstreamError(502, "upstream_bad_response",
                                f"upstream {self.cfg.upstream} answered {r.status_code} without a JSON body") from None  # fmt: skip
        ex.usage = _add_usage(ex.usage, _usage(data))
        return r.status_code, r.content, data

    # ------------------------------------------------------------------ non-streaming
    async def complete(
        self, ex: Exchange, path: str, headers: dict[str, str], body: dict[str, Any]
    ) -> Response:
        try:
            status, raw, data = await self.post_json(ex, path, headers, body)
        except UpstreamError as e:
            return await self.fail(ex, e)
        if data is None:  # the upstream's own 4xx/5xx (an OpenAI error body): passed on as it came
            await self.log(ex, "", None, [], "error", status)
            return Response(
                raw, status_code=status, media_type="application/json", headers=ex.headers("error")
            )
        first = choice_texts(ex.endpoint, data)
        action, failed = decide(self.cfg, self.checks(first, ex.channel))
        if action != "pass" and action != "log":
            ex.flags += failed
        final = data
        if action == "regenerate":
            final = await self.regenerate(ex, path, headers, body)
            action = "block" if final is None else "regenerate"
        if action == "block":
            final = data
            for choice in final.get("choices") or []:
                _set_choice_text(ex.endpoint, choice, self.cfg.fallback_message)
        texts = choice_texts(ex.endpoint, final)
        changed = action in ("regenerate", "block")
        original = (first[0] if first else "") if changed else None
        await self.log(ex, texts[0] if texts else "", original, self.checks(texts, ex.channel), action, 200)
        content = json.dumps(final).encode() if changed else raw
        return Response(content, status_code=200, media_type="application/json", headers=ex.headers(action))

    async def regenerate(self, ex: Exchange, path: str, headers: dict[str, str], body: dict[str, Any]
                         ) -> dict[str, Any] | None:  # fmt: skip
        """Ask again with a new seed until an answer passes every regenerate/block rule (None: none
        did within ``max_regenerations``, or the upstream failed meanwhile: the fallback goes out)."""
        seed0 = body.get("seed")
        for i in range(1, self.cfg.max_regenerations + 1):
            seed = seed0 + i if isinstance(seed0, int) else random.randrange(2**31)
            try:
                _, _, data = await self.post_json(ex, path, headers, {**body, "seed": seed})
            except UpstreamError:
                return None
            if data is None:
                return None
            action, failed = decide(self.cfg, self.checks(choice_texts(ex.endpoint, data), ex.channel))
            if SEVERITY.get(action, -1) < SEVERITY["regenerate"]:
                ex.flags += failed if action == "flag" else []
                return data
        return None

    # ------------------------------------------------------------------ streaming
    async def stream(
        self, ex: Exchange, path: str, headers: dict[str, str], body: dict[str, Any]
    ) -> Response:
        t = time.perf_counter()
        ex.attempts = 1
        try:
            client = self.client
            r = await client.send(client.build_request("POST", path, json=body, headers=headers), stream=True)
        except httpx.HTTPError as e:
            ex.upstream_ms += (time.perf_counter() - t) * 1000
            return await self.fail(ex, self._map_error(e))
        if r.status_code >= 300:
            raw = await r.aread()
            await r.aclose()
            ex.upstream_ms += (time.perf_counter() - t) * 1000
            await self.log(ex, "", None, [], "error", r.status_code)
            return Response(raw, status_code=r.status_code, media_type="application/json",
                            headers=ex.headers("error"))  # fmt: skip
        ex.upstream_ms += (time.perf_counter() - t) * 1000
        return StreamingResponse(self._relay(ex, r), media_type="text/event-stream",
                                 headers={"X-Onbrand-Exchange-Id": ex.id, "Cache-Control": "no-cache"})  # fmt: skip

    async def _relay(self, ex: Exchange, r: httpx.Response):
        """The upstream's SSE events, one by one; checked and logged just before ``[DONE]``."""
        acc: dict[int, list[str]] = {}
        buf, logged, it = b"", False, r.aiter_raw().__aiter__()
        try:
            while True:
                t = time.perf_counter()
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    ex.upstream_ms += (time.perf_counter() - t) * 1000
                *events, buf = (buf + chunk.replace(b"\r\n", b"\n")).split(b"\n\n")
                out = []  # the complete events of this chunk, sent together as they came
                for event in events:
                    data = _event_data(event)
                    if data == "[DONE]":
                        out.append(self._finish_stream(ex, acc, None, 200))
                        logged = True
                    else:
                        _accumulate(ex, acc, data)
                    out.append(event + b"\n\n")
                if out:
                    yield b"".join(out)
            if not logged:  # the upstream ended without [DONE]
                tail, logged = self._finish_stream(ex, acc, None, 200), True
                yield tail + buf
        except httpx.HTTPError as e:
            err = self._map_error(e)
            self._finish_stream(ex, acc, "error", 200)
            logged = True
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
        finally:
            if not logged:  # the client went away mid-stream
                self._finish_stream(ex, acc, None, 499)
            with anyio.CancelScope(shield=True):
                await r.aclose()

    def _finish_stream(
        self, ex: Exchange, acc: dict[int, list[str]], forced: str | None, status: int
    ) -> bytes:
        """Check the streamed text, log the exchange; the SSE comment carrying the flag (or b"")."""
        texts = ["".join(acc[i]) for i in sorted(acc)] or [""]
        checks = self.checks(texts, ex.channel)
        action, failed = decide(self.cfg, checks)
        action = forced or streamed_action(action)
        if action == "flag":
            ex.flags += failed
        self.convlog.append(self.record(ex, texts[0], None, checks, action, status))
        if not ex.flags:
            return b""
        return b": x-onbrand-flag " + ",".join(dict.fromkeys(ex.flags)).encode() + b"\n\n"

    # ------------------------------------------------------------------ everything else
    async def passthrough(self, request: Request) -> Response:
        """Any other path (``/v1/models``, ``/health`` ...): forwarded as it came, not logged."""
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            r = await self.client.request(request.method, url, headers=forward_headers(request),
                                          content=await request.body())  # fmt: skip
        except httpx.HTTPError as e:
            err = self._map_error(e)
            return JSONResponse(err.body(), status_code=err.status)
        headers = {k: v for k, v in r.headers.items() if k.lower() not in DROP_RESPONSE}
        return Response(r.content, status_code=r.status_code, headers=headers)


def _event_data(event: bytes) -> str:
    """The ``data:`` payload of one SSE event (several data lines joined by newlines)."""
    lines = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines).decode("utf-8", errors="replace")


def _accumulate(ex: Exchange, acc: dict[int, list[str]], data: str) -> None:
    """Add one streamed chunk's text deltas (per choice index) and its usage, if any."""
    try:
        obj = json.loads(data)
    except ValueError:
        return
    if not isinstance(obj, dict):
        return
    for ch in obj.get("choices") or []:
        if ex.endpoint == "chat.completions":
            piece = _content_text((ch.get("delta") or {}).get("content"))
        else:
            piece = str(ch.get("text") or "")
        acc.setdefault(int(ch.get("index") or 0), []).append(piece)
    if obj.get("usage"):
        ex.usage = _usage(obj)


def forward_headers(request: Request) -> dict[str, str]:
    """The client's headers for the upstream (Authorization included), asking for an uncompressed
    body so that streamed events can be read as they pass."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST}
    headers["accept-encoding"] = "identity"
    return headers


async def handle(guard: Guard, request: Request, endpoint: str) -> Response:
    """One ``/v1/chat/completions`` or ``/v1/completions`` request through the guard."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    except ClientDisconnect:  # gone before its request arrived: nothing was asked, nothing to log
        return Response(status_code=499)
    if not isinstance(body, dict):
        return JSONResponse(error_body("the request body must be a JSON object", "invalid_request_error",
                                       "invalid_json"), status_code=400)  # fmt: skip
    cfg = guard.cfg
    channel = request.headers.get(cfg.channel_header) or cfg.default_channel or None
    ex = Exchange(endpoint, str(body.get("model", "")), channel, request_messages(endpoint, body),
                  bool(body.get("stream")))  # fmt: skip
    try:
        if ex.stream:
            return await guard.stream(ex, request.url.path, forward_headers(request), body)
        return await guard.complete(ex, request.url.path, forward_headers(request), body)
    except OSError as e:  # the log could not be written: no answer goes out unlogged
        return JSONResponse(error_body(f"the guard could not write its conversation log: {e}", "guard_error",
                                       "log_write_failed"), status_code=500)  # fmt: skip


def create_app(guard: Guard) -> FastAPI:
    """The guard as an ASGI app (uvicorn runs it): opens the log and the upstream client on start."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await guard.start()
        try:
            yield
        finally:
            await guard.stop()

    app = FastAPI(title="onbrand guard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/guard/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "upstream": guard.cfg.upstream, "export_id": guard.export_id,
                "records": guard.convlog.records}  # fmt: skip

    async def chat(request: Request) -> Response:
        return await handle(guard, request, "chat.completions")

    async def completions(request: Request) -> Response:
        return await handle(guard, request, "completions")

    async def other(request: Request) -> Response:
        return await guard.passthrough(request)

    # Plain Starlette routes (no FastAPI parameter parsing) on the hot paths: less CPU per request.
    app.add_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])
    app.add_route("/{path:path}", other, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])

    return app
