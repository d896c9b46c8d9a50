"""Admin HTML for project members: the list with revoke / new-token buttons, the add form, and the
page that shows a new token once. Plain forms (no JavaScript), each with the CSRF field; every user
string goes through ``esc``."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from onbrand.annotate.db import ROLES
from onbrand.annotate.pages import _header, csrf_field, esc, page

EXPIRY_FIELD = (
    '<input type=number name=expires_in_days min=1 max=3650 placeholder="expires in days (optional)">'
)


def member_status(revoked_at, expires_at, now: _dt.datetime) -> str:
    def utc(t):
        return None if t is None else (t if t.tzinfo else t.replace(tzinfo=_dt.UTC))

    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and utc(expires_at) <= now:
        return "expired"
    return "active" if expires_at is None else f"active until {utc(expires_at):%Y-%m-%d %H:%M} UTC"


def _hidden(project: str, name: str | None = None) -> str:
    out = f'<input type=hidden name=project value="{esc(project)}">'
    return out + (f'<input type=hidden name=name value="{esc(name)}">' if name is not None else "")


def members_card(project: str, members: list[dict[str, Any]], csrf: str) -> str:
    """``members``: name, role, status (``member_status``) of each member of ``project``."""
    rows = []
    for i, m in enumerate(members):
        actions = "—"  # a revoked member stays revoked (rotation is refused); add a new one instead
        if m["status"] != "revoked":
            actions = (
                f'<form method=post action="/admin/members/revoke" class=inline>{csrf_field(csrf)}'
                f'{_hidden(project, m["name"])}<button type=submit class=small id="revoke-{esc(project)}-{i}">'
                "Revoke</button></form> "
                f'<form method=post action="/admin/members/rotate" class=inline>{csrf_field(csrf)}'
                f'{_hidden(project, m["name"])}<button type=submit class=small id="rotate-{esc(project)}-{i}">'
                "New token</button></form>"
            )
        rows.append(
            f"<tr><td>{esc(m['name'])}</td><td>{esc(m['role'])}</td><td>{esc(m['status'])}</td><td>{actions}</td></tr>"
        )
    table = (
        "<table><tr><th>Member</th><th>Role</th><th>Status</th><th></th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p class=muted>No members yet.</p>"
    )
    roles = "".join(f'<option value="{r}">{r}</option>' for r in ROLES)
    add = (
        f'<form method=post action="/admin/members" id="add-member-{esc(project)}">{csrf_field(csrf)}{_hidden(project)}'
        '<input name=name required maxlength=200 placeholder="name"> '
        f"<select name=role>{roles}</select> {EXPIRY_FIELD} "
        "<button type=submit class=primary>Add member</button></form>"
    )
    return f'<div id="members-{esc(project)}"><h3>Members</h3>{table}{add}</div>'


def token_page(project: str, name: str, role: str, token: str, expires_at: str | None, csrf: str) -> str:
    """A new token, shown once (served with ``Cache-Control: no-store``)."""
    until = f" until {esc(expires_at)}" if expires_at else ""
    body = (
        f"<div class=card><h2 class=top>Token for {esc(name)} ({esc(role)}) in {esc(project)}</h2>"
        f"<p>Valid{until}. Shown once: copy it now and hand it to {esc(name)} over a private channel. "
        "onbrand keeps only its hash.</p>"
        f"<p><code id=new-token>{esc(token)}</code></p>"
        '<p><a href="/admin">Back to admin</a></p></div>'
    )
    return page("New token", body, _header("onbrand admin", "admin", "", csrf))
