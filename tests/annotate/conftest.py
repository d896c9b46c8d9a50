"""Fixtures for the annotation service: a database with a project, two annotators and tasks."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BRAND = REPO / "configs" / "brands" / "aurora.yaml"


def make_pairs(n: int, prefix: str = "q") -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"{prefix} {i}: does the Dawn lamp help me wake up?"}],
            "a": f"Yes, answer {i} in a warm and precise voice.",
            "b": f"BUY NOW!!! answer {i}",
            "channel": "product_question",
            "source": {"file": "pairs.jsonl", "line": i + 1},
        }
        for i in range(n)
    ]


@dataclass
class Env:
    db_url: str
    client: object
    admin: str
    tokens: dict  # annotator name -> token
    project: str
    sessions: object
    brand: Path = BRAND

    def auth(self, who: str) -> dict:
        token = self.admin if who == "admin" else self.tokens[who]
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def pairs():
    return make_pairs


@pytest.fixture
def brand_facts():
    from onbrand.annotate.service import brand_facts

    return brand_facts(BRAND)


@pytest.fixture
def env(tmp_path, brand_facts):
    """App over a fresh SQLite file: project 'aurora', annotators alice + bob, 6 pairs, 50% overlap."""
    from fastapi.testclient import TestClient

    from onbrand.annotate import service
    from onbrand.annotate.app import create_app
    from onbrand.annotate.db import open_db

    url = f"sqlite:///{tmp_path / 'ann.db'}"
    app = create_app(url, [brand_facts], max_body=64 * 1024)
    sessions = open_db(url)
    with sessions() as s:
        admin = service.set_admin_token(s)
        project = service.get_project(s, "aurora")
        tokens = {name: service.add_annotator(s, project, name)[1] for name in ("alice", "bob")}
        service.add_tasks(s, project, make_pairs(6))
        service.assign(s, project, overlap=0.5, seed=1)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield Env(url, client, admin, tokens, "aurora", sessions)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serve(app, **uvicorn_kw):
    """A real uvicorn server for ``app`` on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=_free_port(), **{"log_level": "warning", **uvicorn_kw}
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def live_server():
    """``with live_server(app, **uvicorn_options) as base_url: ...``: the app on a real uvicorn."""
    return _serve
