"""CSRF: cookie-authenticated writes (and sign-in) need the page's token; bearer API calls do not;
a foreign or ``null`` Origin is refused even with the token. And the access log never shows a
token passed in a URL."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from sqlalchemy import func, select

from onbrand.annotate import service
from onbrand.annotate.db import Judgement
from onbrand.annotate.web import RedactTokens, install_access_log_filter

TOKEN_RE = re.compile(r'name=csrf_token value="([0-9a-f]+)"')


def _csrf(client, path: str = "/annotate") -> str:
    html = client.get(path).text
    tokens = set(TOKEN_RE.findall(html))
    assert len(tokens) == 1, "every form of a page carries the same token"
    return tokens.pop()


def _count(env) -> int:
    with env.sessions() as s:
        return s.scalar(select(func.count(Judgement.id)))


def _signed_in(env, who: str = "bob"):
    c = env.client
    c.cookies.set("onbrand_token", env.tokens[who])
    page = c.get("/annotate").text
    aid = re.search(r'name=assignment_id value="(\d+)"', page).group(1)
    return c, {"assignment_id": aid, "choice": "left", "submission_id": "csrf-00000001"}


def test_cookie_post_needs_the_page_token(env):
    c, form = _signed_in(env)
    assert c.post("/annotate/submit", data=form, follow_redirects=False).status_code == 403
    wrong = {**form, "csrf_token": "0" * 64}
    r = c.post("/annotate/submit", data=wrong, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    token = _csrf(c)
    assert c.post("/annotate/submit", data={**form, "csrf_token": token[:-1]}).status_code == 403
    assert _count(env) == 0
    r = c.post("/annotate/submit", data={**form, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/annotate"
    assert _count(env) == 1


def test_origin_is_a_second_layer(env):
    c, form = _signed_in(env)
    form["csrf_token"] = _csrf(c)
    for origin in ("null", "http://evil.example", "http://127.0.0.1.evil.example"):
        r = c.post("/annotate/submit", data=form, headers={"Origin": origin}, follow_redirects=False)
        assert r.status_code == 403, origin
    r = c.post("/annotate/submit", data=form, headers={"Referer": "http://evil.example/x"})
    assert r.status_code == 403
    assert _count(env) == 0
    # Our own origin, or no Origin and no Referer at all (some privacy settings), with the token: fine.
    r = c.post("/annotate/submit", data=form, headers={"Origin": "http://127.0.0.1"}, follow_redirects=False)
    assert r.status_code == 303 and _count(env) == 1


def test_token_is_bound_to_the_session_and_the_browser(env):
    c, form = _signed_in(env, "bob")
    bobs = _csrf(c)
    # Another browser (its own nonce cookie) cannot use bob's token, even with bob's session cookie.
    with type(c)(c.app, base_url="http://127.0.0.1") as other:
        other.cookies.set("onbrand_token", env.tokens["bob"])
        other.get("/login")
        r = other.post("/annotate/submit", data={**form, "csrf_token": bobs}, follow_redirects=False)
        assert r.status_code == 403
    # The same browser signed in as alice: bob's token no longer matches the session.
    c.cookies.set("onbrand_token", env.tokens["alice"])
    assert c.post("/logout", data={"csrf_token": bobs}, follow_redirects=False).status_code == 403
    assert c.post("/logout", data={"csrf_token": _csrf(c)}, follow_redirects=False).status_code == 303


def test_login_and_logout_need_the_token(env):
    c = env.client
    good = {"token": env.tokens["alice"]}
    r = c.post("/login", data=good, follow_redirects=False)
    assert r.status_code == 403 and "onbrand_token" not in r.headers.get("set-cookie", "")
    r = c.post("/login", data={**good, "csrf_token": _csrf(c, "/login")}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/annotate"
    assert "onbrand_token" in c.cookies
    # The pre-sign-in token does not work now that the session exists; the page's new one does.
    page_token = _csrf(c)
    assert c.post("/logout", follow_redirects=False).status_code == 403
    assert c.get("/annotate", follow_redirects=False).status_code == 200  # still signed in
    r = c.post("/logout", data={"csrf_token": page_token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    # The nonce cookie: HttpOnly and SameSite=Strict like the session cookie.
    with type(c)(c.app, base_url="http://127.0.0.1") as fresh:
        set_cookie = fresh.get("/login").headers["set-cookie"]
        assert "onbrand_csrf=" in set_cookie and "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie


def test_token_in_the_url_signs_nobody_in(env):
    c = env.client
    r = c.get(f"/login?token={env.tokens['alice']}", follow_redirects=False)
    assert r.status_code == 200 and "onbrand_token" not in c.cookies
    assert c.get("/annotate", follow_redirects=False).headers["location"] == "/login"
    # No page links to /login with a token.
    c.cookies.set("onbrand_token", env.tokens["alice"])
    for path in ("/annotate", "/login"):
        assert "?token=" not in c.get(path).text


def test_bearer_api_needs_no_csrf_token(env):
    c = env.client
    h = env.auth("alice")
    c.cookies.set("onbrand_token", env.tokens["bob"])  # a cookie too: the header is what counts
    item = c.get("/api/next", headers=h).json()
    body = {"assignment_id": item["assignment_id"], "choice": "left"}
    r = c.post("/api/judgements", json=body, headers=h)
    assert r.status_code == 200 and r.json()["created"]
    # The same API call authenticated by the cookie alone needs the token (header form).
    bob = c.get("/api/next").json()
    body = {"assignment_id": bob["assignment_id"], "choice": "tie"}
    assert c.post("/api/judgements", json=body).status_code == 403
    r = c.post("/api/judgements", json=body, headers={"X-CSRF-Token": _csrf(c)})
    assert r.status_code == 200 and r.json()["created"]
    # No credential at all: the usual 401, not a CSRF answer.
    c.cookies.clear()
    assert c.post("/api/judgements", json=body).status_code == 401


def _uvicorn_record(path: str) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it: the path with its query is one of the args."""
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:50000", "GET", path, "1.1", 200),
        None,
    )


def test_access_log_filter_redacts_tokens():
    f = RedactTokens()
    record = _uvicorn_record("/login?token=s3cr3t-value&next=/annotate&csrf_token=abcd&Token=X1")
    assert f.filter(record) is True
    line = record.getMessage()
    assert "s3cr3t-value" not in line and "abcd" not in line and "X1" not in line
    assert "token=REDACTED&next=/annotate&csrf_token=REDACTED&Token=REDACTED" in line
    plain = _uvicorn_record("/api/items/3?tokenizer=gpt")
    f.filter(plain)
    assert plain.getMessage().endswith('"GET /api/items/3?tokenizer=gpt HTTP/1.1" 200')


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def access_log():
    logger = logging.getLogger("uvicorn.access")
    keep = _Keep()
    yield logger, keep
    logger.removeHandler(keep)


def test_real_uvicorn_access_log_is_redacted(env, access_log, live_server):
    logger, keep = access_log
    with live_server(env.client.app, log_level="info", access_log=True) as url:
        # As ``onbrand annotate serve`` does: after uvicorn configured its loggers.
        install_access_log_filter()
        logger.addHandler(keep)
        secret = env.tokens["alice"]
        assert httpx.get(f"{url}/login?token={secret}").status_code == 200
        assert httpx.get(f"{url}/api/next?token={secret}").status_code == 401
    lines = [x for x in keep.lines if "/login" in x or "/api/next" in x]
    assert len(lines) == 2, keep.lines
    assert all("token=REDACTED" in x and secret not in x for x in lines), lines


def test_revoked_member_cookie_cannot_post(env):
    """A cookie whose token was revoked is signed out, whatever the CSRF token says."""
    from onbrand.annotate import access

    c, form = _signed_in(env, "bob")
    token = _csrf(c)
    with env.sessions() as s:
        access.revoke(s, service.get_project(s, env.project), "bob")
    r = c.post("/annotate/submit", data={**form, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 401 and "unknown, revoked or expired token" in r.text
    assert _count(env) == 0
