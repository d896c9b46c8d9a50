"""Benchmark the LLM judge through an OpenAI-compatible endpoint: throughput and latency at
concurrency 1 / 8 / 32 against a local ``vllm serve``, and the cache-hit path.

One sitting, one server (the embedded SmolLM2-135M-Instruct behind ``vllm serve``, CPU build),
the same judge items at every concurrency: the demo brand's first ``--items`` test-split records,
their chosen answer as "aligned" and the rejected one as "base", each judged in both orders
(2 requests per item, guided JSON decoding, temperature 0). Every run gets a fresh ticket number
in front of each question, so no run reuses another's prompt from vLLM's prefix cache beyond the
shared rubric (as in a real eval: same rubric, new answers). Each concurrency is run ``--repeats``
times, alternating; medians are reported. The cache path judges the same items twice with the
verdict cache on: the second pass answers from SQLite without a request.

    python scripts/bench_judge.py                       # about 10 min on 2 cores
    python scripts/bench_judge.py --items 16 --repeats 1

Writes ``bench/results/judge.json`` and ``bench/results/judge.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CARD = REPO / "configs" / "brands" / "aurora.yaml"
TEST = REPO / "data" / "brands" / "aurora" / "test.canonical.jsonl"


def _items(n: int) -> list[dict]:
    rows = [json.loads(x) for x in TEST.read_text(encoding="utf-8").splitlines() if x.strip()][:n]
    return [{"prompt": r["prompt"], "aligned": r["chosen"][0]["content"], "base": r["rejected"][0]["content"],
             "channel": r.get("channel")} for r in rows]  # fmt: skip


def _judge(url: str, concurrency: int, cache_path: str | None):
    from onbrand.eval.config import JudgeConfig
    from onbrand.eval.judge import Judge
    from onbrand.eval.judge.backends import EndpointBackend

    cfg = JudgeConfig(endpoint=url, model="judge", concurrency=concurrency, max_tokens=128, timeout_s=300,
                      cache=cache_path is not None, cache_path=cache_path)  # fmt: skip
    backend = EndpointBackend(cfg)
    backend.probe()
    return Judge(cfg, backend, None)


def _run(
    url: str, card, items: list[dict], concurrency: int, tag: str, cache_path: str | None = None
) -> dict:
    chats = [[{"role": "user", "content": f"(ticket {tag}) {it['prompt'][-1]['content']}"}] for it in items]
    t0 = time.perf_counter()
    out = _judge(url, concurrency, cache_path).run(card, chats, [it["aligned"] for it in items],
                                                   [it["base"] for it in items], [it["channel"] for it in items],
                                                   n_boot=100)  # fmt: skip
    wall = time.perf_counter() - t0
    c = out["cost"]
    return {"concurrency": concurrency, "wall_s": round(wall, 2), "items": len(items), "requests": 2 * len(items),
            "items_per_s": round(len(items) / wall, 3), "latency_p50_s": c["latency_p50_s"],
            "latency_p95_s": c["latency_p95_s"], "cache_hits": c["cache_hits"], "sent": c["sent"],
            "invalid": out["invalid_answers"], "completion_tokens": c["completion_tokens"],
            "prompt_tokens": c["prompt_tokens"]}  # fmt: skip


def _median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r[key] is not None]
    return statistics.median(vals) if vals else None


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].replace("(R)", "").replace(" Processor", "").strip()
    return platform.processor() or platform.machine()


def _markdown(res: dict) -> str:
    rows = [
        f"| {r['concurrency']} | {r['items_per_s']:.2f} | {r['requests_per_s']:.2f} | {r['latency_p50_s']:.2f} s | "
        f"{r['latency_p95_s']:.2f} s | {r['speedup']:.2f}x | {r['invalid']} |"
        for r in res["summary"]
    ]  # fmt: skip
    hit = res["cache"]
    return "\n".join([
        "## LLM judge through an OpenAI-compatible endpoint",
        "",
        f"`{res['command']}` on {res['date']} ({res['machine']}, load average {res['load_start']:.1f} at start): "
        f"`vllm serve` of the embedded SmolLM2-135M-Instruct (CPU build, fp32, eager; started in {res['server_start_s']:.0f} s), "
        f"{res['items']} judge items from the demo's test split (chosen vs rejected), both orders = {2 * res['items']} "
        f"requests per run, guided JSON decoding, temperature 0, max 128 tokens; median of {res['repeats']} run(s) per "
        "concurrency, alternating, each run with fresh ticket numbers (no prefix-cache reuse beyond the rubric).",
        "",
        "| concurrency | items/s | requests/s | latency p50 | latency p95 | items/s vs concurrency 1 | invalid answers |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Cache-hit path (the same {res['items']} items judged again with the verdict cache on): "
        f"{hit['items_per_s']:.0f} items/s, {hit['sent']} requests sent, {hit['cache_hits']} of {2 * res['items']} "
        f"verdicts from SQLite ({hit['wall_s']:.2f} s, against {hit['first_wall_s']:.1f} s for the pass that filled it).",
        "",
        "A 135M judge is mechanics only (its verdicts are noise); the figures measure the client path: "
        "concurrency, retries, parsing and the cache, with the server's batching behind it.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--no-write", action="store_true", help="print only (do not touch bench/results)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from onbrand.data.brand import load_brand
    from onbrand.engines.server import VLLMServer
    from onbrand.models import resolve_model

    levels = [int(x) for x in args.concurrency.split(",")]
    card, items = load_brand(CARD), _items(args.items)
    load = os.getloadavg()[0]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, VLLMServer(resolve_model("embedded:smollm2-135m-instruct"),
                                                          served_name="judge", max_model_len=2048) as srv:  # fmt: skip
        print(f"server up in {srv.startup_s:.0f} s", file=sys.stderr)
        _run(srv.url, card, items[:2], 1, "warm-up")  # first request: compile/caches, not measured
        for rep in range(args.repeats):
            for c in levels:
                runs.append({**_run(srv.url, card, items, c, f"{rep}-{c}"), "repeat": rep})
                print(json.dumps(runs[-1]), file=sys.stderr)
        cache = str(Path(tmp) / "cache.sqlite")
        first = _run(srv.url, card, items, max(levels), "cache", cache)
        hit = {**_run(srv.url, card, items, max(levels), "cache", cache), "first_wall_s": first["wall_s"]}
        startup = srv.startup_s
    summary = []
    for c in levels:
        rs = [r for r in runs if r["concurrency"] == c]
        summary.append({"concurrency": c, "items_per_s": _median(rs, "items_per_s"),
                        "requests_per_s": 2 * _median(rs, "items_per_s"), "latency_p50_s": _median(rs, "latency_p50_s"),
                        "latency_p95_s": _median(rs, "latency_p95_s"), "invalid": sum(r["invalid"] for r in rs)})  # fmt: skip
    for s in summary:
        s["speedup"] = s["items_per_s"] / summary[0]["items_per_s"]
    res = {"command": "python scripts/bench_judge.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
           "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": f"{_cpu()}, {os.cpu_count()} cores",
           "load_start": load, "server_start_s": startup, "items": len(items), "repeats": args.repeats,
           "runs": runs, "summary": summary, "cache": hit}  # fmt: skip
    md = _markdown(res)
    print(md)
    if not args.no_write:
        from onbrand.artifacts import atomic_write_json, atomic_write_text

        atomic_write_json(RESULTS / "judge.json", res)
        atomic_write_text(RESULTS / "judge.md", md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
