"""Schema migrations: a first-release database (no alembic_version) is refused until migrated, the
migration keeps every row, 20 processes opening one fresh file at once all succeed, and the models
match the migrations (no drift)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    inspect,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

REPO = Path(__file__).resolve().parents[2]
LEGACY_TABLES = ("admins", "projects", "annotators", "tasks", "assignments", "judgements")


# ----------------------------------------------------------------------------- the first release's models
# A verbatim copy of annotate/db.py's models as the release before migrations shipped them: the
# databases it created (Base.metadata.create_all) are what revision 0001 must reproduce and upgrade.
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Old(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class OldAdmin(Old):
    __tablename__ = "admins"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class OldProject(Old):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    brand_id: Mapped[str] = mapped_column(String(200))
    brand_name: Mapped[str] = mapped_column(String(200))
    brand_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    brand_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    overlap: Mapped[float] = mapped_column(Float, default=0.1)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class OldAnnotator(Old):
    __tablename__ = "annotators"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class OldTask(Old):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "content_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    candidate_a: Mapped[str] = mapped_column(Text)
    candidate_b: Mapped[str] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class OldAssignment(Old):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "annotator_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    left: Mapped[str] = mapped_column(String(1))
    position: Mapped[int] = mapped_column(Integer)
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    done: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class OldJudgement(Old):
    __tablename__ = "judgements"
    __table_args__ = (UniqueConstraint("annotator_id", "submission_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    submission_id: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    left: Mapped[str] = mapped_column(String(1))
    screen_choice: Mapped[str] = mapped_column(String(16))
    choice: Mapped[str] = mapped_column(String(16))
    reason_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    rewrite: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


# ----------------------------------------------------------------------------- helpers
def legacy_db(path: Path) -> tuple[str, dict[str, str]]:
    """A database as the first release left it, with data; returns (url, clear tokens)."""
    from onbrand.annotate.db import hash_token

    url = f"sqlite:///{path}"
    engine = create_engine(url)
    Old.metadata.create_all(engine)
    tokens = {
        "admin": "admin-token-" + "x" * 20,
        "alice": "alice-token-" + "a" * 20,
        "bob": "bob-token-" + "b" * 20,
    }
    with Session(engine) as s:
        s.add(OldAdmin(token_hash=hash_token(tokens["admin"])))
        p = OldProject(name="aurora", brand_id="aurora", brand_name="Aurora", reason_tags=["tone", "facts"])
        s.add(p)
        s.flush()
        anns = [
            OldAnnotator(project_id=p.id, name=n, token_hash=hash_token(tokens[n])) for n in ("alice", "bob")
        ]
        anns.append(OldAnnotator(project_id=p.id, name="gone", token_hash="0" * 64, active=False))
        s.add_all(anns)
        tasks = [
            OldTask(
                project_id=p.id,
                prompt=[{"role": "user", "content": f"question {i} é"}],
                candidate_a=f"yes {i}",
                candidate_b=f"no {i}",
                channel="chat" if i % 2 else None,
                source={"file": "pairs.jsonl", "line": i + 1},
                content_hash=f"{i:064d}",
            )
            for i in range(4)
        ]
        s.add_all(tasks)
        s.flush()
        for i, t in enumerate(tasks):
            for pos, a in enumerate(anns[:2]):
                asg = OldAssignment(task_id=t.id, annotator_id=a.id, left="ab"[(i + pos) % 2], position=i)
                s.add(asg)
                s.flush()
                if i < 3:
                    choice = "a" if pos == 0 or i == 0 else "b"
                    s.add(
                        OldJudgement(
                            assignment_id=asg.id,
                            submission_id=f"sub-{i}-{pos}-xxxx",
                            task_id=t.id,
                            annotator_id=a.id,
                            left=asg.left,
                            screen_choice="left",
                            choice=choice,
                            reason_tags=["tone"] if i == 1 else [],
                            rewrite="better" if i == 2 else None,
                        )
                    )
                    asg.done = True
        s.commit()
    engine.dispose()
    return url, tokens


def dump(url: str) -> dict[str, list[tuple]]:
    """Every row of the first release's tables, its own columns only, in id order."""
    engine = create_engine(url)
    out = {}
    with engine.connect() as c:
        for table in LEGACY_TABLES:
            cols = ", ".join(f'"{col.name}"' for col in Old.metadata.tables[table].columns)
            out[table] = [tuple(r) for r in c.execute(text(f"SELECT {cols} FROM {table} ORDER BY id"))]
    engine.dispose()
    return out


def schema_diffs(url: str, metadata) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(url)
    with engine.connect() as c:
        diffs = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
    engine.dispose()
    return diffs


def onbrand(*argv: str) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter (``python -P``, as every onbrand subprocess runs)."""
    cmd = [sys.executable, "-P", "-m", "onbrand.cli", *argv]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONSAFEPATH": "1"}
    )


# ----------------------------------------------------------------------------- tests
def test_head_constant_matches_the_scripts():
    from onbrand.annotate.db import SCHEMA_HEAD
    from onbrand.annotate.migrations import head

    assert head() == SCHEMA_HEAD


def test_revision_0001_is_the_first_release_schema(tmp_path):
    """Running only 0001 gives exactly what the first release's create_all gave."""
    from alembic import command

    from onbrand.annotate.migrations import alembic_config

    url = f"sqlite:///{tmp_path / 'r1.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        command.upgrade(alembic_config(c), "0001")
    engine.dispose()
    assert schema_diffs(url, Old.metadata) == []


def test_legacy_database_is_refused_then_migrated_intact(tmp_path):
    from onbrand.annotate import access
    from onbrand.annotate.db import Base, open_db

    url, tokens = legacy_db(tmp_path / "old.db")
    before = dump(url)
    assert sum(map(len, before.values())) == 1 + 1 + 3 + 4 + 8 + 6

    with pytest.raises(ValueError) as e:
        open_db(url)
    msg = str(e.value)
    assert msg == (
        f"{url}: database schema is at revision 0001, this onbrand needs 0002: "
        f"run 'onbrand annotate migrate --db {url}' (or start the server with --migrate)"
    )
    refused = onbrand("annotate", "stats", "--db", url, "--project", "aurora")
    assert refused.returncode == 2 and "revision 0001" in refused.stderr and "Traceback" not in refused.stderr
    assert dump(url) == before  # refusing changed nothing

    done = onbrand("annotate", "migrate", "--db", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{url}: schema migrated 0001 -> 0002"
    again = onbrand("annotate", "migrate", "--db", url)
    assert again.returncode == 0 and again.stdout.strip() == f"{url}: schema already at revision 0002"

    assert dump(url) == before  # every row of every old table, column for column
    assert schema_diffs(url, Base.metadata) == []
    engine = create_engine(url)
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0002"]
        assert c.execute(text("SELECT DISTINCT role FROM annotators")).scalars().all() == ["annotator"]
        assert c.execute(text("SELECT name, expires_at, revoked_at FROM admins")).all() == [
            ("admin", None, None)
        ]
        assert c.execute(text("SELECT DISTINCT gold_rate FROM projects")).scalars().all() == [0.0]
        assert c.execute(text("SELECT count(*) FROM tasks WHERE gold IS NOT NULL")).scalar() == 0
        assert c.execute(text("SELECT count(*) FROM annotators WHERE expires_at IS NOT NULL")).scalar() == 0
    engine.dispose()

    with open_db(url)() as s:  # the old tokens still work, with their old roles
        assert access.authenticate(s, tokens["admin"]).role == "admin"
        alice = access.authenticate(s, tokens["alice"])
        assert (alice.role, alice.name, alice.project_id) == ("annotator", "alice", 1)
        assert access.authenticate(s, "0" * 20) is None


def test_unknown_revision_is_refused(tmp_path):
    from onbrand.annotate.db import open_db

    url = f"sqlite:///{tmp_path / 'new.db'}"
    open_db(url)
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(ValueError, match="revision 0099, which this onbrand does not know"):
        open_db(url, migrate=True)


def test_fresh_database_is_created_at_head_without_drift(tmp_path):
    from onbrand.annotate.db import Base, open_db

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    open_db(url)
    assert schema_diffs(url, Base.metadata) == []
    engine = create_engine(url)
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    engine.dispose()


def test_downgrade_to_0001_gives_the_first_release_schema(tmp_path):
    from alembic import command

    from onbrand.annotate.db import open_db
    from onbrand.annotate.migrations import alembic_config

    url = f"sqlite:///{tmp_path / 'down.db'}"
    open_db(url)
    engine = create_engine(url)
    with engine.begin() as c:
        command.downgrade(alembic_config(c), "0001")
    assert set(inspect(engine).get_table_names()) == {*LEGACY_TABLES, "alembic_version"}
    engine.dispose()
    assert schema_diffs(url, Old.metadata) == []


STARTER = """
import os, sys, time
ready, go, url = sys.argv[1], sys.argv[2], sys.argv[3]
from onbrand.annotate.db import open_db   # imports done before the start signal
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
with open_db(url)() as s:
    pass
"""


def test_twenty_processes_open_one_fresh_file_at_once(tmp_path):
    """Without a schema lock, create_all raced: 'table ... already exists' in some processes."""
    from onbrand.annotate.db import Base

    url, go = f"sqlite:///{tmp_path / 'race.db'}", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", STARTER, str(tmp_path / f"ready{i}"), str(go), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    try:
        while not all((tmp_path / f"ready{i}").exists() for i in range(20)):
            assert all(p.poll() is None for p in procs), [
                p.communicate() for p in procs if p.poll() is not None
            ]
            time.sleep(0.05)
        go.touch()  # release them together
        results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [err for rc, err in results if rc != 0]
    assert failed == []
    assert schema_diffs(url, Base.metadata) == []
    engine = create_engine(url)
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0002"]
    engine.dispose()
