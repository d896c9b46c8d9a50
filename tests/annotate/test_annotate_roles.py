"""Roles, token expiry/revocation/rotation, the audit log, and reviewer adjudication."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select, update

UTC = dt.UTC


def me(env, token: str) -> int:
    return env.client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code


def judge_all(s, ann, want: str) -> int:
    """Judge every item in ``ann``'s queue as candidate ``want`` ('a' or 'b')."""
    from onbrand.annotate import service

    n = 0
    while (nxt := service.next_assignment(s, ann)) is not None:
        asg, _task = nxt
        service.submit(s, ann, asg.id, "left" if asg.left == want else "right")
        n += 1
    return n


def test_revoked_and_expired_tokens_are_refused(env):
    from onbrand.annotate import access, service
    from onbrand.annotate.db import Annotator

    alice, bob = env.tokens["alice"], env.tokens["bob"]
    assert me(env, alice) == 200 and me(env, bob) == 200
    with env.sessions() as s:
        project = service.get_project(s, "aurora")
        access.revoke(s, project, "alice")
        assert access.authenticate(s, alice) is None and service.annotator_for_token(s, alice) is None
        # expiry: set in the past behind the API's back (add_member refuses a past expiry)
        s.execute(update(Annotator).where(Annotator.name == "bob").values(expires_at=dt.datetime.now(UTC)))
        s.commit()
        assert access.authenticate(s, bob) is None
        raw = s.scalar(select(Annotator.expires_at).where(Annotator.name == "bob"))
        assert raw.tzinfo is None  # SQLite hands it back naive: compared as UTC
        carol, carol_token = access.add_member(
            s, project, "carol", expires_at=dt.datetime.now(UTC) + dt.timedelta(hours=1)
        )
        assert access.authenticate(s, carol_token).member_id == carol.id
        with pytest.raises(ValueError, match="in the past"):
            access.add_member(s, project, "dave", expires_at=dt.datetime.now(UTC) - dt.timedelta(seconds=1))
        with pytest.raises(ValueError, match="role must be one of"):
            access.add_member(s, project, "dave", role="admin")
        with pytest.raises(LookupError, match="no member 'nobody'"):
            access.revoke(s, project, "nobody")
    assert me(env, alice) == 401 and me(env, bob) == 401 and me(env, carol_token) == 200


def test_rotation_invalidates_the_old_token(env):
    from onbrand.annotate import access, service

    old = env.tokens["alice"]
    with env.sessions() as s:
        new = access.rotate(s, service.get_project(s, "aurora"), "alice")
        assert access.authenticate(s, old) is None
        assert access.authenticate(s, new).name == "alice"
        old_admin = env.admin
        new_admin = service.set_admin_token(s)
        assert not service.is_admin(s, old_admin) and service.is_admin(s, new_admin)
        assert service.set_admin_token(s, new_admin) == new_admin  # re-applying the same token: no-op
        ops = access.add_admin(s, "ops", expires_at=dt.datetime.now(UTC) + dt.timedelta(days=1))
        assert access.authenticate(s, ops) == access.Principal("admin", "ops", None, None)
        access.revoke_admin(s, "ops")
        assert access.authenticate(s, ops) is None and service.has_admin(s)
    assert me(env, old) == 401 and me(env, new) == 200


def test_every_admin_action_is_audited_without_tokens(env):
    from onbrand.annotate import access, review, service

    secrets = [env.admin, *env.tokens.values()]
    with env.sessions() as s:
        project = service.get_project(s, "aurora")
        _, t = access.add_member(s, project, "rita", role="reviewer")
        secrets.append(t)
        secrets.append(access.rotate(s, project, "bob"))
        access.revoke(s, project, "alice")
        secrets.append(service.set_admin_token(s))
        admin = access.authenticate(s, secrets[-1])
        task_id = review.adjudicate(s, admin, 1, "a", note="clear").task_id
        with pytest.raises(ValueError, match="must not hold tokens"):
            access.audit(s, admin, "oops", token="x")
        rows = access.audit_rows(s, project)
        everything = access.audit_rows(s)
    actions = [(r["action"], r["actor"], r["role"]) for r in reversed(rows)]
    assert actions == [
        ("member.add", "cli", "cli"),
        ("member.add", "cli", "cli"),
        ("member.add", "cli", "cli"),
        ("member.rotate", "cli", "cli"),
        ("member.revoke", "cli", "cli"),
        ("task.adjudicate", "admin", "admin"),
    ]
    assert rows[0]["detail"] == {"task_id": task_id, "choice": "a", "previous": None}
    assert [r["action"] for r in everything if r["project_id"] is None] == ["admin.rotate", "admin.add"]
    dumped = json.dumps(everything)
    assert not [t for t in secrets if t in dumped]


def test_reviewer_adjudicates_disagreements_in_their_project_only(env, pairs):
    from onbrand.annotate import access, review, service
    from onbrand.annotate.db import Adjudication, Task

    with env.sessions() as s:
        aurora = service.get_project(s, "aurora")
        judged = {
            who: judge_all(s, service.annotator_for_token(s, env.tokens[who]), want)
            for who, want in (("alice", "a"), ("bob", "b"))
        }
        split = review.disagreements(s, aurora)
        overlap = [t for t in split if len(t["votes"]) == 2]
        assert split == overlap and len(split) == sum(judged.values()) - 6 == 3
        assert {(v["annotator"], v["choice"]) for v in split[0]["votes"]} == {("alice", "a"), ("bob", "b")}
        assert split[0]["adjudication"] is None and split[0]["candidate_a"].startswith("Yes")
        # a gold task with split votes is not a disagreement to adjudicate
        s.get(Task, split[2]["task_id"]).gold = "a"
        s.commit()
        assert [t["task_id"] for t in review.disagreements(s, aurora)] == [t["task_id"] for t in split[:2]]

        ember = service.create_project(s, "ember", service.brand_facts(env.brand.parent / "ember.yaml"))
        service.add_tasks(s, ember, pairs(1, prefix="e"))
        ember_task = s.scalar(select(Task.id).where(Task.project_id == ember.id))
        rita_row, rita_token = access.add_member(s, aurora, "rita", role="reviewer")
        rita = access.authenticate(s, rita_token)
        assert rita == access.Principal("reviewer", "rita", aurora.id, rita_row.id)
        alice = access.authenticate(s, env.tokens["alice"])

        task = split[0]["task_id"]
        review.adjudicate(s, rita, task, "b", note="tone")
        review.adjudicate(s, rita, task, "a")  # a later verdict replaces the earlier one
        rows = s.scalars(select(Adjudication).where(Adjudication.task_id == task)).all()
        assert [(r.choice, r.note, r.reviewer, r.reviewer_id) for r in rows] == [
            ("a", None, "rita", rita_row.id)
        ]
        assert review.verdicts(s, aurora) == {task: "a"}
        assert review.disagreements(s, aurora)[0]["adjudication"] == "a"

        with pytest.raises(PermissionError, match="not in reviewer 'rita'"):
            review.adjudicate(s, rita, ember_task, "a")
        with pytest.raises(PermissionError, match="only reviewers and admins"):
            review.adjudicate(s, alice, task, "b")
        with pytest.raises(ValueError, match="gold item"):
            review.adjudicate(s, rita, split[2]["task_id"], "a")
        with pytest.raises(ValueError, match="choice must be one of"):
            review.adjudicate(s, rita, task, "left")
        with pytest.raises(LookupError):
            review.adjudicate(s, rita, 10_000, "a")
        admin = access.authenticate(s, env.admin)
        assert review.adjudicate(s, admin, ember_task, "tie").reviewer_id is None  # admins: any project
        audited = [
            (r["action"], r["actor"], r["detail"]["previous"]) for r in access.audit_rows(s, aurora)[:2]
        ]
        assert audited == [("task.adjudicate", "rita", "b"), ("task.adjudicate", "rita", None)]
        assert review.verdicts(s, aurora) == {task: "a"}  # refused attempts changed nothing


def test_cli_access_commands_are_audited_as_cli(env, capsys):
    from onbrand.annotate import access
    from onbrand.annotate.db import Annotator
    from onbrand.cli import main

    db = ["--db", env.db_url]
    assert main(["annotate", "annotator", *db, "--project", "aurora", "--role", "reviewer",
                 "--expires-in-days", "2", "carol"]) == 0  # fmt: skip
    name, token = capsys.readouterr().out.strip().split("\t")
    assert name == "carol"
    with env.sessions() as s:
        who = access.authenticate(s, token)
        assert who.role == "reviewer"
        row = s.get(Annotator, who.member_id)
        left = access._utc(row.expires_at) - dt.datetime.now(UTC)
        assert dt.timedelta(days=1.9) < left <= dt.timedelta(days=2)
    assert main(["annotate", "rotate", *db, "--project", "aurora", "carol"]) == 0
    new = capsys.readouterr().out.strip().split("\t")[1]
    assert main(["annotate", "revoke", *db, "--project", "aurora", "bob"]) == 0
    assert "revoked bob" in capsys.readouterr().out
    assert main(["annotate", "revoke", *db, "--project", "aurora", "nobody"]) == 2
    assert "no member 'nobody'" in capsys.readouterr().err
    assert main(["annotate", "audit", *db, "--project", "aurora", "--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out)
    assert [r["action"] for r in rows][-3:] == ["member.add", "member.rotate", "member.revoke"]
    assert {r["actor"] for r in rows} == {"cli"} and token not in out and new not in out
    with env.sessions() as s:
        assert access.authenticate(s, token) is None and access.authenticate(s, new).name == "carol"
    assert me(env, env.tokens["bob"]) == 401
