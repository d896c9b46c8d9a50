"""The FastAPI app: annotator pages, the JSON API, admin endpoints.

Auth: ``Authorization: Bearer <token>`` (API clients) or the ``onbrand_token`` cookie set by
``/login`` (browsers; HttpOnly, SameSite=Strict, so other sites cannot post with it). Tokens are
looked up by their sha256; no token -> 401, unknown token -> 401, an annotator on an admin endpoint
or on another annotator's item -> 403. Every write is committed before the response is sent.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from onbrand.annotate import pages, service
from onbrand.annotate.db import Annotator, Project, open_db
from onbrand.annotate.pooling import export_records, project_stats
from onbrand.annotate.queue import parse_pair

COOKIE = "onbrand_token"
MAX_BODY = 1 << 20  # bytes; a judgement is a few KiB, a task upload a few hundred
SECURITY_HEADERS = {
    # Only our own script and style: even text that escaped escaping could not run.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


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
        # Read the (chunked) body up to the limit, then replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return await self.app(scope, _replay([msg]), send)
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await PlainTextResponse(f"request body over {self.limit} bytes", 413)(
                    scope, receive, send
                )
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        return await self.app(
            scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send
        )


def _replay(messages: list[dict], then=None):
    async def receive():
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class Judgement(BaseModel):
    assignment_id: int
    choice: str = Field(max_length=16)
    reason_tags: list[str] = Field(default_factory=list, max_length=service.MAX_TAGS)
    rewrite: str | None = Field(default=None, max_length=service.MAX_TEXT)
    submission_id: str | None = Field(default=None, min_length=8, max_length=64)


class NewProject(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    brand: str | None = Field(default=None, max_length=200)  # id of a card the server was given
    overlap: float = 0.1
    seed: int = 0


class NewAnnotator(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class NewTasks(BaseModel):
    pairs: list[dict[str, Any]] = Field(max_length=5000)


class AssignBody(BaseModel):
    overlap: float | None = None
    seed: int | None = None


def create_app(db_url: str, brands: list[dict[str, Any]] | None = None, max_body: int = MAX_BODY) -> FastAPI:
    """The app over database ``db_url``; ``brands`` are :func:`service.brand_facts` of the cards
    the admin may create projects from (each also gets a project named after its id)."""
    Sessions = open_db(db_url)
    brands_by_id = {b["id"]: b for b in brands or []}
    with Sessions() as s:
        for b in brands_by_id.values():
            if s.scalar(select(Project).where(Project.name == b["id"])) is None:
                service.create_project(s, b["id"], b)
    app = FastAPI(title="onbrand annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sessions = Sessions
    app.add_middleware(BodyLimit, limit=max_body)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    def db():
        with Sessions() as s:
            yield s

    _install_errors(app)
    _install_pages(app, db)
    _install_api(app, db)
    _install_admin(app, db, brands_by_id)
    return app


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.cookies.get(COOKIE) or None


def _annotator(request: Request, s: Session) -> Annotator:
    token = _token(request)
    if token is None:
        raise HTTPException(401, "missing token: send 'Authorization: Bearer <token>' or sign in")
    ann = service.annotator_for_token(s, token)
    if ann is None:
        if service.is_admin(s, token):
            raise HTTPException(403, "this is an annotator endpoint; the admin token cannot judge items")
        raise HTTPException(401, "unknown or revoked token")
    return ann


def _admin(request: Request, s: Session) -> None:
    token = _token(request)
    if token is None:
        raise HTTPException(401, "missing admin token")
    if not service.is_admin(s, token):
        if service.annotator_for_token(s, token) is not None:
            raise HTTPException(403, "admin endpoint: annotator tokens are not allowed")
        raise HTTPException(401, "unknown token")


def _same_origin(request: Request) -> None:
    """Cookie-authenticated form posts must come from our own pages (defence beside SameSite)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-origin form post refused")


def _install_errors(app: FastAPI) -> None:
    def html_wanted(request: Request) -> bool:
        return not request.url.path.startswith("/api/")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if html_wanted(request):
            return HTMLResponse(pages.error_page(exc.status_code, str(exc.detail)), exc.status_code)
        return JSONResponse({"detail": exc.detail}, exc.status_code)

    mapping = {ValueError: 422, PermissionError: 403, LookupError: 404, service.Conflict: 409}
    for exc_type, code in mapping.items():

        async def handler(request: Request, exc: Exception, code: int = code):
            if html_wanted(request):
                return HTMLResponse(pages.error_page(code, str(exc)), code)
            return JSONResponse({"detail": str(exc)}, code)

        app.add_exception_handler(exc_type, handler)


def item_view(s: Session, ann: Annotator, asg, task) -> dict[str, Any]:
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


def _install_login(app: FastAPI, db) -> None:
    @app.get("/static/app.css")
    def css():
        return Response(pages.CSS, media_type="text/css")

    @app.get("/static/app.js")
    def js():
        return Response(pages.JS, media_type="application/javascript")

    @app.get("/")
    def root(request: Request):
        return RedirectResponse("/annotate" if _token(request) else "/login", 303)

    @app.get("/login", response_class=HTMLResponse)
    def login_form():
        return pages.login_page()

    @app.post("/login")
    async def login(request: Request, s: Session = Depends(db)):
        token = str((await request.form()).get("token", "")).strip()
        if service.annotator_for_token(s, token) is not None:
            target = "/annotate"
        elif service.is_admin(s, token):
            target = "/admin"
        else:
            return HTMLResponse(pages.login_page("Unknown token."), 401)
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
    _install_login(app, db)

    @app.get("/annotate", response_class=HTMLResponse)
    def annotate(request: Request, s: Session = Depends(db)):
        token = _token(request)
        ann = service.annotator_for_token(s, token)
        if ann is None:  # signed out, stale cookie, or the admin: back to the right page
            target = "/admin" if service.is_admin(s, token) else "/login"
            resp = RedirectResponse(target, 303)
            if target == "/login" and token:
                resp.delete_cookie(COOKIE)
            return resp
        project = s.get(Project, ann.project_id)
        done, total = service.progress(s, ann)
        nxt = service.next_assignment(s, ann)
        ctx = {"brand": project.brand_name, "annotator": ann.name, "done": done, "total": total}
        ctx["reason_tags"] = project.reason_tags
        ctx["item"] = item_view(s, ann, *nxt) if nxt else None
        return pages.annotate_page(ctx)

    @app.post("/annotate/submit")
    async def submit_form(request: Request, s: Session = Depends(db)):
        _same_origin(request)
        ann = _annotator(request, s)
        form = await request.form()
        try:
            assignment_id = int(str(form.get("assignment_id", "")))
        except ValueError:
            raise HTTPException(422, "assignment_id must be an integer") from None
        choice = str(form.get("choice", ""))
        if choice == "skip":
            service.skip(s, ann, assignment_id)
        else:
            tags = [str(t) for t in form.getlist("tags")]
            rewrite = str(form.get("rewrite") or "")
            service.submit(
                s, ann, assignment_id, choice, tags, rewrite, str(form.get("submission_id") or "") or None
            )
        return RedirectResponse("/annotate", 303)


def _install_api(app: FastAPI, db) -> None:
    @app.get("/api/me")
    def me(request: Request, s: Session = Depends(db)):
        ann = _annotator(request, s)
        done, total = service.progress(s, ann)
        return {
            "annotator": ann.name,
            "project": s.get(Project, ann.project_id).name,
            "done": done,
            "total": total,
        }

    @app.get("/api/next")
    def next_item(request: Request, s: Session = Depends(db)):
        ann = _annotator(request, s)
        nxt = service.next_assignment(s, ann)
        if nxt is None:
            return Response(status_code=204)
        return item_view(s, ann, *nxt)

    @app.get("/api/items/{assignment_id}")
    def get_item(assignment_id: int, request: Request, s: Session = Depends(db)):
        ann = _annotator(request, s)
        return item_view(s, ann, *service.own_assignment(s, ann, assignment_id))

    @app.post("/api/items/{assignment_id}/skip")
    def skip_item(assignment_id: int, request: Request, s: Session = Depends(db)):
        service.skip(s, _annotator(request, s), assignment_id)
        return {"skipped": assignment_id}

    @app.post("/api/judgements")
    def post_judgement(body: Judgement, request: Request, s: Session = Depends(db)):
        ann = _annotator(request, s)
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


def _install_admin(app: FastAPI, db, brands_by_id: dict[str, dict]) -> None:
    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, s: Session = Depends(db)):
        if _token(request) is None:
            return RedirectResponse("/login", 303)
        _admin(request, s)
        return pages.admin_page(
            [project_stats(s, p) for p in s.scalars(select(Project).order_by(Project.id))]
        )

    @app.post("/api/admin/projects")
    def new_project(body: NewProject, request: Request, s: Session = Depends(db)):
        _admin(request, s)
        brand_id = body.brand or (next(iter(brands_by_id)) if len(brands_by_id) == 1 else None)
        if brand_id not in brands_by_id:
            raise ValueError(
                f"brand must be one of the cards the server was started with: {sorted(brands_by_id)}"
            )
        p = service.create_project(s, body.name, brands_by_id[brand_id], body.overlap, body.seed)
        return {"project": p.name, "id": p.id, "brand": p.brand_id, "reason_tags": p.reason_tags}

    @app.post("/api/admin/projects/{project}/annotators")
    def new_annotator(project: str, body: NewAnnotator, request: Request, s: Session = Depends(db)):
        _admin(request, s)
        ann, token = service.add_annotator(s, service.get_project(s, project), body.name)
        return {"annotator": ann.name, "id": ann.id, "token": token}

    @app.post("/api/admin/projects/{project}/tasks")
    def new_tasks(project: str, body: NewTasks, request: Request, s: Session = Depends(db)):
        _admin(request, s)
        items = [parse_pair(obj, "request", i) for i, obj in enumerate(body.pairs, start=1)]
        return service.add_tasks(s, service.get_project(s, project), items)

    @app.post("/api/admin/projects/{project}/assign")
    def do_assign(project: str, body: AssignBody, request: Request, s: Session = Depends(db)):
        _admin(request, s)
        return service.assign(s, service.get_project(s, project), body.overlap, body.seed)

    @app.get("/api/admin/projects/{project}/stats")
    def stats(project: str, request: Request, s: Session = Depends(db)):
        _admin(request, s)
        return project_stats(s, service.get_project(s, project))

    @app.get("/api/admin/projects/{project}/export")
    def export(project: str, request: Request, s: Session = Depends(db)):
        _admin(request, s)
        records, counts = export_records(s, service.get_project(s, project))
        return {"records": records, "counts": counts}
