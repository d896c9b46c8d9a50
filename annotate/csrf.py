"""CSRF defence for cookie-authenticated requests: an HMAC synchronizer token bound to the session.

Scheme (a *signed* double-submit): every browser gets a random ``onbrand_csrf`` cookie (the nonce;
HttpOnly, SameSite=Strict). Each form carries ``csrf_token = HMAC-SHA256(server secret, nonce |
sha256(session cookie))``, and an unsafe request (POST, ...) is accepted only when the token
recomputed from that request's own cookies matches. Another site can make a browser *send* the
cookies but can neither read them nor our pages, so it cannot produce the token; a planted nonce
is useless without the server secret, and binding to the session cookie means a token from before
sign-in (or of another account) does not work after it.

Which requests need it: every unsafe request that carries the session cookie, and ``/login``
always (login CSRF: signing a victim in to the attacker's account). A request with
``Authorization: Bearer`` needs none: a browser never adds that header by itself, so it is not an
ambient credential. The token travels as form field ``csrf_token`` or header ``X-CSRF-Token``.

Second layer: on those requests ``Origin`` (or, without it, ``Referer``) must name this host;
``Origin: null`` (sandboxed frames, some redirects) is refused. A request with neither header
passes on the token alone.

The secret is random per server process unless given: restarting the server makes open forms
stale (403; reloading the page gives a fresh token).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

from onbrand.annotate.web import COOKIE, body_message, error_response, read_body, replay

CSRF_COOKIE = "onbrand_csrf"
FIELD = "csrf_token"
HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}
ALWAYS = {"/login"}  # checked even without a session cookie
_NONCE = re.compile(r"[A-Za-z0-9_-]{22,64}")
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def make_token(secret: bytes, nonce: str, session: str | None) -> str:
    bound = hashlib.sha256((session or "").encode("utf-8")).hexdigest()
    mac = hmac.new(secret, f"csrf|{nonce}|{bound}".encode(), hashlib.sha256)
    return mac.hexdigest()


def form_token(request: Request) -> str:
    """The token a page served for ``request`` must put in its forms."""
    nonce = request.scope.get("state", {}).get("csrf_nonce") or request.cookies.get(CSRF_COOKIE, "")
    return make_token(request.app.state.csrf_secret, nonce, request.cookies.get(COOKIE))


def _cookies(scope) -> dict[str, str]:
    return Request(scope).cookies


def _same_host(scope, headers: dict[bytes, bytes]) -> bool:
    """Origin (or Referer) names this host; ``Origin: null`` never does."""
    host = headers.get(b"host", b"").decode("latin-1")
    origin = headers.get(b"origin")
    if origin is not None:
        value = origin.decode("latin-1").strip()
        return value != "null" and urlsplit(value).netloc == host
    referer = headers.get(b"referer")
    return referer is None or urlsplit(referer.decode("latin-1")).netloc == host


class CsrfMiddleware:
    """ASGI middleware: hands out the nonce cookie and checks unsafe cookie requests (see module)."""

    def __init__(self, app, secret: bytes, secure_cookie: bool | None = None):
        self.app, self.secret, self.secure_cookie = app, secret, secure_cookie

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cookies = _cookies(scope)
        nonce = cookies.get(CSRF_COOKIE, "")
        if not _NONCE.fullmatch(nonce):
            nonce = secrets.token_urlsafe(24)
            scope.setdefault("state", {})["csrf_nonce"] = nonce
            send = self._setting_cookie(scope, send, nonce)
        headers = dict(scope.get("headers") or [])
        has_bearer = headers.get(b"authorization", b"")[:7].lower() == b"bearer "
        path = scope.get("path", "")
        checked = scope["method"] not in SAFE_METHODS and not has_bearer
        if not checked or (COOKIE not in cookies and path not in ALWAYS):
            return await self.app(scope, receive, send)
        if not _same_host(scope, headers):
            return await error_response(path, 403, "cross-origin request refused")(scope, receive, send)
        token, receive = await self._sent_token(scope, receive, headers)
        if CSRF_COOKIE not in cookies or not _NONCE.fullmatch(cookies[CSRF_COOKIE]):
            msg = "missing CSRF cookie: reload the page and try again"
            return await error_response(path, 403, msg)(scope, receive, send)
        want = make_token(self.secret, cookies[CSRF_COOKIE], cookies.get(COOKIE))
        if not token or not hmac.compare_digest(token.encode("utf-8", "replace"), want.encode()):
            msg = "missing or wrong CSRF token: reload the page and try again"
            return await error_response(path, 403, msg)(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _sent_token(self, scope, receive, headers) -> tuple[str | None, object]:
        """The token from the header or the form body; the body is read here and replayed."""
        if HEADER.encode() in headers:
            return headers[HEADER.encode()].decode("latin-1"), receive
        ctype = headers.get(b"content-type", b"").decode("latin-1").lower()
        if not ctype.startswith(_FORMS):
            return None, receive
        body, extra = await read_body(receive, 1 << 62)  # the body limit is enforced outside
        if body is None:
            return None, replay([extra] if extra else [])
        try:
            async with Request(scope, replay([body_message(body)])).form() as form:
                value = form.get(FIELD)
        except Exception:  # a malformed form: no token; the route gives the proper error
            value = None
        return (value if isinstance(value, str) else None), replay([body_message(body)], receive)

    def _setting_cookie(self, scope, send, nonce: str):
        secure = self.secure_cookie if self.secure_cookie is not None else scope.get("scheme") == "https"
        cookie = f"{CSRF_COOKIE}={nonce}; Path=/; Max-Age={14 * 86400}; HttpOnly; SameSite=Strict"
        cookie += "; Secure" if secure else ""

        async def wrapped(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        return wrapped
