"""Load + crash test of the annotation service (loopback only, bounded in count and time).

    python scripts/load_test_annotate.py --clients 24 --submissions 2400 --crash-submissions 1200

1. Starts ``onbrand annotate serve`` on 127.0.0.1 (SQLite WAL) with one annotator per client.
2. Phase 1: ``--clients`` concurrent clients each loop GET /api/next -> POST /api/judgements until
   ``--submissions`` are acknowledged; every 10th submission is POSTed twice (a retry) and must come
   back as the same judgement. Checks: judgements in the DB == acknowledged submissions (zero lost,
   zero duplicated). Reports submissions/s and latency percentiles.
3. Phase 2: load continues; after ``--kill-after`` acknowledged submissions the server gets
   SIGKILL mid-load. The DB is opened cold: every acknowledged submission must be there. The
   server restarts, clients re-send their in-flight (unacknowledged) submissions with the same
   submission id, load continues to ``--crash-submissions``; final check as in phase 1.

Writes ``bench/results/annotate_load.json`` and ``annotate_load.md``. Exit status 1 on any loss or
duplicate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from importlib import metadata
from pathlib import Path

import httpx
from sqlalchemy import func, select

from onbrand.annotate import service
from onbrand.annotate.db import Judgement, open_db
from onbrand.artifacts import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only, by design


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``onbrand annotate serve`` as a child process we can SIGKILL and restart."""

    def __init__(self, db: str, brand: str, port: int, log: Path):
        self.cmd = [sys.executable, "-P", "-m", "onbrand.cli", "annotate", "serve", "--db", db]
        self.cmd += ["--brand", brand, "--host", HOST, "--port", str(port), "--log-level", "warning"]
        self.url, self.log, self.proc = f"http://{HOST}:{port}", log, None

    def start(self, timeout: float = 60) -> float:
        t0 = time.perf_counter()
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/login", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not answer within {timeout}s")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Load:
    """Shared state of the client threads."""

    def __init__(self, url: str, tokens: list[str], deadline: float):
        self.url, self.tokens, self.deadline = url, tokens, deadline
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # submission_id -> judgement id
        self.latencies: list[float] = []
        self.next_latencies: list[float] = []
        self.retry_mismatch = 0
        self.errors: list[str] = []
        self.target = 0
        self.up = threading.Event()
        self.up.set()
        self.stop = threading.Event()
        self.connection_errors = 0
        self.resent = 0  # in-flight submissions re-sent after the restart
        self.resent_already_stored = 0  # ... that had committed although their 200 was lost

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def client(self, i: int) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[i]}"}
        pending: dict | None = None  # a submission sent but not acknowledged (server died)
        failed = False  # the last POST of `pending` got no answer
        n = 0
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as c:
            while not self.stop.is_set() and time.time() < self.deadline:
                self.up.wait(timeout=1)
                if not self.up.is_set():
                    continue
                try:
                    if pending is None:
                        if self.count() >= self.target:
                            time.sleep(0.02)
                            continue
                        t0 = time.perf_counter()
                        r = c.get("/api/next")
                        self.next_latencies.append(time.perf_counter() - t0)
                        if r.status_code == 204:
                            return
                        item = r.json()
                        choice = ("left", "right", "tie", "both_bad")[(item["assignment_id"] * 7 + i) % 4]
                        body = {
                            "assignment_id": item["assignment_id"],
                            "choice": choice,
                            "reason_tags": ["tone"],
                        }
                        pending = {**body, "submission_id": uuid.uuid4().hex}
                    t0 = time.perf_counter()
                    r = c.post("/api/judgements", json=pending)
                    dt = time.perf_counter() - t0
                    if r.status_code != 200:
                        self.errors.append(f"client {i}: {r.status_code} {r.text[:200]}")
                        pending = None
                        continue
                    jid = r.json()["judgement_id"]
                    if failed:
                        self.resent += 1
                        self.resent_already_stored += not r.json()["created"]
                        failed = False
                    n += 1
                    if n % 10 == 0:  # a client retry of an acknowledged POST: same judgement back
                        again = c.post("/api/judgements", json=pending).json()
                        if again["judgement_id"] != jid or again["created"]:
                            self.retry_mismatch += 1
                    with self.lock:
                        self.acked[pending["submission_id"]] = jid
                        self.latencies.append(dt)
                    pending = None
                except (httpx.TransportError, json.JSONDecodeError):
                    # Server down (killed): keep `pending` and re-send it, same id, after restart.
                    self.connection_errors += 1
                    failed = pending is not None
                    time.sleep(0.2)


def run_phase(load: Load, target: int, clients: int, kill_at: int | None = None, on_kill=None) -> float:
    load.target = target
    threads = [threading.Thread(target=load.client, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if kill_at is not None and load.count() >= kill_at:
            on_kill()
            kill_at = None
        if load.count() >= target or time.time() > load.deadline:
            break
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    load.stop.set()
    for t in threads:
        t.join(timeout=40)
    load.stop.clear()
    return wall


def db_check(db_url: str, acked: dict[str, int]) -> dict:
    """Open the database cold and compare it with what clients saw acknowledged."""
    with open_db(db_url)() as s:
        stored = dict(s.execute(select(Judgement.submission_id, Judgement.id)).all())
        per_item = s.scalars(select(func.count(Judgement.id)).group_by(Judgement.assignment_id)).all()
        per_assignment_max = max(per_item, default=0)
    lost = [k for k in acked if k not in stored]
    wrong_id = [k for k in acked if k in stored and stored[k] != acked[k]]
    return {
        "acknowledged": len(acked),
        "in_db": len(stored),
        "lost": len(lost),
        "wrong_judgement_id": len(wrong_id),
        "unacknowledged_in_db": len(set(stored) - set(acked)),
        "max_judgements_per_item": per_assignment_max,
    }


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1000 if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=24)
    p.add_argument("--submissions", type=int, default=2400, help="phase 1 acknowledged submissions")
    p.add_argument("--crash-submissions", type=int, default=1200, help="phase 2 (kill -9 during it)")
    p.add_argument(
        "--kill-after", type=int, default=400, help="phase-2 acknowledged submissions before SIGKILL"
    )
    p.add_argument("--max-seconds", type=float, default=600)
    p.add_argument("--brand", default=str(REPO / "configs" / "brands" / "aurora.yaml"))
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    if args.clients < 1 or args.submissions < 1 or args.kill_after >= args.crash_submissions:
        raise SystemExit("need clients >= 1, submissions >= 1 and kill-after < crash-submissions")
    work = Path(tempfile.mkdtemp(prefix="onbrand-load-"))
    db_url = f"sqlite:///{work / 'load.db'}"
    tokens = make_db(db_url, args.brand, args.clients, args.submissions + args.crash_submissions)
    server = Server(db_url, args.brand, free_port(), work / "server.log")
    result: dict = {"command": " ".join(["python", "scripts/load_test_annotate.py", *(argv or sys.argv[1:])])}
    try:
        result["startup_s"] = round(server.start(), 2)
        load = Load(server.url, tokens, time.time() + args.max_seconds)
        wall = run_phase(load, args.submissions, args.clients)
        phase1 = {
            "submissions": load.count(),
            "wall_s": round(wall, 2),
            "submissions_per_s": round(load.count() / wall, 1),
            "post_latency_ms": {
                q: round(pct(load.latencies, v), 1) for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
            },
            "next_latency_ms": {
                q: round(pct(load.next_latencies, v), 1) for q, v in (("p50", 0.5), ("p95", 0.95))
            },
            "retries_checked": load.count() // 10,
            "retry_mismatches": load.retry_mismatch,
            "errors": load.errors[:5],
            "db": db_check(db_url, load.acked),
        }
        result["phase1"] = phase1
        print(json.dumps(phase1), flush=True)
        result["phase2"] = crash_phase(load, server, db_url, args)
        print(json.dumps(result["phase2"]), flush=True)
    finally:
        server.stop()
    result["machine"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "fastapi": _version("fastapi"),
        "sqlalchemy": _version("sqlalchemy"),
        "uvicorn": _version("uvicorn"),
    }
    result["config"] = {k: _rel(v) for k, v in vars(args).items()}
    ok = verdict(result)
    result["ok"] = ok
    write_results(result, Path(args.out))
    return 0 if ok else 1


def crash_phase(load: Load, server: Server, db_url: str, args) -> dict:
    base = load.count()
    info: dict = {}

    def on_kill():
        load.up.clear()  # clients pause (and keep their in-flight submission for a retry)
        server.kill9()
        time.sleep(0.5)  # let responses already read be recorded
        with load.lock:
            acked_at_kill = dict(load.acked)
        info["acknowledged_at_kill"] = len(acked_at_kill)
        info["after_kill_db"] = db_check(db_url, acked_at_kill)
        info["restart_s"] = round(server.start(), 2)
        load.up.set()

    wall = run_phase(
        load, base + args.crash_submissions, args.clients, kill_at=base + args.kill_after, on_kill=on_kill
    )
    info.update(
        {
            "submissions": load.count() - base,
            "wall_s": round(wall, 2),
            "connection_errors_during_kill": load.connection_errors,
            "in_flight_resent": load.resent,
            "in_flight_already_stored": load.resent_already_stored,
            "retry_mismatches_total": load.retry_mismatch,
            "errors": load.errors[:5],
            "final_db": db_check(db_url, load.acked),
        }
    )
    return info


def make_db(db_url: str, brand: str, clients: int, needed: int) -> list[str]:
    """Project, one annotator per client, enough tasks (10% overlap) for ``needed`` submissions."""
    facts = service.brand_facts(brand)
    n_tasks = int(needed / 1.1 * 1.15) + clients * 4  # margin: no client runs dry before the target
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Load test question {i}: how bright does Dawn get?"}],
            "a": f"Dawn reaches 300 lux over 30 minutes (answer {i}).",
            "b": f"VERY BRIGHT!!! answer {i}",
            "channel": "product_question",
        }
        for i in range(n_tasks)
    ]
    with open_db(db_url)() as s:
        project = service.create_project(s, "load", facts, overlap=0.1, seed=0)
        tokens = [service.add_annotator(s, project, f"client{i:02d}")[1] for i in range(clients)]
        service.add_tasks(s, project, pairs)
        service.assign(s, project)
    return tokens


def verdict(r: dict) -> bool:
    p1, p2 = r["phase1"], r["phase2"]

    def clean(d):
        return (
            d["lost"] == 0
            and d["wrong_judgement_id"] == 0
            and d["unacknowledged_in_db"] == 0
            and (d["max_judgements_per_item"] or 0) <= 1
        )

    after_kill = p2["after_kill_db"]
    return (
        clean(p1["db"])
        and p1["retry_mismatches"] == 0
        and not p1["errors"]
        and after_kill["lost"] == 0
        and clean(p2["final_db"])
        and p2["retry_mismatches_total"] == 0
        and not p2["errors"]
        and p1["submissions"] >= r["config"]["submissions"]
    )


def _rel(value):
    """Paths inside the repository are recorded relative to it (results are shared)."""
    if isinstance(value, str) and value.startswith(str(REPO) + os.sep):
        return os.path.relpath(value, REPO)
    return value


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_results(r: dict, out: Path) -> None:
    p1, p2 = r["phase1"], r["phase2"]
    atomic_write_json(out / "annotate_load.json", r)
    k = p2["after_kill_db"]
    f = p2["final_db"]
    md = f"""## Annotation service: load and kill -9 test

{r["config"]["clients"]} concurrent annotator clients over loopback against one `onbrand annotate serve`
process (uvicorn, SQLite WAL, `synchronous=FULL`: a judgement is on disk before its 200), on
{r["machine"]["cpu_count"]} CPU cores shared by server and clients. Every 10th submission is re-POSTed
(a client retry) and must return the same judgement.

```
{r["command"]}
```

| phase | acknowledged | in DB | lost | extra (duplicated) | submissions/s | POST p50 ms | POST p95 ms | POST p99 ms |
|---|---|---|---|---|---|---|---|---|
| 1: load | {p1["db"]["acknowledged"]} | {p1["db"]["in_db"]} | {p1["db"]["lost"]} | {p1["db"]["unacknowledged_in_db"]} | {p1["submissions_per_s"]} | {p1["post_latency_ms"]["p50"]} | {p1["post_latency_ms"]["p95"]} | {p1["post_latency_ms"]["p99"]} |
| 2: right after kill -9 (cold DB) | {k["acknowledged"]} | {k["in_db"]} | {k["lost"]} | - | - | - | - | - |
| 2: end (restart + in-flight retries) | {f["acknowledged"]} | {f["in_db"]} | {f["lost"]} | {f["unacknowledged_in_db"]} | - | - | - | - |

In-flight submissions re-sent after the restart: {p2["in_flight_resent"]}, of which
{p2["in_flight_already_stored"]} had been committed before the kill (the retry returned the stored judgement).
Retried POSTs checked: {p1["retries_checked"]} in phase 1, mismatches {p2["retry_mismatches_total"]}; at most
{f["max_judgements_per_item"]} judgement per item. GET /api/next p95 {p1["next_latency_ms"]["p95"]} ms. Server
restart after the kill: {p2["restart_s"]} s. Rows "in DB" right after the kill may exceed the acknowledged count by
requests that committed but whose 200 never reached the client; the clients re-send those with the same
submission id after the restart and get the stored judgement back (final row: in DB == acknowledged).
Verdict: **{"pass" if r["ok"] else "FAIL"}**.
"""
    atomic_write_text(out / "annotate_load.md", md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
