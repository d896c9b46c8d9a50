"""Storage for the annotation service: SQLAlchemy models and the engine factory.

SQLite (WAL mode, ``synchronous=FULL``) is the embedded default; any SQLAlchemy URL works, e.g.
``postgresql+psycopg://user:pw@host/db``. Every acknowledged write is a committed transaction, so a
``kill -9`` of the server loses nothing that a client saw a 200 for.

Tables::

    admins       token_hash                              (admin endpoints)
    projects     name, brand card name/path/sha256, reason_tags, overlap, seed
    annotators   project, name, token_hash               (tokens are stored as sha256 only)
    tasks        project, prompt (messages), candidate_a, candidate_b, channel, source, content_hash
    assignments  task, annotator, left ('a'|'b': which candidate is shown on the left), position
    judgements   assignment (unique), submission_id (unique per annotator: idempotent retries), choice, ...
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

CHOICES = ("a", "b", "tie", "both_bad")
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
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
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
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Annotator(Base):
    __tablename__ = "annotators"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
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


def open_db(url: str) -> sessionmaker:
    """Create tables if missing and return a session factory."""
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    return sessionmaker(bind=engine, expire_on_commit=False)
