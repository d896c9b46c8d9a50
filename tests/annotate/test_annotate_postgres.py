"""The same service on PostgreSQL: a throwaway cluster (initdb + pg_ctl on 127.0.0.1, trust auth)
when the server binaries and psycopg are installed. Elsewhere skipped with a reason; under CI=true
a missing PostgreSQL fails these tests instead (CI installs it: a skip there would hide a break)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid

import pytest

INITDB = shutil.which("initdb") or next(
    (
        p
        for p in (
            "/usr/lib/postgresql/17/bin/initdb",
            "/usr/lib/postgresql/16/bin/initdb",
            "/usr/lib/postgresql/15/bin/initdb",
        )
        if os.path.exists(p)
    ),
    None,
)
if importlib.util.find_spec("psycopg") is None:
    MISSING = "psycopg not installed (pip install 'psycopg[binary]')"
elif INITDB is None:
    MISSING = "PostgreSQL server binaries (initdb, pg_ctl) not installed"
else:
    MISSING = None
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=MISSING or "")


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; use the distribution's 'postgres' user then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="module")
def pg_url():
    if MISSING is not None:  # only reached under CI=true (skipped otherwise)
        pytest.fail(f"CI=true but the PostgreSQL tests cannot run: {MISSING}", pytrace=False)
    bindir = os.path.dirname(INITDB)
    root = tempfile.mkdtemp(prefix="onbrand-pg-")
    data = os.path.join(root, "data")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run(_as_postgres([INITDB, "-D", data, "-U", "onbrand", "--auth=trust", "-E", "UTF8"]), **run)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=on"
    pg_ctl = os.path.join(bindir, "pg_ctl")
    subprocess.run(
        _as_postgres([pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(root, "log"), "-w", "start"]), **run
    )
    try:
        yield f"postgresql+psycopg://onbrand@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", data, "-m", "immediate", "stop"]), capture_output=True, timeout=60
        )
        shutil.rmtree(root, ignore_errors=True)


def test_service_on_postgresql(pg_url, brand_facts, pairs):
    from fastapi.testclient import TestClient

    from onbrand.annotate import service
    from onbrand.annotate.app import create_app
    from onbrand.annotate.db import open_db
    from onbrand.annotate.pooling import export_records

    app = create_app(pg_url, [brand_facts])
    sessions = open_db(pg_url)
    with sessions() as s:
        project = service.get_project(s, "aurora")
        tokens = [service.add_annotator(s, project, n)[1] for n in ("pg1", "pg2")]
        assert service.add_tasks(s, project, pairs(4)) == {"added": 4, "duplicates": 0}
        service.assign(s, project, overlap=0.5)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        for token in tokens:
            h = {"Authorization": f"Bearer {token}"}
            while (r := c.get("/api/next", headers=h)).status_code == 200:
                item = r.json()
                side = "left" if item["left"].startswith("Yes") else "right"
                body = {
                    "assignment_id": item["assignment_id"],
                    "choice": side,
                    "submission_id": f"pg-{item['assignment_id']:06d}",
                }
                first = c.post("/api/judgements", json=body, headers=h).json()
                again = c.post("/api/judgements", json=body, headers=h).json()
                assert (
                    first["created"]
                    and not again["created"]
                    and first["judgement_id"] == again["judgement_id"]
                )
        assert c.get("/api/next", headers={"Authorization": "Bearer wrong-token-123"}).status_code == 401
    with sessions() as s:
        records, counts = export_records(s, service.get_project(s, "aurora"))
        stats = service.progress(s, service.annotator_for_token(s, tokens[0]))
    assert counts["pairs"] == 4 and len(records) == 4 and stats[0] == stats[1] > 0
    assert all(r["chosen"][0]["content"].startswith("Yes") for r in records)


@pytest.fixture
def fresh_pg(pg_url):
    """An empty database of its own on the cluster (the module's 'postgres' one is shared)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield pg_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _diffs(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from onbrand.annotate.db import Base

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


OPEN = """
import os, sys, time
ready, go, url = sys.argv[1:4]
from onbrand.annotate.db import open_db
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
open_db(url)().close()
"""


def test_migrations_on_postgresql_fresh_and_concurrent(fresh_pg, tmp_path):
    """Four processes open one empty database at once: pg_advisory_xact_lock serializes the
    migration, the others find it done; the result is the models' schema exactly."""
    import time

    from sqlalchemy import create_engine, text

    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", OPEN, str(tmp_path / f"r{i}"), str(go), fresh_pg],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        while not all((tmp_path / f"r{i}").exists() for i in range(4)):
            assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
            time.sleep(0.05)
        go.touch()
        errors = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert _diffs(fresh_pg) == []
    engine = create_engine(fresh_pg)
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0002"]
    engine.dispose()


def test_first_release_database_migrates_on_postgresql(fresh_pg):
    from alembic import command
    from sqlalchemy import create_engine, text

    from onbrand.annotate import access
    from onbrand.annotate.db import hash_token, migrate, open_db
    from onbrand.annotate.migrations import alembic_config

    engine = create_engine(fresh_pg)
    with engine.begin() as c:  # what the first release left: its tables, no alembic_version
        command.upgrade(alembic_config(c), "0001")
        c.execute(text("DROP TABLE alembic_version"))
        c.execute(
            text("INSERT INTO admins (token_hash, created_at) VALUES (:h, now())"),
            {"h": hash_token("a" * 24)},
        )
        c.execute(
            text(
                "INSERT INTO projects (name, brand_id, brand_name, reason_tags, overlap, seed, created_at) "
                "VALUES ('p', 'aurora', 'Aurora', '[]', 0.1, 0, now())"
            )
        )
        c.execute(
            text(
                "INSERT INTO annotators (project_id, name, token_hash, active, created_at) "
                "VALUES (1, 'ann', :h, true, now())"
            ),
            {"h": hash_token("b" * 24)},
        )
        before = c.execute(text("SELECT id, name, token_hash, active FROM annotators")).all()
    with pytest.raises(
        ValueError, match="at revision 0001, this onbrand needs 0002: run 'onbrand annotate migrate"
    ):
        open_db(fresh_pg)
    assert migrate(fresh_pg) == ("0001", "0002")
    assert migrate(fresh_pg) == ("0002", "0002")
    with engine.connect() as c:
        assert c.execute(text("SELECT id, name, token_hash, active FROM annotators")).all() == before
        assert c.execute(text("SELECT role FROM annotators")).scalar() == "annotator"
        assert c.execute(text("SELECT gold_rate FROM projects")).scalar() == 0
    engine.dispose()
    assert _diffs(fresh_pg) == []
    with open_db(fresh_pg)() as s:
        assert access.authenticate(s, "a" * 24).name == "admin"
        assert access.authenticate(s, "b" * 24).role == "annotator"
