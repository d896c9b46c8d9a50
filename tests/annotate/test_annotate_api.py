"""API tests: auth, escaping, idempotency, order recording, limits, assignment, export round-trip."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from sqlalchemy import func, select

from onbrand.annotate import service
from onbrand.annotate.db import Assignment, Judgement


def _items(env, who):
    with env.sessions() as s:
        ann = service.annotator_for_token(s, env.tokens[who])
        return list(s.scalars(select(Assignment).where(Assignment.annotator_id == ann.id)))


def _only_theirs(env, who, other):
    mine = {a.task_id for a in _items(env, who)}
    return next(a for a in _items(env, other) if a.task_id not in mine)


def _csrf(client, path: str) -> str:
    """The CSRF token a page put in its forms (tied to this client's cookies)."""
    return re.search(r'name=csrf_token value="([0-9a-f]+)"', client.get(path).text).group(1)


def _count(env, model=Judgement):
    with env.sessions() as s:
        return s.scalar(select(func.count(model.id)))


def test_auth_status_codes(env):
    c = env.client
    assert c.get("/api/next").status_code == 401
    assert c.get("/api/next", headers={"Authorization": "Bearer nope-not-a-token"}).status_code == 401
    assert c.get("/api/next", headers=env.auth("alice")).status_code == 200
    # An item assigned to bob only: alice can neither read nor judge it.
    bobs = _only_theirs(env, "alice", "bob")
    assert c.get(f"/api/items/{bobs.id}", headers=env.auth("alice")).status_code == 403
    r = c.post(
        "/api/judgements", json={"assignment_id": bobs.id, "choice": "left"}, headers=env.auth("alice")
    )
    assert r.status_code == 403
    assert c.post(f"/api/items/{bobs.id}/skip", headers=env.auth("alice")).status_code == 403
    assert _count(env) == 0
    # Admin endpoints: no token 401, an annotator token 403, the admin token 200.
    assert c.get("/api/admin/projects/aurora/stats").status_code == 401
    assert c.get("/api/admin/projects/aurora/stats", headers=env.auth("alice")).status_code == 403
    assert c.get("/api/admin/projects/aurora/export", headers=env.auth("bob")).status_code == 403
    assert c.get("/admin", headers=env.auth("bob")).status_code == 403
    assert c.get("/api/admin/projects/aurora/stats", headers=env.auth("admin")).status_code == 200
    # The admin token is not an annotator.
    assert c.get("/api/next", headers=env.auth("admin")).status_code == 403
    # Browsers: no cookie or a stale one goes to the sign-in page, never to an item.
    assert c.get("/annotate", follow_redirects=False).headers["location"] == "/login"
    c.cookies.set("onbrand_token", "stale-token-000")
    r = c.get("/annotate", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    form = {"token": "stale-token-000", "csrf_token": _csrf(c, "/login")}
    r = c.post("/login", data=form, follow_redirects=False)
    assert r.status_code == 401 and "onbrand_token" not in r.headers.get("set-cookie", "")


def test_tokens_are_stored_hashed(env):
    from pathlib import Path

    db = Path(env.db_url.removeprefix("sqlite:///"))
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))  # with the WAL file
    for token in [env.admin, *env.tokens.values()]:
        assert token.encode() not in raw
        assert service.hash_token(token).encode() in raw


def test_script_in_prompt_is_shown_not_run(env):
    evil = "<script>alert('x')</script>"
    with env.sessions() as s:
        p = service.get_project(s, "aurora")
        a = service.add_annotator(s, p, "carol")[1]
        pair = {
            "prompt": [{"role": "user", "content": f"hi {evil}"}],
            "a": '<img src=x onerror="alert(1)">',
            "b": "ok",
        }
        service.add_tasks(s, p, [pair])
        service.assign(s, p, overlap=0.0)  # carol is least loaded: she gets it
    env.client.cookies.set("onbrand_token", a)
    html = env.client.get("/annotate").text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert evil not in html and "<img" not in html
    assert html.count("<script") == 1 and 'src="/static/app.js"' in html  # no inline script at all
    csp = env.client.get("/annotate").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_retried_post_is_one_judgement(env):
    c, h = env.client, env.auth("alice")
    item = c.get("/api/next", headers=h).json()
    body = {
        "assignment_id": item["assignment_id"],
        "choice": "left",
        "reason_tags": ["tone"],
        "submission_id": "sub-00000001",
    }
    first = c.post("/api/judgements", json=body, headers=h)
    again = c.post("/api/judgements", json=body, headers=h)
    assert first.status_code == again.status_code == 200
    assert first.json()["created"] is True and again.json()["created"] is False
    assert first.json()["judgement_id"] == again.json()["judgement_id"]
    # A lost-ack retry without the id but the same answer is the same judgement too.
    same = c.post("/api/judgements", json={**body, "submission_id": None}, headers=h)
    assert same.status_code == 200 and same.json()["created"] is False
    # A different answer to the judged item is a conflict, not a second judgement.
    other = c.post(
        "/api/judgements", json={**body, "choice": "tie", "submission_id": "sub-00000002"}, headers=h
    )
    assert other.status_code == 409
    assert _count(env) == 1
    # The queue moved on.
    assert c.get("/api/next", headers=h).json()["assignment_id"] != item["assignment_id"]


def test_concurrent_retries_make_one_judgement(env):
    """Eight simultaneous POSTs of one answer (lost-ack retries racing): one judgement, one id."""
    import threading

    asg = _items(env, "alice")[0]
    out, barrier = [], threading.Barrier(8)

    def post(k):
        with env.sessions() as s:
            ann = service.annotator_for_token(s, env.tokens["alice"])
            barrier.wait()
            j, created = service.submit(s, ann, asg.id, "right", ["tone"], None, f"race-{k:04d}")
            out.append((j.id, created))

    threads = [threading.Thread(target=post, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 8 and len({jid for jid, _ in out}) == 1
    assert sum(created for _, created in out) == 1 and _count(env) == 1
    # A submission id reused for another item is refused, not silently merged.
    other = _items(env, "alice")[1]
    with env.sessions() as s:
        stored = s.scalar(select(Judgement.submission_id))  # the id of whichever POST won
    body = {"assignment_id": other.id, "choice": "left", "submission_id": stored}
    r = env.client.post("/api/judgements", json=body, headers=env.auth("alice"))
    assert r.status_code == 409 and "already used" in r.json()["detail"]
    # The same id chosen by another annotator is theirs to use (ids are per annotator).
    bobs = _only_theirs(env, "alice", "bob")
    r = env.client.post(
        "/api/judgements",
        json={"assignment_id": bobs.id, "choice": "left", "submission_id": stored},
        headers=env.auth("bob"),
    )
    assert r.status_code == 200 and r.json()["created"]


def test_form_post_retry_and_order_recorded(env):
    c = env.client
    c.cookies.set("onbrand_token", env.tokens["bob"])
    page = c.get("/annotate").text
    assert "0 / " in page
    asg = next(a for a in _items(env, "bob") if not a.done)
    form = {
        "csrf_token": re.search(r'name=csrf_token value="([0-9a-f]+)"', page).group(1),
        "assignment_id": str(asg.id),
        "submission_id": "form-0000001",
        "choice": "left",
        "tags": ["tone", "accuracy"],
    }
    for _ in range(2):
        r = c.post("/annotate/submit", data=form, follow_redirects=False)
        assert r.status_code == 303
    with env.sessions() as s:
        js = list(s.scalars(select(Judgement)))
    assert len(js) == 1
    j = js[0]
    # "left" means whichever candidate was shown on the left for this assignment.
    assert j.left == asg.left and j.choice == asg.left and j.reason_tags == ["accuracy", "tone"]
    assert "1 / " in c.get("/annotate").text
    # Cross-site form posts are refused even with the cookie.
    form2 = {**form, "submission_id": "form-0000002"}
    r = c.post(
        "/annotate/submit", data=form2, headers={"Origin": "http://evil.example"}, follow_redirects=False
    )
    assert r.status_code == 403


def test_bad_input_and_body_limit(env):
    c, h = env.client, env.auth("alice")
    aid = c.get("/api/next", headers=h).json()["assignment_id"]
    bad_tag = c.post(
        "/api/judgements", json={"assignment_id": aid, "choice": "left", "reason_tags": ["vibes"]}, headers=h
    )
    assert bad_tag.status_code == 422 and "vibes" in bad_tag.json()["detail"]
    assert (
        c.post("/api/judgements", json={"assignment_id": aid, "choice": "maybe"}, headers=h).status_code
        == 422
    )
    rw = c.post(
        "/api/judgements", json={"assignment_id": aid, "choice": "tie", "rewrite": "better"}, headers=h
    )
    assert rw.status_code == 422
    huge = c.post(
        "/api/judgements",
        content=b'{"x": "' + b"a" * 70_000 + b'"}',
        headers={**h, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    assert _count(env) == 0


def test_skip_moves_item_to_the_end(env):
    c, h = env.client, env.auth("alice")
    first = c.get("/api/next", headers=h).json()["assignment_id"]
    assert c.post(f"/api/items/{first}/skip", headers=h).status_code == 200
    assert c.get("/api/next", headers=h).json()["assignment_id"] != first


def test_assignment_overlap_balance_and_order(tmp_path, brand_facts, pairs):
    from onbrand.annotate.db import open_db

    with open_db(f"sqlite:///{tmp_path / 'big.db'}")() as s:
        p = service.create_project(s, "p", brand_facts, overlap=0.25, seed=3)
        anns = [service.add_annotator(s, p, name)[0] for name in ("a1", "a2", "a3")]
        service.add_tasks(s, p, pairs(40))
        out = service.assign(s, p)
        assert out == {"tasks": 40, "overlapping": 10, "assignments": 50}
        rows = list(s.scalars(select(Assignment)))
        per_task = {}
        for r in rows:
            per_task.setdefault(r.task_id, []).append(r.annotator_id)
        assert sorted(len(v) for v in per_task.values()) == [1] * 30 + [2] * 10
        assert all(len(set(v)) == len(v) for v in per_task.values())  # never twice to one person
        loads = sorted(sum(r.annotator_id == a.id for r in rows) for a in anns)
        assert loads[-1] - loads[0] <= 1
        lefts = [r.left for r in rows]
        assert 10 < lefts.count("a") < 40  # order randomised, both seen
        # Loading the same pairs again adds nothing and says so; assign has nothing new to do.
        assert service.add_tasks(s, p, pairs(40)) == {"added": 0, "duplicates": 40}
        assert service.assign(s, p)["tasks"] == 0
        with pytest.raises(ValueError, match="overlap must be in"):
            service.assign(s, p, overlap=1.5)


def test_admin_api_creates_project_and_loads_tasks(env):
    c, h = env.client, env.auth("admin")
    r = c.post("/api/admin/projects", json={"name": "round2", "overlap": 0.0}, headers=h)
    assert r.status_code == 200 and "tone" in r.json()["reason_tags"]
    tok = c.post("/api/admin/projects/round2/annotators", json={"name": "dan"}, headers=h).json()["token"]
    pairs = [{"prompt": "Is Halo dimmable?", "candidates": ["Yes, in 10 steps.", "no idea"]}]
    assert c.post("/api/admin/projects/round2/tasks", json={"pairs": pairs}, headers=h).json()["added"] == 1
    bad = c.post("/api/admin/projects/round2/tasks", json={"pairs": [{"prompt": "x"}]}, headers=h)
    assert bad.status_code == 422 and "request:1" in bad.json()["detail"]
    assert c.post("/api/admin/projects/round2/assign", json={}, headers=h).json()["assignments"] == 1
    item = c.get("/api/next", headers={"Authorization": f"Bearer {tok}"}).json()
    assert item["prompt"][-1]["content"] == "Is Halo dimmable?"
    assert {item["left"], item["right"]} == {"Yes, in 10 steps.", "no idea"}
    assert c.get("/admin", headers=h).status_code == 200


def _judge_all(env, who, pick):
    """Judge every item of ``who``; ``pick(item) -> (screen choice, rewrite)``."""
    c, h = env.client, env.auth(who)
    while (r := c.get("/api/next", headers=h)).status_code == 200:
        item = r.json()
        choice, rewrite = pick(item)
        body = {
            "assignment_id": item["assignment_id"],
            "choice": choice,
            "reason_tags": ["tone"],
            "rewrite": rewrite,
        }
        assert c.post("/api/judgements", json=body, headers=h).status_code == 200


def _good_side(item):
    return "left" if item["left"].startswith("Yes") else "right"


def test_export_records_and_stats(env, tmp_path):
    from onbrand.annotate.pooling import export_records

    # alice picks the good answer and rewrites it; bob calls everything a tie.
    _judge_all(env, "alice", lambda it: (_good_side(it), "Yes: Dawn brightens over 30 minutes."))
    _judge_all(env, "bob", lambda it: ("tie", None))
    st = env.client.get("/api/admin/projects/aurora/stats", headers=env.auth("admin")).json()
    ag = st["agreement"]
    assert ag["items_overlapping"] == 3 and ag["percent_agreement"] == 0.0
    assert ag["cohen_kappa"][0]["annotators"] == ["alice", "bob"] and ag["cohen_kappa"][0]["items"] == 3
    with env.sessions() as s:
        records, counts = export_records(s, service.get_project(s, "aurora"))
    alice_only = sum(1 for a in _items(env, "alice")) - 3
    bob_only = sum(1 for a in _items(env, "bob")) - 3
    # Shared items split 1-1 (no majority); bob's own are ties; alice's own give a pair + a rewrite.
    assert counts == {
        "no_majority": 3,
        "tie": bob_only,
        "pairs": alice_only,
        "rewrites": alice_only,
        "tasks_judged": 6,
        "records": 2 * alice_only,
    }
    for r in records:
        assert r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == "assistant"
        assert r["brand"] == "aurora" and r["channel"] == "product_question" and len(r["id"]) == 64
        assert r["chosen"][0]["content"].startswith("Yes") and r["rejected"][0]["content"].startswith("BUY")
        assert r["annotators"] == ["alice"] and r["reason_tags"] == ["tone"]


def test_export_cli_round_trip_into_snapshot(env, tmp_path):
    from onbrand.cli import main

    _judge_all(env, "alice", lambda it: (_good_side(it), None))
    _judge_all(env, "bob", lambda it: (_good_side(it), None))
    out = tmp_path / "ann.jsonl"
    assert main(["annotate", "export", "--db", env.db_url, "--project", "aurora", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    shared = [r for r in records if len(r["annotators"]) == 2]
    assert len(shared) == 3 and all(r["annotators"] == ["alice", "bob"] for r in shared)
    if importlib.util.find_spec("onbrand.data.cli") is None:
        pytest.skip("onbrand data CLI not in this checkout")
    from onbrand.data.snapshot import load_snapshot

    # The data stage's own commands: import (validate + dedup, --strict: nothing quarantined) ...
    imported = tmp_path / "imported"
    args = ["data", "import", str(out), "--format", "canonical", "--brand", str(env.brand), "--strict"]
    assert main([*args, "--out", str(imported)]) == 0
    # ... then snapshot (no tokenizer checks here: the tiny fixtures do not need the real model).
    config = str(env.brand.parents[1] / "data" / "demo.yaml")
    overrides = [
        f"inputs=[{imported / 'records.jsonl'}]",
        "test_inputs=[]",
        "dev_inputs=[]",
        "judge_inputs=[]",
        f"brand={env.brand}",
        "tokenizer=''",
    ]
    overrides += ["test_fraction=0.5", f"out={tmp_path / 'snap'}", "strict=true"]
    assert main(["data", "snapshot", "--config", config, *overrides]) == 0
    ds, manifest = load_snapshot(tmp_path / "snap")
    rows = [r for split in ds.values() for r in split]
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in records)  # every record arrived
    assert sum(v["pairs"] for v in manifest["counts"].values()) == len(records)
    row = next(r for r in rows if r["id"] == shared[0]["id"])
    assert row["chosen"] == shared[0]["chosen"] and row["annotators"] == ["alice", "bob"]
