"""The FastAPI app: sign-in, annotator pages and the annotator JSON API. Admin routes are in
``app_admin.py``, reviewer routes in ``app_review.py``, the shared rules in ``web.py`` and the CSRF
defence in ``csrf.py``.

Auth: ``Authorization: Bearer <token>`` (API clients) or the ``onbrand_token`` cookie set by
``/login`` (browsers; HttpOnly, SameSite=Strict). Tokens are looked up by their sha256
(``access.authenticate``); no token, or an unknown, revoked or expired one -> 401; a token of the
wrong role, or a member on another member's item or another project -> 403. Cookie-authenticated
writes also need the CSRF token of the page (``csrf.py``). Every id is a positive int64 (else 422)
and every float finite. Every write is committed before the response is sent.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from onbrand.annotate import access, csrf, pages, service
from onbrand.annotate.app_admin import install_admin
from onbrand.annotate.app_review import install_review
from onbrand.annotate.db import Annotator, Project, Task, open_db
from onbrand.annotate.web import (
    COOKIE,
    ID_RULE,
    MAX_BODY,
    BodyLimit,
    FormId,
    Guard,
    PathId,
    install_errors,
    request_token,
    require_member,
)

HOME = {"admin": "/admin", "reviewer": "/review", "annotator": "/annotate"}


class Judgement(BaseModel):
    assignment_id: int = Field(**ID_RULE)
    choice: str = Field(max_length=16)
    reason_tags: list[str] = Field(default_factory=list, max_length=service.MAX_TAGS)
    rewrite: str | None = Field(default=None, max_length=service.MAX_TEXT)
    submission_id: str | None = Field(default=None, min_length=8, max_length=64)


def create_app(
    db_url: str,
    brands: list[dict[str, Any]] | None = None,
    max_body: int = MAX_BODY,
    csrf_secret: bytes | None = None,
) -> FastAPI:
    """The app over database ``db_url``; ``brands`` are :func:`service.brand_facts` of the cards
    the admin may create projects from (each also gets a project named after its id).
    ``csrf_secret``: the key CSRF tokens are derived with (random per process when None)."""
    Sessions = open_db(db_url)
    brands_by_id = {b["id"]: b for b in brands or []}
    with Sessions() as s:
        for b in brands_by_id.values():
            if s.scalar(select(Project).where(Project.name == b["id"])) is None:
                service.create_project(s, b["id"], b)
    app = FastAPI(title="onbrand annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sessions = Sessions
    app.state.csrf_secret = csrf_secret or csrf.new_secret()
    # Added innermost first: Guard (headers, no unhandled error) > BodyLimit > CSRF > routes.
    app.add_middleware(csrf.CsrfMiddleware, secret=app.state.csrf_secret)
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(Guard)

    def db():
        with Sessions() as s:
            yield s

    install_errors(app)
    _install_login(app, db)
    _install_pages(app, db)
    _install_api(app, db)
    install_admin(app, db, brands_by_id)
    install_review(app, db)
    return app


def item_view(asg, task: Task) -> dict[str, Any]:
    """What a member sees of an item: never ``Task.gold``, the source, or which model wrote what."""
    left, right = service.shown(asg, task)
    return {
        "assignment_id": asg.id,
        "prompt": task.prompt,
        "channel": task.channel,
        "left": left,
        "right": right,
        # A fresh id per rendering: the same form posted twice is one judgement.
        "submission_id": uuid.uuid4().hex,
    }


def _home(s: Session, token: str | None) -> str | None:
    who = access.authenticate(s, token)
    return None if who is None else HOME.get(who.role, "/login")


def _install_login(app: FastAPI, db) -> None:
    @app.get("/static/app.css")
    def css():
        return Response(pages.CSS, media_type="text/css")

    @app.get("/static/app.js")
    def js():
        return Response(pages.JS, media_type="application/javascript")

    @app.get("/")
    def root(request: Request, s: Session = Depends(db)):
        return RedirectResponse(_home(s, request_token(request)) or "/login", 303)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        # A ``?token=`` in the address is ignored on purpose: tokens never travel in URLs.
        return pages.login_page(csrf.form_token(request))

    @app.post("/login")
    def login(request: Request, token: Annotated[str, Form()] = "", s: Session = Depends(db)):
        token = token.strip()
        target = _home(s, token) if 0 < len(token) <= 200 else None
        if target is None:
            return HTMLResponse(
                pages.login_page(csrf.form_token(request), "Unknown, revoked or expired token."), 401
            )
        resp = RedirectResponse(target, 303)
        secure = request.url.scheme == "https"  # behind a TLS proxy the cookie never travels in clear
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, max_age=14 * 86400)
        return resp

    @app.post("/logout")
    def logout():
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(COOKIE)
        return resp


def _install_pages(app: FastAPI, db) -> None:
    @app.get("/annotate", response_class=HTMLResponse)
    def annotate(request: Request, s: Session = Depends(db)):
        token = request_token(request)
        who = access.authenticate(s, token)
        if who is None or who.member_id is None:  # signed out, stale cookie, or the admin
            target = "/admin" if who is not None else "/login"
            resp = RedirectResponse(target, 303)
            if who is None and token:
                resp.delete_cookie(COOKIE)
            return resp
        ann = s.get(Annotator, who.member_id)
        project = s.get(Project, ann.project_id)
        done, total = service.progress(s, ann)
        nxt = service.next_assignment(s, ann)
        ctx = {"brand": project.brand_name, "annotator": ann.name, "done": done, "total": total}
        ctx.update(reason_tags=project.reason_tags, csrf=csrf.form_token(request), role=who.role)
        ctx["item"] = item_view(*nxt) if nxt else None
        return pages.annotate_page(ctx)

    @app.post("/annotate/submit")
    def submit_form(
        request: Request,
        assignment_id: FormId,
        choice: Annotated[str, Form(max_length=16)] = "",
        tags: Annotated[list[str] | None, Form(max_length=service.MAX_TAGS)] = None,
        rewrite: Annotated[str, Form(max_length=service.MAX_TEXT)] = "",
        submission_id: Annotated[str, Form(max_length=64)] = "",
        s: Session = Depends(db),
    ):
        _, ann = require_member(request, s)
        if choice == "skip":
            service.skip(s, ann, assignment_id)
        else:
            service.submit(s, ann, assignment_id, choice, tags or [], rewrite, submission_id or None)
        return RedirectResponse("/annotate", 303)


def _install_api(app: FastAPI, db) -> None:
    @app.get("/api/me")
    def me(request: Request, s: Session = Depends(db)):
        who, ann = require_member(request, s)
        done, total = service.progress(s, ann)
        project = s.get(Project, ann.project_id).name
        return {"annotator": ann.name, "role": who.role, "project": project, "done": done, "total": total}

    @app.get("/api/next")
    def next_item(request: Request, s: Session = Depends(db)):
        _, ann = require_member(request, s)
        nxt = service.next_assignment(s, ann)
        if nxt is None:
            return Response(status_code=204)
        return item_view(*nxt)

    @app.get("/api/items/{assignment_id}")
    def get_item(assignment_id: PathId, request: Request, s: Session = Depends(db)):
        _, ann = require_member(request, s)
        return item_view(*service.own_assignment(s, ann, assignment_id))

    @app.post("/api/items/{assignment_id}/skip")
    def skip_item(assignment_id: PathId, request: Request, s: Session = Depends(db)):
        service.skip(s, require_member(request, s)[1], assignment_id)
        return {"skipped": assignment_id}

    @app.post("/api/judgements")
    def post_judgement(body: Judgement, request: Request, s: Session = Depends(db)):
        _, ann = require_member(request, s)
        j, created = service.submit(
            s, ann, body.assignment_id, body.choice, body.reason_tags, body.rewrite, body.submission_id
        )
        return {
            "judgement_id": j.id,
            "submission_id": j.submission_id,
            "assignment_id": j.assignment_id,
            "choice": j.choice,
            "created": created,
        }
