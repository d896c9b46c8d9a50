"""Who may do what: bearer tokens for admins and project members (annotators, reviewers), their
expiry and revocation, and the append-only audit log of admin and reviewer actions.

Tokens are 256-bit random secrets stored as sha256 only (see :func:`onbrand.annotate.db.hash_token`);
the clear token is returned exactly once, by the call that creates it, and never written to the
audit log, an error message or an exception. Expiry is compared in UTC; SQLite hands datetimes back
naive, and those are UTC by construction (every write goes through :func:`_utc`).

Every state-changing call here adds an :class:`~onbrand.annotate.db.AuditEntry` to the same session
and commits once, so the action and its audit row are durable together or not at all.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from onbrand.annotate.db import ROLES, Admin, Annotator, AuditEntry, Project, hash_token, new_token, utcnow

MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. ``project_id`` is None for admins; ``member_id`` is the
    :class:`~onbrand.annotate.db.Annotator` row of a reviewer or annotator (None for admins)."""

    role: str  # "admin" | "reviewer" | "annotator" ("cli" only for CLI_ACTOR)
    name: str
    project_id: int | None
    member_id: int | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_review(self, project_id: int) -> bool:
        """Admins review everywhere; a reviewer only in their own project."""
        return self.role == "admin" or (self.role == "reviewer" and self.project_id == project_id)


CLI_ACTOR = Principal(role="cli", name="cli", project_id=None, member_id=None)


def _utc(t: _dt.datetime | None) -> _dt.datetime | None:
    """``t`` as an aware UTC datetime; a naive one (as SQLite returns) is taken to be UTC."""
    if t is None:
        return None
    return t.replace(tzinfo=_dt.UTC) if t.tzinfo is None else t.astimezone(_dt.UTC)


def usable(revoked_at: _dt.datetime | None, expires_at: _dt.datetime | None, now: _dt.datetime) -> bool:
    """A credential works until it is revoked or its expiry time has come."""
    return revoked_at is None and (expires_at is None or _utc(expires_at) > now)


def authenticate(s: Session, token: str | None) -> Principal | None:
    """The principal a bearer token belongs to; None for a missing, unknown, revoked or expired one."""
    if not token:
        return None
    h, now = hash_token(token), utcnow()
    ann = s.scalar(select(Annotator).where(Annotator.token_hash == h))
    if ann is not None:
        if not ann.active or not usable(ann.revoked_at, ann.expires_at, now):
            return None
        return Principal(
            role=ann.role or "annotator", name=ann.name, project_id=ann.project_id, member_id=ann.id
        )
    admin = s.scalar(select(Admin).where(Admin.token_hash == h))
    if admin is not None and usable(admin.revoked_at, admin.expires_at, now):
        return Principal(role="admin", name=admin.name, project_id=None, member_id=None)
    return None


# ----------------------------------------------------------------------------- audit
def _jsonable(v: Any) -> Any:
    if isinstance(v, _dt.datetime):
        return _utc(v).isoformat()
    return v


def audit(s: Session, actor: Principal | None, action: str, project_id: int | None = None, **detail) -> None:
    """Add one audit row to ``s`` (the caller's commit makes it durable with the action itself).

    ``actor`` None means a local CLI command. Detail keys naming a token are refused: the log is
    meant to be shown to admins and shipped around, so it must never carry a secret.
    """
    actor = actor or CLI_ACTOR
    bad = [k for k in detail if "token" in k.lower()]
    if bad:
        raise ValueError(f"audit {action}: detail must not hold tokens (keys {bad})")
    s.add(
        AuditEntry(
            at=utcnow(),
            actor=actor.name,
            role=actor.role,
            action=action,
            project_id=project_id,
            detail={k: _jsonable(v) for k, v in detail.items()},
        )
    )


def audit_rows(s: Session, project: Project | int | None = None, limit: int = 1000) -> list[dict]:
    """The newest ``limit`` audit rows (of one project, or all), newest first."""
    q = select(AuditEntry, Project.name).outerjoin(Project, AuditEntry.project_id == Project.id)
    if project is not None:
        q = q.where(AuditEntry.project_id == (project if isinstance(project, int) else project.id))
    q = q.order_by(AuditEntry.id.desc()).limit(limit)
    return [
        {
            "id": e.id,
            "at": _utc(e.at).isoformat(),
            "actor": e.actor,
            "role": e.role,
            "action": e.action,
            "project_id": e.project_id,
            "project": pname,
            "detail": e.detail or {},
        }
        for e, pname in s.execute(q)
    ]


# ----------------------------------------------------------------------------- members
def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 200:
        raise ValueError(f"{kind} name must be 1-200 characters, got {name!r}")


def _check_expiry(expires_at: _dt.datetime | None) -> _dt.datetime | None:
    expires_at = _utc(expires_at)
    if expires_at is not None and expires_at <= utcnow():
        raise ValueError(f"expires_at {expires_at.isoformat()} is in the past")
    return expires_at


def member(s: Session, project: Project, name: str) -> Annotator:
    """The member ``name`` of ``project``; LookupError if there is none."""
    ann = s.scalar(select(Annotator).where(Annotator.project_id == project.id, Annotator.name == name))
    if ann is None:
        raise LookupError(f"no member {name!r} in project {project.name!r}")
    return ann


def add_member(
    s: Session,
    project: Project,
    name: str,
    role: str = "annotator",
    expires_at: _dt.datetime | None = None,
    actor: Principal | None = None,
) -> tuple[Annotator, str]:
    """Add a project member; returns the row and its clear token (shown once, stored hashed)."""
    _check_name("member", name)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    expires_at = _check_expiry(expires_at)
    token = new_token()
    ann = Annotator(
        project_id=project.id, name=name, role=role, token_hash=hash_token(token), expires_at=expires_at
    )
    s.add(ann)
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise ValueError(f"member {name!r} already exists in project {project.name!r}") from None
    audit(s, actor, "member.add", project.id, member=name, role=role, expires_at=expires_at)
    s.commit()
    return ann, token


def revoke(s: Session, project: Project, name: str, actor: Principal | None = None) -> Annotator:
    """Stop a member's token working at once (their judgements so far are kept)."""
    ann = member(s, project, name)
    if ann.revoked_at is None:
        ann.revoked_at = utcnow()
    ann.active = False
    audit(s, actor, "member.revoke", project.id, member=name, role=ann.role)
    s.commit()
    return ann


def rotate(
    s: Session,
    project: Project,
    name: str,
    actor: Principal | None = None,
    expires_at: _dt.datetime | None = None,
) -> str:
    """A new token for a member; the old one stops working. ``expires_at`` None keeps the old expiry."""
    ann = member(s, project, name)
    if ann.revoked_at is not None or not ann.active:
        raise ValueError(
            f"member {name!r} in project {project.name!r} is revoked; a new token would not work"
        )
    if expires_at is not None:
        ann.expires_at = _check_expiry(expires_at)
    token = new_token()
    ann.token_hash = hash_token(token)
    audit(s, actor, "member.rotate", project.id, member=name, role=ann.role, expires_at=ann.expires_at)
    s.commit()
    return token


# ----------------------------------------------------------------------------- admins
def add_admin(
    s: Session,
    name: str,
    token: str | None = None,
    expires_at: _dt.datetime | None = None,
    actor: Principal | None = None,
) -> str:
    """Create admin ``name``, or give it a new token (and un-revoke it); returns the clear token.

    Setting the token an admin already uses is a no-op (no audit row): ``serve`` re-applies the
    token from its environment at every start.
    """
    _check_name("admin", name)
    token = token or new_token()
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"admin token must be at least {MIN_TOKEN_CHARS} characters")
    expires_at = _check_expiry(expires_at)
    h = hash_token(token)
    admin = s.scalar(select(Admin).where(Admin.name == name))
    unchanged = admin is not None and admin.token_hash == h and _utc(admin.expires_at) == expires_at
    if unchanged and usable(admin.revoked_at, admin.expires_at, utcnow()):
        return token
    if s.scalar(select(Annotator.id).where(Annotator.token_hash == h)) is not None:
        raise ValueError("that admin token is already a member's token: choose another")
    if admin is None:
        admin = Admin(name=name)
        s.add(admin)
        action = "admin.add"
    else:
        action = "admin.rotate"
    admin.token_hash, admin.expires_at, admin.revoked_at = h, expires_at, None
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise ValueError("that admin token is already in use by another admin: choose another") from None
    audit(s, actor, action, None, admin=name, expires_at=expires_at)
    s.commit()
    return token


def revoke_admin(s: Session, name: str, actor: Principal | None = None) -> None:
    """Stop admin ``name``'s token working; LookupError if there is no such admin."""
    admin = s.scalar(select(Admin).where(Admin.name == name))
    if admin is None:
        names = ", ".join(s.scalars(select(Admin.name))) or "none"
        raise LookupError(f"no admin {name!r}; admins: {names}")
    if admin.revoked_at is None:
        admin.revoked_at = utcnow()
    audit(s, actor, "admin.revoke", None, admin=name)
    s.commit()


def has_usable_admin(s: Session) -> bool:
    now = utcnow()
    return any(usable(a.revoked_at, a.expires_at, now) for a in s.scalars(select(Admin)))
