"""Admin routes: the dashboard, projects, members (add, revoke, rotate), tasks, assignment,
statistics, export and the audit log. Admin tokens only (a member token gets 403).

Every write is audited through ``access.audit`` in the same commit as the write itself: the audit
row is added to the session before the service call that commits (member changes audit inside
``access``). A project's creation is logged with ``project_id`` empty (the id does not exist
before that commit) and the name in its detail.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from onbrand.annotate import access, csrf, pages, pages_members, service
from onbrand.annotate.db import ROLES, Annotator, Project, utcnow
from onbrand.annotate.pooling import export_records, project_stats
from onbrand.annotate.queue import parse_pair
from onbrand.annotate.web import INT64_MAX, SEED_RULE, AuditLimit, request_token, require_admin

FormText = Annotated[str, Form(min_length=1, max_length=200)]
FormDays = Annotated[int | None, Form(ge=1, le=3650)]


class NewProject(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    brand: str | None = Field(default=None, max_length=200)  # id of a card the server was given
    overlap: float = Field(default=0.1, ge=0.0, le=1.0, allow_inf_nan=False)
    seed: int = Field(default=0, **SEED_RULE)


class NewMember(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: str = Field(default="annotator", max_length=16)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class Rotation(BaseModel):
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


def _check_numbers(value: Any, where: str) -> None:
    """Task JSON is stored as given: refuse NaN/inf (not JSON) and integers a database cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: numbers must be finite, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError(f"{where}: integer out of the 64-bit range")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{where}[{i}]")


class NewTasks(BaseModel):
    pairs: list[dict[str, Any]] = Field(max_length=5000)

    @field_validator("pairs")
    @classmethod
    def _finite(cls, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, pair in enumerate(pairs, start=1):
            _check_numbers(pair, f"request:{i}")
        return pairs


class AssignBody(BaseModel):
    overlap: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, **SEED_RULE)


def _expiry(days: int | None) -> _dt.datetime | None:
    return None if days is None else utcnow() + _dt.timedelta(days=days)


def _member_view(ann, token: str | None = None) -> dict[str, Any]:
    out = {"annotator": ann.name, "id": ann.id, "role": ann.role}
    t = ann.expires_at
    # SQLite hands datetimes back naive; they are UTC by construction.
    out["expires_at"] = None if t is None else (t if t.tzinfo else t.replace(tzinfo=_dt.UTC)).isoformat()
    if token is not None:
        out["token"] = token
    return out


def install_admin(app: FastAPI, db, brands_by_id: dict[str, dict]) -> None:
    _install_admin_page(app, db)
    _install_members(app, db)
    _install_member_forms(app, db)

    @app.post("/api/admin/projects")
    def new_project(body: NewProject, request: Request, s: Session = Depends(db)):
        who = require_admin(request, s)
        brand_id = body.brand or (next(iter(brands_by_id)) if len(brands_by_id) == 1 else None)
        if brand_id not in brands_by_id:
            raise ValueError(
                f"brand must be one of the cards the server was started with: {sorted(brands_by_id)}"
            )
        detail = {"project": body.name, "brand": brand_id, "overlap": body.overlap, "seed": body.seed}
        access.audit(s, who, "project.create", None, **detail)
        p = service.create_project(s, body.name, brands_by_id[brand_id], body.overlap, body.seed)
        return {"project": p.name, "id": p.id, "brand": p.brand_id, "reason_tags": p.reason_tags}

    @app.post("/api/admin/projects/{project}/tasks")
    def new_tasks(project: str, body: NewTasks, request: Request, s: Session = Depends(db)):
        who = require_admin(request, s)
        p = service.get_project(s, project)
        items = [parse_pair(obj, "request", i) for i, obj in enumerate(body.pairs, start=1)]
        access.audit(s, who, "tasks.add", p.id, submitted=len(items))
        return service.add_tasks(s, p, items)

    @app.post("/api/admin/projects/{project}/assign")
    def do_assign(project: str, body: AssignBody, request: Request, s: Session = Depends(db)):
        who = require_admin(request, s)
        p = service.get_project(s, project)
        access.audit(s, who, "tasks.assign", p.id, overlap=body.overlap, seed=body.seed)
        return service.assign(s, p, body.overlap, body.seed)

    @app.get("/api/admin/projects/{project}/stats")
    def stats(project: str, request: Request, s: Session = Depends(db)):
        require_admin(request, s)
        return project_stats(s, service.get_project(s, project))

    @app.get("/api/admin/projects/{project}/export")
    def export(project: str, request: Request, s: Session = Depends(db)):
        who = require_admin(request, s)
        p = service.get_project(s, project)
        records, counts = export_records(s, p)
        access.audit(s, who, "project.export", p.id, records=len(records))
        s.commit()
        return {"records": records, "counts": counts}

    @app.get("/api/admin/audit")
    def audit_log(
        request: Request,
        project: Annotated[str | None, Query(max_length=200)] = None,
        limit: AuditLimit = 1000,
        s: Session = Depends(db),
    ):
        require_admin(request, s)
        p = service.get_project(s, project) if project else None
        return {"entries": access.audit_rows(s, p, limit)}


def _install_admin_page(app: FastAPI, db) -> None:
    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, s: Session = Depends(db)):
        if request_token(request) is None:
            return RedirectResponse("/login", 303)
        require_admin(request, s)
        projects = list(s.scalars(select(Project).order_by(Project.id)))
        token = csrf.form_token(request)
        cards = {p.name: pages_members.members_card(p.name, _members(s, p), token) for p in projects}
        return pages.admin_page([project_stats(s, p) for p in projects], token, cards)


def _members(s: Session, project: Project) -> list[dict[str, Any]]:
    now = utcnow()
    rows = s.scalars(select(Annotator).where(Annotator.project_id == project.id).order_by(Annotator.id))
    return [{"name": a.name, "role": a.role, "status": pages_members.member_status(a.revoked_at, a.expires_at, now)}
            for a in rows]  # fmt: skip


def _token_page(request: Request, project: str, ann, token: str) -> HTMLResponse:
    view = _member_view(ann, token)
    html = pages_members.token_page(
        project, ann.name, ann.role, token, view["expires_at"], csrf.form_token(request)
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _install_member_forms(app: FastAPI, db) -> None:
    """The same member actions as the JSON API below, as plain forms on /admin (no JavaScript)."""

    @app.post("/admin/members", response_class=HTMLResponse)
    def add_member_form(
        request: Request,
        project: FormText,
        name: FormText,
        role: Annotated[str, Form(max_length=16)] = "annotator",
        expires_in_days: FormDays = None,
        s: Session = Depends(db),
    ):
        who = require_admin(request, s)
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        p = service.get_project(s, project)
        ann, token = access.add_member(s, p, name, role, _expiry(expires_in_days), actor=who)
        return _token_page(request, p.name, ann, token)

    @app.post("/admin/members/revoke")
    def revoke_member_form(request: Request, project: FormText, name: FormText, s: Session = Depends(db)):
        who = require_admin(request, s)
        p = service.get_project(s, project)
        access.revoke(s, p, name, actor=who)
        return RedirectResponse(f"/admin#members-{quote(p.name, safe='')}", 303)

    @app.post("/admin/members/rotate", response_class=HTMLResponse)
    def rotate_member_form(
        request: Request,
        project: FormText,
        name: FormText,
        expires_in_days: FormDays = None,
        s: Session = Depends(db),
    ):
        who = require_admin(request, s)
        p = service.get_project(s, project)
        token = access.rotate(s, p, name, actor=who, expires_at=_expiry(expires_in_days))
        return _token_page(request, p.name, access.member(s, p, name), token)


def _install_members(app: FastAPI, db) -> None:
    @app.post("/api/admin/projects/{project}/annotators")
    def new_member(project: str, body: NewMember, request: Request, s: Session = Depends(db)):
        who = require_admin(request, s)
        if body.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {body.role!r}")
        p = service.get_project(s, project)
        ann, token = access.add_member(s, p, body.name, body.role, _expiry(body.expires_in_days), actor=who)
        return _member_view(ann, token)

    @app.post("/api/admin/projects/{project}/members/{name}/revoke")
    def revoke_member(project: str, name: str, request: Request, s: Session = Depends(db)):
        who = require_admin(request, s)
        ann = access.revoke(s, service.get_project(s, project), name, actor=who)
        return {**_member_view(ann), "revoked": True}

    @app.post("/api/admin/projects/{project}/members/{name}/rotate")
    def rotate_member(
        project: str, name: str, request: Request, body: Rotation | None = None, s: Session = Depends(db)
    ):
        who = require_admin(request, s)
        p = service.get_project(s, project)
        days = body.expires_in_days if body is not None else None
        token = access.rotate(s, p, name, actor=who, expires_at=_expiry(days))
        return _member_view(access.member(s, p, name), token)
