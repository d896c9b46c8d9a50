"""Reviewer routes: the items annotators disagreed on, and a reviewer's verdict on them.

A reviewer sees and adjudicates only their own project; an admin may review any project and names
it with ``?project=``. The verdict is audited inside ``review.adjudicate`` (same commit). Gold
items never appear (``review.disagreements`` leaves them out) and no view carries ``Task.gold``.
The ``/review`` page works without JavaScript: one plain form per item, with the CSRF token.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from onbrand.annotate import access, csrf, pages, review
from onbrand.annotate.db import Project
from onbrand.annotate.web import ID_RULE, FormId, request_token, require_review_role, require_reviewer

ProjectQuery = Annotated[str | None, Query(max_length=200)]


class Verdict(BaseModel):
    task_id: int = Field(**ID_RULE)
    choice: str = Field(max_length=16)
    note: str | None = Field(default=None, max_length=review.MAX_NOTE)


def _items(s: Session, project: Project) -> list[dict[str, Any]]:
    # Defence in depth: whatever the review module adds later, a known answer is never shown.
    return [{k: v for k, v in d.items() if k != "gold"} for d in review.disagreements(s, project)]


def _verdict(adj) -> dict[str, Any]:
    return {"task_id": adj.task_id, "choice": adj.choice, "note": adj.note, "reviewer": adj.reviewer}


def install_review(app: FastAPI, db) -> None:
    @app.get("/api/review/disagreements")
    def disagreements(request: Request, project: ProjectQuery = None, s: Session = Depends(db)):
        _, p = require_reviewer(request, s, project)
        return {"project": p.name, "items": _items(s, p)}

    @app.post("/api/review/adjudications")
    def adjudicate(body: Verdict, request: Request, s: Session = Depends(db)):
        who = require_review_role(request, s)  # review.adjudicate keeps a reviewer to their project
        adj = review.adjudicate(s, who, body.task_id, body.choice, body.note)
        s.commit()
        return _verdict(adj)

    @app.get("/review", response_class=HTMLResponse)
    def review_page(request: Request, project: ProjectQuery = None, s: Session = Depends(db)):
        if request_token(request) is None:
            return RedirectResponse("/login", 303)
        who = access.authenticate(s, request_token(request))
        if who is not None and who.is_admin and not project:
            names = list(s.scalars(select(Project.name).order_by(Project.id)))
            return pages.review_choose_page(names, csrf.form_token(request))
        who, p = require_reviewer(request, s, project)
        ctx = {"who": who.name, "project": p.name, "brand": p.brand_name, "admin": who.is_admin}
        ctx.update(items=_items(s, p), csrf=csrf.form_token(request))
        return pages.review_page(ctx)

    @app.post("/review/adjudicate")
    def adjudicate_form(
        request: Request,
        task_id: FormId,
        choice: Annotated[str, Form(max_length=16)] = "",
        note: Annotated[str, Form(max_length=review.MAX_NOTE)] = "",
        project: Annotated[str, Form(max_length=200)] = "",
        s: Session = Depends(db),
    ):
        who, p = require_reviewer(request, s, project or None)
        review.adjudicate(s, who, task_id, choice, note.strip() or None)
        s.commit()
        query = f"?{urlencode({'project': p.name})}" if who.is_admin else ""
        return RedirectResponse(f"/review{query}#task-{task_id}", 303)
