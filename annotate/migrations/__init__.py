"""Schema versions of the annotation database (Alembic), applied from Python: users need no
``alembic.ini``; the scripts ship inside the package (``env.py``, ``versions/``).

:func:`ensure_schema` is what :func:`onbrand.annotate.db.open_db` runs. An empty database is brought
to the head revision; one at an older revision is refused with a one-line :class:`SchemaError` unless
``migrate`` is set. A database made by the first release (its tables, no ``alembic_version``) counts
as revision ``0001``.

Concurrency: many processes may open one fresh database at the same moment (a server's workers, a
load test). Schema changes are serialized: an OS file lock on ``<db file>.lock`` for SQLite, a
transaction-scoped ``pg_advisory_xact_lock`` for PostgreSQL. Whoever gets the lock second re-reads
the revision and finds nothing to do. A database already at head takes no lock at all.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import Engine

HERE = Path(__file__).resolve().parent
LEGACY = "0001"  # what a database created before migrations existed is
LEGACY_TABLES = frozenset({"admins", "projects", "annotators", "tasks", "assignments", "judgements"})
PG_LOCK_KEY = 0x6F6E62726E64  # "onbrnd": one advisory lock for this schema


class SchemaError(ValueError):
    """The database schema is not the one this onbrand needs (one line, no secrets)."""


def alembic_config(connection: Connection | None = None):
    """An Alembic config pointing at the packaged scripts (and, optionally, an open connection)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The revision the models in :mod:`onbrand.annotate.db` describe."""
    return _scripts().get_current_head()


def shown_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def current_revision(conn: Connection) -> str | None:
    """The database's revision: ``alembic_version``'s; :data:`LEGACY` for a first-release database
    (its tables, no version table); None for one without any of our tables."""
    from alembic.migration import MigrationContext

    rev = MigrationContext.configure(conn).get_current_revision()
    if rev is not None:
        return rev
    tables = set(inspect(conn).get_table_names())
    if not tables & LEGACY_TABLES:
        return None
    missing = sorted(LEGACY_TABLES - tables)
    if missing:
        raise SchemaError(
            f"{shown_url(conn.engine)}: has annotation tables but lacks {', '.join(missing)} "
            "and has no alembic_version: not a database onbrand created"
        )
    return LEGACY


def _check(engine: Engine, rev: str | None, want: str, migrate: bool) -> None:
    """Refuse an unknown revision always, and an old one unless ``migrate``."""
    url = shown_url(engine)
    if rev is None or rev == want:
        return
    known = {s.revision for s in _scripts().walk_revisions()}
    if rev not in known:
        raise SchemaError(
            f"{url}: database schema is at revision {rev}, which this onbrand does not know "
            f"(it needs {want}; was the database written by a newer release?)"
        )
    if not migrate:
        raise SchemaError(
            f"{url}: database schema is at revision {rev}, this onbrand needs {want}: "
            f"run 'onbrand annotate migrate --db {url}' (or start the server with --migrate)"
        )


@contextlib.contextmanager
def schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the schema lock (see the module docstring)."""
    db = engine.url.database
    if engine.dialect.name == "sqlite" and db and db != ":memory:":
        with _file_lock(db), _sqlite_engine(engine) as mig, mig.begin() as conn:
            yield conn
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        yield conn


@contextlib.contextmanager
def _file_lock(db_path: str) -> Iterator[None]:
    import fcntl

    fd = os.open(f"{db_path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def _sqlite_engine(engine: Engine) -> Iterator[Engine]:
    """A private engine on the same file whose transactions include DDL.

    The sqlite3 driver neither BEGINs before CREATE/ALTER nor lets SQLAlchemy do it, so a migration
    killed half-way would leave half a schema; this is SQLAlchemy's documented recipe that makes the
    driver transaction-neutral and emits BEGIN itself (only for this engine: the app's is untouched).
    """
    from onbrand.annotate.db import make_engine

    mig = make_engine(engine.url.render_as_string(hide_password=False))

    @event.listens_for(mig, "connect")
    def _autocommit_driver(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(mig, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        yield mig
    finally:
        mig.dispose()


def ensure_schema(engine: Engine, migrate: bool = False) -> tuple[str | None, str]:
    """Bring ``engine``'s database to head (see the module docstring); ``(from, to)`` revisions.

    ``from`` is None for a database that had none of our tables.
    """
    from alembic import command

    want = head()
    with engine.connect() as conn:
        rev = current_revision(conn)
    if rev == want:
        return rev, want
    # Not at head: decide only under the lock. Read without it, the version table and the table list
    # can come from two sides of another process's commit (PostgreSQL's READ COMMITTED gives each
    # statement its own snapshot), which looks like a first-release database mid-race.
    with schema_lock(engine) as conn:
        rev = current_revision(conn)  # another process may have done it while we waited
        if rev == want:
            return rev, want
        _check(engine, rev, want, migrate)
        cfg = alembic_config(conn)
        if rev == LEGACY and not inspect(conn).has_table("alembic_version"):
            command.stamp(cfg, LEGACY)
        command.upgrade(cfg, "head")
    return rev, want
