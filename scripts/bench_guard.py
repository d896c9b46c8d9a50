"""Latency that ``onbrand guard`` adds over calling the upstream directly, and the cost of the
conversation log's fsync policies. Not a test: writes bench/results/guard.json and guard.md.

    python scripts/bench_guard.py                     # the full matrix (a few minutes on 2 CPUs)
    python scripts/bench_guard.py --quick             # fewer requests, to try it out

Set-up, all on 127.0.0.1: a fast stub upstream (raw ASGI under uvicorn + uvloop/httptools, a fixed
on-brand answer, 20 SSE chunks when streaming; a real ``vllm serve`` on 2 CPU cores takes seconds
per answer, which would hide the overhead) in its own process; the guard (``onbrand guard``,
configs/guard/demo.yaml, rules-only checks, log with redaction and fsync=interval) in its own
process; the load generator (httpx, one asyncio loop, ``c`` requests in flight) in this one. For
each mode (non-streaming, streaming read to the end) and concurrency c in 1, 16, 64, the direct
and the guarded runs alternate (``--rounds``) and their samples are pooled; "added" is the guarded
percentile minus the direct one. The guard's own time per request (``latency_ms - upstream_ms`` of
its log records) is reported too. Targets (issue 18): added p50 <= 5 ms, p95 <= 20 ms at c=16.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ANSWER = (
    "The Dawn lamp brightens slowly over 30 minutes before your alarm, from a soft amber to daylight white."
)
CONCURRENCY = (1, 16, 64)
TARGET = {"c": 16, "p50_ms": 5.0, "p95_ms": 20.0}


# ----------------------------------------------------------------------------- the stub upstream
def _stub_payloads() -> tuple[bytes, list[bytes]]:
    full = {"id": "b", "object": "chat.completion", "created": 0, "model": "stub",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ANSWER}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 20, "total_tokens": 40}}  # fmt: skip
    words = ANSWER.split(" ")
    step = max(1, len(words) // 20)
    pieces = [" ".join(words[i : i + step]) + " " for i in range(0, len(words), step)]
    chunks = [b"data: " + json.dumps({"id": "b", "object": "chat.completion.chunk", "created": 0, "model": "stub",
                                      "choices": [{"index": 0, "delta": {"content": p}}]}).encode() + b"\n\n"
              for p in pieces]  # fmt: skip
    return json.dumps(full).encode(), [*chunks, b"data: [DONE]\n\n"]


async def stub_app(scope, receive, send) -> None:
    """A minimal OpenAI-compatible upstream: the same answer to every request, at once."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    body, more = b"", True
    while more:
        msg = await receive()
        body, more = body + msg.get("body", b""), msg.get("more_body", False)
    full, chunks = STUB
    if b'"stream":true' in body.replace(b" ", b""):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for c in chunks:
            await send({"type": "http.response.body", "body": c, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(full)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": full})


STUB = _stub_payloads()


def serve_stub(port: int) -> None:
    import uvicorn

    uvicorn.run(stub_app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")  # fmt: skip


# ----------------------------------------------------------------------------- processes
def _wait(url: str, proc: subprocess.Popen, what: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


def start_processes(log_dir: Path) -> tuple[list[subprocess.Popen], str, str]:
    from onbrand.engines.server import free_port

    up_port, guard_port = free_port(), free_port()
    stub = subprocess.Popen([sys.executable, "-P", __file__, "--serve-stub", str(up_port)])
    guard = subprocess.Popen([sys.executable, "-P", "-m", "onbrand.cli", "guard", "--config",
                              str(REPO / "configs/guard/demo.yaml"), f"upstream=http://127.0.0.1:{up_port}/v1",
                              f"port={guard_port}", f"log.dir={log_dir}", f"brand={REPO / 'configs/brands/aurora.yaml'}"],
                             stdout=subprocess.DEVNULL)  # fmt: skip
    direct, guarded = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{guard_port}"
    _wait(direct + "/v1/models", stub, "stub upstream")
    _wait(guarded + "/guard/health", guard, "onbrand guard")
    return [stub, guard], direct, guarded


# ----------------------------------------------------------------------------- load
async def _run(
    url: str, stream: bool, c: int, n: int, tag: str
) -> tuple[list[float], list[float], list[str]]:
    """``n`` requests with ``c`` in flight: (total ms, first-byte ms) per request, and the failures."""
    import httpx

    body = {"model": tag, "stream": stream, "max_tokens": 64,
            "messages": [{"role": "user", "content": "How does the Dawn lamp wake me up?"}]}  # fmt: skip
    headers = {"Authorization": "Bearer bench-key", "X-Onbrand-Channel": "product_question"}
    total, first, errors = [], [], []
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for _ in todo:
                t0 = time.perf_counter()
                try:
                    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                        t1 = None
                        async for _chunk in r.aiter_raw():
                            t1 = t1 or time.perf_counter()
                except httpx.HTTPError as e:  # counted and reported, not timed
                    errors.append(type(e).__name__)
                    continue
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}")
                    continue
                t2 = time.perf_counter()
                total.append((t2 - t0) * 1000)
                first.append(((t1 or t2) - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(c)))
    return total, first, errors


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def _cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def measure(direct: str, guarded: str, guard_pid: int, n_for: dict[int, int], rounds: int) -> list[dict]:
    """Every cell: direct and guarded runs alternating; the guard process's CPU time per request."""
    rows = []
    for stream in (False, True):
        for c in CONCURRENCY:
            samples = {"direct": ([], []), "guard": ([], [])}
            errors: dict[str, list[str]] = {"direct": [], "guard": []}
            cpu, wall = 0.0, 0.0
            for _round in range(rounds):
                for name, url in (("direct", direct), ("guard", guarded)):
                    tag = f"bench-{'stream' if stream else 'plain'}-{c}"
                    asyncio.run(_run(url, stream, c, max(10, c * 2), tag + "-warmup"))
                    cpu0, t0 = _cpu_s(guard_pid), time.perf_counter()
                    total, first, failed = asyncio.run(_run(url, stream, c, n_for[c], tag))
                    errors[name] += failed
                    if name == "guard":
                        cpu, wall = cpu + _cpu_s(guard_pid) - cpu0, wall + time.perf_counter() - t0
                    samples[name][0].extend(total)
                    samples[name][1].extend(first)
            rows.append(_row(stream, c, samples))
            n = len(samples["guard"][0])
            rows[-1]["guard_cpu_ms_per_request"] = round(cpu / n * 1000, 3)
            rows[-1]["guard_requests_per_s"] = round(n / wall, 1)
            rows[-1]["failed"] = {k: dict(Counter(v)) for k, v in errors.items()}
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _row(stream: bool, c: int, samples: dict) -> dict:
    d, g = samples["direct"], samples["guard"]
    row = {"mode": "stream" if stream else "non-stream", "concurrency": c, "n": len(g[0])}
    for q in (50, 95):
        row[f"direct_p{q}_ms"] = round(pct(d[0], q), 2)
        row[f"guard_p{q}_ms"] = round(pct(g[0], q), 2)
        row[f"added_p{q}_ms"] = round(pct(g[0], q) - pct(d[0], q), 2)
        if stream:
            row[f"added_first_byte_p{q}_ms"] = round(pct(g[1], q) - pct(d[1], q), 2)
    return row


def in_guard_times(log_dir: Path) -> dict[str, dict[str, float]]:
    """From the guard's own log: latency_ms - upstream_ms per run tag (p50/p95)."""
    from onbrand.serve.convlog import iter_records

    by: dict[str, list[float]] = {}
    for rec in iter_records(log_dir):
        if not rec["model"].endswith("-warmup"):
            by.setdefault(rec["model"], []).append(rec["latency_ms"] - rec["upstream_ms"])
    return {
        k: {"n": len(v), "p50_ms": round(pct(v, 50), 3), "p95_ms": round(pct(v, 95), 3)}
        for k, v in by.items()
    }


# ----------------------------------------------------------------------------- fsync policies
def fsync_costs(n: int) -> list[dict]:
    """Time of ``ConvLog.append`` (redaction + JSON + write) per fsync policy, in this process."""
    from onbrand.serve.convlog import SCHEMA_ID, ConvLog
    from onbrand.serve.policy import LogSection

    rec = {"schema": SCHEMA_ID, "id": "0" * 32, "ts": "2025-01-01T00:00:00.000000Z", "endpoint": "chat.completions",
           "model": "m", "export_id": None, "channel": "product_question",
           "messages": [{"role": "user", "content": "How does the Dawn lamp wake me up? I am jane@example.com"}],
           "response": ANSWER, "original_response": None, "latency_ms": 1.0, "upstream_ms": 1.0, "stream": False,
           "rules": [{"rule": f"r{i}", "kind": "banned_phrase", "passed": True, "detail": ""} for i in range(12)],
           "action": "pass", "attempts": 1, "status": 200, "redacted": False, "usage": None}  # fmt: skip
    rows = []
    for policy in ("never", "interval", "always"):
        with tempfile.TemporaryDirectory() as tmp:
            times = []
            with ConvLog(LogSection(dir=tmp, fsync=policy, fsync_interval_ms=1000)) as log:
                for _ in range(n):
                    r = dict(rec, messages=[dict(m) for m in rec["messages"]])
                    t0 = time.perf_counter()
                    log.append(r)
                    times.append((time.perf_counter() - t0) * 1e6)
        rows.append({"fsync": policy, "n": n, "p50_us": round(pct(times, 50), 1), "p95_us": round(pct(times, 95), 1),
                     "p99_us": round(pct(times, 99), 1), "mean_us": round(statistics.fmean(times), 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- report
def write_results(out: dict, cmd: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guard.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "## Guard: latency added over the upstream",
        "",
        f"{out['date']}, {out['machine']}; load average before/after: {out['load_before']} / {out['load_after']}. "
        "Upstream: a fast stub (fixed answer, no model) so the guard's own cost is visible; a real "
        "`vllm serve` on these CPUs takes seconds per answer. Guard: configs/guard/demo.yaml (rules-only "
        "checks, redaction on, fsync=interval). Stub, guard and load generator share the 2 cores. "
        "Added = guarded percentile minus direct percentile (pooled over alternating rounds); "
        "in-guard = `latency_ms - upstream_ms` from the guard's log.",
        "",
        "```",
        cmd,
        "```",
        "",
        "| mode | c | n | direct p50 / p95 ms | guarded p50 / p95 ms | added p50 ms | added p95 ms "
        "| in-guard p50 / p95 ms | guard CPU ms/request | guarded req/s |",
        "|---|---:|---:|---|---|---:|---:|---|---:|---:|",
    ]
    for r in out["rows"]:
        tag = f"bench-{'stream' if r['mode'] == 'stream' else 'plain'}-{r['concurrency']}"
        ig = out["in_guard"].get(tag, {})
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['n']} | {r['direct_p50_ms']} / {r['direct_p95_ms']} "
                     f"| {r['guard_p50_ms']} / {r['guard_p95_ms']} | {r['added_p50_ms']} | {r['added_p95_ms']} "
                     f"| {ig.get('p50_ms', '-')} / {ig.get('p95_ms', '-')} | {r['guard_cpu_ms_per_request']} "
                     f"| {r['guard_requests_per_s']} |")  # fmt: skip
    failed = [
        f"{r['mode']} c={r['concurrency']} {k}: {v}" for r in out["rows"] for k, v in r["failed"].items() if v
    ]
    lines += ["", f"Failed requests (not timed): {'; '.join(failed) if failed else 'none'}."]
    lines += ["", "Targets at c=16 (added p50 <= 5 ms, p95 <= 20 ms):", ""]
    for v in out["verdicts"]:
        lines.append(f"- {v['mode']}: p50 {v['added_p50_ms']} ms ({_verdict(v['added_p50_ms'], v['p50_met'])}), "
                     f"p95 {v['added_p95_ms']} ms ({_verdict(v['added_p95_ms'], v['p95_met'])})")  # fmt: skip
    lines += ["", "Reading: the guard's own work per request (checks, record, log write: the in-guard column) is "
              "well under a millisecond for non-streamed answers; the added time is the proxy hop (uvicorn in, "
              "httpx out: the guard process spends the CPU ms/request column on each request) and, from c=16 "
              "on, queueing: load generator, stub and guard share 2 cores with other jobs, so each request waits "
              "for the ones ahead of it. Not measured here: a guard on cores of its own."]  # fmt: skip
    lines += ["", "Conversation log, time of one `append` (redaction + JSON + write, and fsync per policy):", "",
              "| fsync | n | p50 µs | p95 µs | p99 µs | mean µs |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for f in out["fsync"]:
        lines.append(
            f"| {f['fsync']} | {f['n']} | {f['p50_us']} | {f['p95_us']} | {f['p99_us']} | {f['mean_us']} |"
        )
    (RESULTS / "guard.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'guard.json'} and guard.md")


def _verdict(added: float, met: bool) -> str:
    if added < 0:  # the guarded path cannot be faster: run-to-run noise is larger than the overhead
        return "inconclusive: negative, noise larger than the overhead"
    return "met" if met else "MISSED"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer requests (a try-out, not for the docs)")
    p.add_argument("--rounds", type=int, default=2, help="alternating direct/guarded rounds per cell")
    p.add_argument("--fsync-n", type=int, default=3000, help="appends per fsync policy")
    p.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_stub:
        serve_stub(args.serve_stub)
        return 0
    n_for = {1: 60, 16: 160, 64: 320} if args.quick else {1: 300, 16: 800, 64: 1600}
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="onbrand-bench-guard-") as tmp:
        procs, direct, guarded = start_processes(Path(tmp) / "log")
        try:
            rows = measure(direct, guarded, procs[1].pid, n_for, 1 if args.quick else args.rounds)
        finally:
            for proc in procs[::-1]:
                proc.terminate()
                proc.wait(timeout=60)  # the guard compacts its last segment on the way out
        in_guard = in_guard_times(Path(tmp) / "log")
    fsync = fsync_costs(300 if args.quick else args.fsync_n)
    verdicts = [{"mode": r["mode"], "added_p50_ms": r["added_p50_ms"], "added_p95_ms": r["added_p95_ms"],
                 "p50_met": 0 <= r["added_p50_ms"] <= TARGET["p50_ms"],
                 "p95_met": 0 <= r["added_p95_ms"] <= TARGET["p95_ms"]}
                for r in rows if r["concurrency"] == TARGET["c"]]  # fmt: skip
    out = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"shared {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}",
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "upstream": "stub (raw ASGI, uvicorn+uvloop+httptools, fixed answer; 20 SSE chunks when streaming)",
        "guard": "configs/guard/demo.yaml, rules-only checks, redaction on, fsync=interval (1000 ms)",
        "client": "httpx.AsyncClient, one asyncio loop, c requests in flight; streams read to the last byte",
        "quick": args.quick, "rounds": 1 if args.quick else args.rounds, "target": TARGET,
        "rows": rows, "in_guard": in_guard, "verdicts": verdicts, "fsync": fsync,
    }  # fmt: skip
    write_results(out, "python scripts/bench_guard.py" + (" --quick" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
