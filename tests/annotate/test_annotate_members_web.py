"""Member management on the admin page, with plain forms (no JavaScript): add a member with a role
and an expiry, see the token once, revoke, issue a new token. Same rules and audit as the API."""

from __future__ import annotations

import re

from sqlalchemy import select

from onbrand.annotate import access
from onbrand.annotate.db import AuditEntry

TOKEN_RE = re.compile(r'name=csrf_token value="([0-9a-f]+)"')
NEW_TOKEN_RE = re.compile(r"<code id=new-token>([^<]+)</code>")


def _who(env, token: str):
    with env.sessions() as s:
        p = access.authenticate(s, token)
        return None if p is None else (p.name, p.role)


def _form(page: str, **fields) -> dict:
    return {**fields, "csrf_token": TOKEN_RE.search(page).group(1)}


def test_admin_adds_revokes_and_rotates_members_with_forms(env):
    c = env.client
    c.cookies.set("onbrand_token", env.admin)
    page = c.get("/admin").text
    assert 'id="add-member-aurora"' in page and "<td>alice</td><td>annotator</td><td>active</td>" in page
    add = _form(page, project="aurora", name="<b>carol</b>", role="reviewer", expires_in_days="30")
    no_csrf = {k: v for k, v in add.items() if k != "csrf_token"}
    assert c.post("/admin/members", data=no_csrf).status_code == 403
    for bad in ({"role": "admin"}, {"expires_in_days": "0"}, {"expires_in_days": "3651"}, {"name": ""}):
        assert c.post("/admin/members", data={**add, **bad}).status_code == 422, bad
    r = c.post("/admin/members", data=add)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert "&lt;b&gt;carol&lt;/b&gt;" in r.text and "<b>carol</b>" not in r.text
    carol = NEW_TOKEN_RE.search(r.text).group(1)
    assert _who(env, carol) == ("<b>carol</b>", "reviewer")
    page = c.get("/admin").text
    assert "&lt;b&gt;carol&lt;/b&gt;</td><td>reviewer</td><td>active until " in page
    # Revoke with the row's form: the token stops at once and the row shows it.
    r = c.post(
        "/admin/members/revoke",
        data=_form(page, project="aurora", name="<b>carol</b>"),
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin#members-aurora"
    assert _who(env, carol) is None
    assert "&lt;b&gt;carol&lt;/b&gt;</td><td>reviewer</td><td>revoked</td><td>—</td>" in c.get("/admin").text
    # A new token for alice: the old one stops, the shown one works.
    old = env.tokens["alice"]
    r = c.post("/admin/members/rotate", data=_form(page, project="aurora", name="alice"))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    new = NEW_TOKEN_RE.search(r.text).group(1)
    assert _who(env, old) is None and _who(env, new) == ("alice", "annotator")
    assert (
        c.post("/admin/members/rotate", data=_form(page, project="aurora", name="<b>carol</b>")).status_code
        == 422
    )
    assert (
        c.post("/admin/members/revoke", data=_form(page, project="aurora", name="nobody")).status_code == 404
    )
    # Audited like the API, by the admin, never with a token in the row.
    with env.sessions() as s:
        rows = list(
            s.scalars(select(AuditEntry).where(AuditEntry.action.like("member.%")).order_by(AuditEntry.id))
        )
    assert [r.action for r in rows][-3:] == ["member.add", "member.revoke", "member.rotate"]
    assert all(carol not in str(r.detail) and new not in str(r.detail) for r in rows)


def test_member_forms_are_for_admins_only(env):
    c = env.client
    c.cookies.set("onbrand_token", env.tokens["alice"])
    page = c.get("/annotate").text
    for url in ("/admin/members", "/admin/members/revoke", "/admin/members/rotate"):
        r = c.post(url, data=_form(page, project="aurora", name="bob", role="annotator"))
        assert r.status_code == 403, url
    assert _who(env, env.tokens["bob"]) == ("bob", "annotator")
