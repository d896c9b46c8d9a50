"""Storage for the annotation service: SQLAlchemy models and the engine factory.

SQLite (WAL mode, ``synchronous=FULL``) is the embedded default; any SQLAlchemy URL works, e.g.
``postgresql+psycopg://user:pw@host/db``. Every acknowledged write is a committed transaction, so a
``kill -9`` of the server loses nothing that a client saw a 200 for.

Tables::

    admins         name, token_hash, expires_at, revoked_at   (admin endpoints; one row per admin)
    projects       name, brand card name/path/sha256, reason_tags, overlap, seed, gold_rate
    annotators     project, name, role (annotator|reviewer), token_hash, expires_at, revoked_at
                   (a project *membership*: tokens are per project and stored as sha256 only)
    tasks          project, prompt (messages), candidate_a, candidate_b, channel, source,
                   content_hash, gold (the known answer of a gold item, else NULL)
    assignments    task, annotator, left ('a'|'b': which candidate is shown on the left), position
    judgements     assignment (unique), submission_id (unique per annotator: idempotent retries), choice, ...
    adjudications  task (unique), reviewer, choice, note: a reviewer's verdict, which wins in export
    audit_log      at, actor, role, action, project, detail: append-only record of admin/reviewer acts

The schema is versioned with Alembic (``annotate/migrations``); ``SCHEMA_HEAD`` is the revision
these models describe.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import secrets
from typing import Any

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
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

SCHEMA_HEAD = "0002"  # the Alembic revision these models describe (annotate/migrations/versions)
CHOICES = ("a", "b", "tie", "both_bad")
ROLES = ("annotator", "reviewer")  # per-project member roles; admins live in their own table
SCREEN_CHOICES = ("left", "right", "tie", "both_bad")


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def new_token() -> str:
    """A fresh bearer token (256 bits of randomness)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens are random 256-bit secrets, so a plain sha256 is enough (no password stretching
    # needed) and lets the server look a token up by its hash in one indexed query.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Admin(Base):
    __tablename__ = "admins"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(
        String(200), default="admin", server_default="admin", unique=True, index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    expires_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    brand_id: Mapped[str] = mapped_column(String(200))  # the card's id: the records' "brand"
    brand_name: Mapped[str] = mapped_column(String(200))  # display name
    brand_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    brand_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    overlap: Mapped[float] = mapped_column(Float, default=0.1)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    # Fraction of each annotator's queue that is gold (known-answer) items, mixed in unannounced.
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Annotator(Base):
    __tablename__ = "annotators"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="annotator", server_default="annotator")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # False once revoked
    expires_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "content_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    prompt: Mapped[list[Any]] = mapped_column(JSON)  # [{"role", "content"}], ends with a user turn
    candidate_a: Mapped[str] = mapped_column(Text)
    candidate_b: Mapped[str] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # file/line or model/sampling
    content_hash: Mapped[str] = mapped_column(String(64))
    gold: Mapped[str | None] = mapped_column(String(16), nullable=True)  # known answer: a|b|tie|both_bad
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "annotator_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    left: Mapped[str] = mapped_column(String(1))  # which candidate ('a' or 'b') is shown on the left
    position: Mapped[int] = mapped_column(Integer)  # queue order for this annotator
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    done: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Judgement(Base):
    __tablename__ = "judgements"
    # A submission id is the client's idempotency key: unique per annotator (clients choose it).
    __table_args__ = (UniqueConstraint("annotator_id", "submission_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    submission_id: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    left: Mapped[str] = mapped_column(String(1))  # copy of the order shown, for the record
    screen_choice: Mapped[str] = mapped_column(String(16))  # left | right | tie | both_bad
    choice: Mapped[str] = mapped_column(String(16))  # a | b | tie | both_bad (order undone)
    reason_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    rewrite: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Adjudication(Base):
    """A reviewer's verdict on a task (typically one annotators disagreed on); wins in export."""

    __tablename__ = "adjudications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), unique=True)
    # The reviewing member; NULL when an admin (who is no project member) gave the verdict.
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"), nullable=True, index=True)
    reviewer: Mapped[str] = mapped_column(String(200))  # name of the reviewer or admin, for the record
    choice: Mapped[str] = mapped_column(String(16))  # a | b | tie | both_bad
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    """Append-only: one row per admin or reviewer action (the service never updates or deletes)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))  # admin or member name; "cli" for local commands
    role: Mapped[str] = mapped_column(String(16))  # admin | reviewer | cli
    action: Mapped[str] = mapped_column(String(64))  # e.g. project.create, member.revoke
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), nullable=True, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # never holds a token


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; FULL: a commit is on disk before we answer 200.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL + FULL sync + a busy timeout for concurrent writers."""
    if "://" not in url:
        raise ValueError(f"--db {url!r}: expected a SQLAlchemy URL such as sqlite:///annotations.db")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def open_db(url: str, migrate: bool = False) -> sessionmaker:
    """A session factory over ``url``, whose schema is at :data:`SCHEMA_HEAD`.

    An empty database is created at head (through the Alembic migrations, never ``create_all``, so
    it carries its revision); one at an older revision is refused with a one-line ``ValueError``
    that says how to migrate, unless ``migrate`` is set. Safe to call from many processes at once.
    """
    from onbrand.annotate.migrations import ensure_schema

    engine = make_engine(url)
    try:
        ensure_schema(engine, migrate=migrate)
    except BaseException:
        engine.dispose()
        raise
    return sessionmaker(bind=engine, expire_on_commit=False)


def migrate(url: str) -> tuple[str | None, str]:
    """Upgrade ``url``'s schema to head; ``(from, to)`` revisions (equal when there was nothing to do)."""
    from onbrand.annotate.migrations import ensure_schema

    engine = make_engine(url)
    try:
        return ensure_schema(engine, migrate=True)
    finally:
        engine.dispose()
