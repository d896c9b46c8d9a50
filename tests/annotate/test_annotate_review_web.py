"""Roles in the web layer: reviewers see and adjudicate their own project's disagreements (API and a
no-JavaScript page), admins manage members (roles, expiry, revoke, rotate) and read the audit log,
every admin/reviewer write is audited, and no member view reveals a gold answer."""

from __future__ import annotations

import datetime as _dt
import json
import re

import pytest
from sqlalchemy import func, select

from onbrand.annotate import service
from onbrand.annotate.db import Adjudication, Annotator, Assignment, AuditEntry, Task

TOKEN_RE = re.compile(r'name=csrf_token value="([0-9a-f]+)"')
BAD = "unknown, revoked or expired token"


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def roles(env, brand_facts, pairs):
    """Reviewer rita in 'aurora'; project 'other' with reviewer oscar; alice and bob disagree on
    every shared item (alice picks the good answer, bob says tie)."""
    with env.sessions() as s:
        p = service.get_project(s, env.project)
        rita = service.add_annotator(s, p, "rita", role="reviewer")[1]
        other = service.create_project(s, "other", brand_facts)
        oscar = service.add_annotator(s, other, "oscar", role="reviewer")[1]
        service.add_annotator(s, other, "olga")
        service.add_tasks(s, other, pairs(2, prefix="o"))
    c = env.client
    for who in ("alice", "bob"):
        h = env.auth(who)
        while (r := c.get("/api/next", headers=h)).status_code == 200:
            item = r.json()
            good = "left" if item["left"].startswith("Yes") else "right"
            body = {"assignment_id": item["assignment_id"], "choice": good if who == "alice" else "tie"}
            assert c.post("/api/judgements", json=body, headers=h).status_code == 200
    return {"rita": rita, "oscar": oscar}


def _audit(env, action: str) -> list[AuditEntry]:
    with env.sessions() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def test_disagreements_are_scoped_to_the_reviewers_project(env, roles):
    c = env.client
    rita, oscar = _bearer(roles["rita"]), _bearer(roles["oscar"])
    r = c.get("/api/review/disagreements", headers=rita)
    assert r.status_code == 200 and r.json()["project"] == "aurora"
    items = r.json()["items"]
    assert len(items) == 3  # 50% overlap of 6 tasks, all split between alice and bob
    for it in items:
        assert {v["annotator"] for v in it["votes"]} == {"alice", "bob"} and it["adjudication"] is None
        assert "gold" not in it
    assert c.get("/api/review/disagreements?project=aurora", headers=rita).status_code == 200
    assert c.get("/api/review/disagreements?project=other", headers=rita).status_code == 403
    assert c.get("/api/review/disagreements", headers=oscar).json() == {"project": "other", "items": []}
    assert c.get("/api/review/disagreements", headers=env.auth("alice")).status_code == 403
    assert c.get("/api/review/disagreements").status_code == 401
    admin = env.auth("admin")
    assert c.get("/api/review/disagreements", headers=admin).status_code == 422
    assert len(c.get("/api/review/disagreements?project=aurora", headers=admin).json()["items"]) == 3
    # Reviewers are not admins.
    assert c.get("/api/admin/audit", headers=rita).status_code == 403
    assert c.get("/api/admin/projects/aurora/stats", headers=rita).status_code == 403


def test_adjudication_api_is_stored_and_audited(env, roles):
    c = env.client
    rita, oscar = _bearer(roles["rita"]), _bearer(roles["oscar"])
    task_id = c.get("/api/review/disagreements", headers=rita).json()["items"][0]["task_id"]
    body = {"task_id": task_id, "choice": "a", "note": "A is on brand"}
    assert c.post("/api/review/adjudications", json=body, headers=oscar).status_code == 403
    assert c.post("/api/review/adjudications", json=body, headers=env.auth("alice")).status_code == 403
    bad = c.post("/api/review/adjudications", json={**body, "choice": "left"}, headers=rita)
    assert bad.status_code == 422 and "choice" in bad.json()["detail"]
    assert (
        c.post("/api/review/adjudications", json={**body, "task_id": 2**63}, headers=rita).status_code == 422
    )
    with env.sessions() as s:
        assert s.scalar(select(func.count(Adjudication.id))) == 0
    r = c.post("/api/review/adjudications", json=body, headers=rita)
    assert r.status_code == 200
    assert r.json() == {"task_id": task_id, "choice": "a", "note": "A is on brand", "reviewer": "rita"}
    with env.sessions() as s:
        adj = s.scalar(select(Adjudication))
        assert (adj.task_id, adj.choice, adj.reviewer) == (task_id, "a", "rita")
    rows = _audit(env, "task.adjudicate")
    assert [(e.actor, e.role, e.detail["task_id"]) for e in rows] == [("rita", "reviewer", task_id)]
    items = c.get("/api/review/disagreements", headers=rita).json()["items"]
    assert next(it for it in items if it["task_id"] == task_id)["adjudication"] == "a"


def test_review_page_works_without_javascript(env, roles):
    """Sign in as the reviewer with the form, land on /review, adjudicate with a form button."""
    c = env.client
    login = {"token": roles["rita"], "csrf_token": TOKEN_RE.search(c.get("/login").text).group(1)}
    r = c.post("/login", data=login, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/review"
    page = c.get("/review").text
    task_ids = re.findall(r'name=task_id value="(\d+)"', page)
    assert len(task_ids) == 3 and "3 of 3 open" in page
    form = {"task_id": task_ids[1], "choice": "both_bad", "note": "neither fits"}
    assert c.post("/review/adjudicate", data=form, follow_redirects=False).status_code == 403  # no token
    form["csrf_token"] = TOKEN_RE.search(page).group(1)
    r = c.post("/review/adjudicate", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/review#task-{task_ids[1]}"
    page = c.get("/review").text
    assert "2 of 3 open" in page and "verdict <b>both_bad</b>" in page
    # The reviewer also has a queue page, with a link back to the review page.
    assert 'href="/review"' in c.get("/annotate").text


def test_admin_reviews_any_project_by_name(env, roles):
    c = env.client
    c.cookies.set("onbrand_token", env.admin)
    choose = c.get("/review").text
    assert 'href="/review?project=aurora"' in choose and 'href="/review?project=other"' in choose
    page = c.get("/review?project=aurora").text
    task_id = re.findall(r'name=task_id value="(\d+)"', page)[0]
    form = {
        "task_id": task_id,
        "choice": "b",
        "project": "aurora",
        "csrf_token": TOKEN_RE.search(page).group(1),
    }
    r = c.post("/review/adjudicate", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/review?project=aurora#task-{task_id}"
    with env.sessions() as s:
        adj = s.scalar(select(Adjudication))
        assert (adj.choice, adj.reviewer, adj.reviewer_id) == ("b", "admin", None)


def test_sign_in_lands_on_the_roles_page(env, roles):
    c = env.client
    for token, target in (
        (roles["rita"], "/review"),
        (env.tokens["alice"], "/annotate"),
        (env.admin, "/admin"),
    ):
        c.cookies.clear()
        form = {"token": token, "csrf_token": TOKEN_RE.search(c.get("/login").text).group(1)}
        r = c.post("/login", data=form, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == target
        assert c.get("/", follow_redirects=False).headers["location"] == target
        assert c.get(target).status_code == 200
    # An annotator's cookie on the review page: 403, not a page.
    c.cookies.clear()
    c.cookies.set("onbrand_token", env.tokens["alice"])
    assert c.get("/review").status_code == 403


def test_member_management_roles_expiry_revoke_rotate(env):
    c, admin = env.client, env.auth("admin")
    url = "/api/admin/projects/aurora/annotators"
    for bad in (
        {"name": "x", "expires_in_days": 0},
        {"name": "x", "expires_in_days": 3651},
        {"name": "x", "role": "admin"},
    ):
        assert c.post(url, json=bad, headers=admin).status_code == 422, bad
    assert c.post(url, json={"name": "x"}, headers=env.auth("alice")).status_code == 403
    r = c.post(url, json={"name": "rev2", "role": "reviewer", "expires_in_days": 30}, headers=admin)
    assert r.status_code == 200 and r.json()["role"] == "reviewer"
    expires = _dt.datetime.fromisoformat(r.json()["expires_at"])
    assert _dt.timedelta(days=29) < expires - _dt.datetime.now(_dt.UTC) <= _dt.timedelta(days=30)
    token = r.json()["token"]
    assert c.get("/api/review/disagreements", headers=_bearer(token)).status_code == 200
    # Rotate: the old token stops, the new one works.
    r = c.post("/api/admin/projects/aurora/members/rev2/rotate", headers=admin)
    assert r.status_code == 200 and r.json()["token"] != token
    old, token = token, r.json()["token"]
    r = c.get("/api/review/disagreements", headers=_bearer(old))
    assert r.status_code == 401 and r.json()["detail"] == BAD
    assert c.get("/api/review/disagreements", headers=_bearer(token)).status_code == 200
    # Revoke: 401 at once, for the API and the pages; rotating a revoked member is refused.
    r = c.post("/api/admin/projects/aurora/members/rev2/revoke", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert c.get("/api/review/disagreements", headers=_bearer(token)).json()["detail"] == BAD
    assert c.post("/api/admin/projects/aurora/members/rev2/rotate", headers=admin).status_code == 422
    assert c.post("/api/admin/projects/aurora/members/nobody/revoke", headers=admin).status_code == 404
    # Expiry: a token past its time is refused like a revoked one.
    with env.sessions() as s:
        ann = s.scalar(select(Annotator).where(Annotator.name == "bob"))
        ann.expires_at = _dt.datetime.now(_dt.UTC) - _dt.timedelta(seconds=1)
        s.commit()
    r = c.get("/api/next", headers=env.auth("bob"))
    assert r.status_code == 401 and r.json()["detail"] == BAD
    # Every step is in the audit log, which never holds a token.
    log = c.get("/api/admin/audit?project=aurora", headers=admin).json()["entries"]
    actions = [e["action"] for e in log]
    assert actions[:3] == ["member.revoke", "member.rotate", "member.add"]
    assert all(e["actor"] == "admin" and e["role"] == "admin" for e in log[:3])
    text = json.dumps(log)
    assert old not in text and token not in text and env.admin not in text


def test_admin_writes_are_audited_with_the_write(env):
    c, admin = env.client, env.auth("admin")
    assert (
        c.post("/api/admin/projects", json={"name": "round2", "overlap": 0.0}, headers=admin).status_code
        == 200
    )
    # A refused write leaves no audit row (the row rides in the write's own commit).
    assert c.post("/api/admin/projects", json={"name": "round2"}, headers=admin).status_code == 422
    assert (
        c.post("/api/admin/projects/round2/annotators", json={"name": "dan"}, headers=admin).status_code
        == 200
    )
    pairs = [{"prompt": "Is Halo dimmable?", "candidates": ["Yes, in 10 steps.", "no idea"]}]
    assert c.post("/api/admin/projects/round2/tasks", json={"pairs": pairs}, headers=admin).status_code == 200
    bad = c.post("/api/admin/projects/round2/tasks", json={"pairs": [{"prompt": "x"}]}, headers=admin)
    assert bad.status_code == 422
    assert c.post("/api/admin/projects/round2/assign", json={}, headers=admin).status_code == 200
    assert c.get("/api/admin/projects/round2/export", headers=admin).status_code == 200
    assert [e.detail["project"] for e in _audit(env, "project.create")] == ["round2"]
    assert [e.detail["submitted"] for e in _audit(env, "tasks.add")] == [1]
    for action in ("member.add", "tasks.assign", "project.export"):
        rows = [e for e in _audit(env, action) if e.actor == "admin"]
        assert len(rows) == 1 and rows[0].role == "admin", action
    entries = c.get("/api/admin/audit?limit=2", headers=admin).json()["entries"]
    assert [e["action"] for e in entries] == ["project.export", "tasks.assign"]
    assert c.get("/api/admin/audit?project=nope", headers=admin).status_code == 404


def test_item_views_never_reveal_gold(env):
    c, h = env.client, env.auth("alice")
    aid = c.get("/api/next", headers=h).json()["assignment_id"]
    with env.sessions() as s:
        task = s.get(Task, s.get(Assignment, aid).task_id)
        task.gold = "both_bad"  # a value no view shows for any other reason
        s.commit()
    keys = {"assignment_id", "prompt", "channel", "left", "right", "submission_id"}
    for r in (c.get("/api/next", headers=h), c.get(f"/api/items/{aid}", headers=h)):
        assert r.json()["assignment_id"] == aid and set(r.json()) == keys
        assert "both_bad" not in json.dumps(r.json())
    c.cookies.set("onbrand_token", env.tokens["alice"])
    page = c.get("/annotate").text
    assert f'name=assignment_id value="{aid}"' in page and "gold" not in page.lower()
