"""The same service on PostgreSQL: a throwaway cluster (initdb + pg_ctl on 127.0.0.1, trust auth)
when the server binaries and psycopg are installed; skipped with a reason otherwise."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

import pytest

pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
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
pytestmark = pytest.mark.skipif(
    INITDB is None, reason="PostgreSQL server binaries (initdb, pg_ctl) not installed"
)


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; use the distribution's 'postgres' user then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="module")
def pg_url():
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
