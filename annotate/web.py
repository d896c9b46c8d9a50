"""Web plumbing shared by the annotation app's route modules: id types, who is calling, error
responses, the outermost middleware (security headers, body limit, no unhandled error) and the
access-log filter that keeps tokens out of the server log.

Why here and not in ``app.py``: the annotator, admin and reviewer routes (``app.py``,
``app_admin.py``, ``app_review.py``) must apply exactly the same rules; one copy keeps them equal.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import FastAPI, Form, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from onbrand.annotate import access, pages, service
from onbrand.annotate.db import Annotator, Project

log = logging.getLogger("onbrand.annotate")

COOKIE = "onbrand_token"
MAX_BODY = 1 << 20  # bytes; a judgement is a few KiB, a task upload a few hundred
# Every id is a database row id: a signed 64-bit integer, and ours start at 1. Anything outside
# is refused with 422 before it reaches the database (SQLite raises OverflowError on >= 2**63).
INT64_MAX = 2**63 - 1
ID_RULE = {"ge": 1, "le": INT64_MAX}
PathId = Annotated[int, Path(**ID_RULE)]
FormId = Annotated[int, Form(**ID_RULE)]
SEED_RULE = {"ge": 0, "le": INT64_MAX}
AuditLimit = Annotated[int, Query(ge=1, le=10_000)]
BAD_TOKEN = "unknown, revoked or expired token"
SECURITY_HEADERS = {
    # Only our own script and style: even text that escaped escaping could not run.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": under it browsers send "Origin: null" on our own form posts, which the
    # CSRF origin check must refuse. "same-origin" keeps the referrer from every other site.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# ----------------------------------------------------------------------------- who is calling
def bearer(request: Request) -> str | None:
    """The ``Authorization: Bearer`` token; "" when the header names Bearer but holds nothing,
    None when there is no bearer header (then the cookie is the credential)."""
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def request_token(request: Request) -> str | None:
    token = bearer(request)
    if token is not None:
        return token or None
    return request.cookies.get(COOKIE) or None


def principal(request: Request, s: Session) -> access.Principal:
    """The authenticated caller, or 401 (no token; unknown, revoked or expired token)."""
    token = request_token(request)
    if token is None:
        raise HTTPException(401, "missing token: send 'Authorization: Bearer <token>' or sign in")
    who = access.authenticate(s, token)
    if who is None:
        raise HTTPException(401, BAD_TOKEN)
    return who


def require_member(request: Request, s: Session) -> tuple[access.Principal, Annotator]:
    """An annotator or reviewer (both have a queue); the admin gets 403."""
    who = principal(request, s)
    if who.member_id is None:
        raise HTTPException(403, "this is an annotator endpoint; an admin token cannot judge items")
    ann = s.get(Annotator, who.member_id)
    if ann is None:
        raise HTTPException(401, BAD_TOKEN)
    return who, ann


def require_admin(request: Request, s: Session) -> access.Principal:
    who = principal(request, s)
    if not who.is_admin:
        raise HTTPException(403, "admin endpoint: member tokens are not allowed")
    return who


def require_review_role(request: Request, s: Session) -> access.Principal:
    """A reviewer or an admin (which project they may touch is checked per item)."""
    who = principal(request, s)
    if not who.is_admin and who.role != "reviewer":
        raise HTTPException(403, "reviewer endpoint: annotator tokens are not allowed")
    return who


def require_reviewer(request: Request, s: Session, project: str | None) -> tuple[access.Principal, Project]:
    """A reviewer of ``project`` (default: their own) or an admin (who must name the project)."""
    who = require_review_role(request, s)
    if who.is_admin:
        if not project:
            raise ValueError("an admin reviews one project at a time: pass ?project=<name>")
        return who, service.get_project(s, project)
    own = s.get(Project, who.project_id)
    if project and project not in (own.name, str(own.id)):
        raise HTTPException(403, "a reviewer sees only their own project")
    return who, own


# ----------------------------------------------------------------------------- errors
def wants_html(path: str) -> bool:
    return not path.startswith("/api/")


def error_response(path: str, status: int, message: str, headers: dict | None = None) -> Response:
    """An error as an HTML page (browser paths) or ``{"detail": ...}`` (``/api/``); never a traceback."""
    if wants_html(path):
        return HTMLResponse(pages.error_page(status, message), status, headers=headers)
    return JSONResponse({"detail": message}, status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict]]:
    """One line per bad field, and the errors without their ``input``: a rejected value may be a
    token (the sign-in form), and secrets never go into a response."""
    errors = [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()
    ]
    text = "; ".join(f"{'.'.join(e['loc'][1:]) or e['loc'][0]} ({e['loc'][0]}): {e['msg']}" for e in errors)
    return text or "invalid request", errors


def install_errors(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(
            request.url.path, exc.status_code, str(exc.detail), getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        text, errors = _validation_message(exc)
        if wants_html(request.url.path):
            return HTMLResponse(pages.error_page(422, text), 422)
        return JSONResponse({"detail": text, "errors": errors}, 422)

    mapping = {ValueError: 422, PermissionError: 403, LookupError: 404, service.Conflict: 409}
    for exc_type, code in mapping.items():

        async def handler(request: Request, exc: Exception, code: int = code):
            return error_response(request.url.path, code, str(exc))

        app.add_exception_handler(exc_type, handler)


# ----------------------------------------------------------------------------- middleware
class Guard:
    """Outermost ASGI middleware: security headers on every response, and an unexpected error
    answered as a plain 500 (no traceback in the body), logged, and *not* re-raised.

    Why not re-raise: Starlette's own error middleware re-raises after answering, and uvicorn then
    closes the connection, which a keep-alive client sees as a reset. Here the server answers and
    the connection stays usable."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                for k, v in SECURITY_HEADERS.items():
                    headers.setdefault(k, v)
                message["headers"] = headers.raw
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # The path only: a query string may hold a token.
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = error_response(
                scope.get("path", ""), 500, "internal error; the server log has details"
            )
            await response(scope, receive, send_with_headers)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413 (declared or streamed)."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await PlainTextResponse(f"request body over {self.limit} bytes", 413)(scope, receive, send)
        body, extra = await read_body(receive, self.limit)
        if body is None:
            if extra is not None:  # the client went away mid-body
                return await self.app(scope, replay([extra]), send)
            return await PlainTextResponse(f"request body over {self.limit} bytes", 413)(scope, receive, send)
        return await self.app(scope, replay([body_message(body)], receive), send)


async def read_body(receive, limit: int) -> tuple[bytes | None, dict | None]:
    """The whole (possibly chunked) body; (None, None) when over ``limit``, (None, message) when a
    non-body message (a disconnect) arrives first."""
    chunks, size, more = [], 0, True
    while more:
        msg = await receive()
        if msg["type"] != "http.request":
            return None, msg
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None, None
        more = msg.get("more_body", False)
    return b"".join(chunks), None


def body_message(body: bytes) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": False}


def replay(messages: list[dict], then=None):
    """A ``receive`` that hands out ``messages`` first, then defers to ``then`` (or disconnects)."""

    async def receive():
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


# ----------------------------------------------------------------------------- access log
# Any query parameter whose name ends in "token" (token, csrf_token, access_token, ...).
_TOKEN_PARAM = re.compile(r"(?i)([?&;][^=&;#\s]*token=)[^&;#\s\"]*")


def redact(text: str) -> str:
    return _TOKEN_PARAM.sub(r"\1REDACTED", text)


class RedactTokens(logging.Filter):
    """Replace ``token=...`` query values in log records with ``token=REDACTED``.

    uvicorn's access log calls ``logger.info('%s - "%s %s HTTP/%s" %d', client, method,
    path_with_query, version, status)``: the path is one of ``record.args``, so the args (and the
    message, for other loggers) are rewritten before any handler formats them. Nothing needs a
    token in a URL (sign-in is a POST), but a user may still paste one there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install_access_log_filter(name: str = "uvicorn.access") -> RedactTokens:
    """Attach :class:`RedactTokens` to logger ``name`` once (idempotent); returns the filter."""
    logger = logging.getLogger(name)
    for f in logger.filters:
        if isinstance(f, RedactTokens):
            return f
    f = RedactTokens()
    logger.addFilter(f)
    return f
