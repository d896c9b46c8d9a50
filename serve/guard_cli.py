"""``onbrand guard``: run the brand guard in front of an OpenAI-compatible server, and read its log.

::

    onbrand guard --config configs/guard/demo.yaml upstream=http://127.0.0.1:8000/v1 port=8080
    onbrand guard log guard-log/ [--compact] [--json]   # records per action, torn lines

The proxy runs until SIGINT/SIGTERM; on the way out it closes and compacts its open log segment.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

USAGE = "onbrand guard [--config C] [key=value ...]\n       onbrand guard log DIR [--compact] [--json]"


def serve(config: str | None, overrides: list[str]) -> int:
    import uvicorn

    from onbrand.config import load_config
    from onbrand.data.brand import load_brand
    from onbrand.serve.convlog import ConvLog
    from onbrand.serve.guard import Guard, create_app, load_export_id
    from onbrand.serve.policy import GuardConfig

    cfg = load_config(GuardConfig, config, overrides)
    card = load_brand(cfg.brand)
    known = {r.id for r in [*card.banned, *card.required]}
    unknown = sorted(set(cfg.rules) - known)
    if unknown:
        raise ValueError(f"{config or '<defaults>'}: rules: unknown rule id(s) {unknown}; "
                         f"{card.id}'s rules: {', '.join(sorted(known))}")  # fmt: skip
    guard = Guard(cfg, card, ConvLog(cfg.log), load_export_id(cfg.export))
    print(f"onbrand guard: http://{cfg.host}:{cfg.port}/v1 -> {cfg.upstream} (brand {card.id}, "
          f"log {cfg.log.dir}, redaction {'on' if cfg.log.redact else 'OFF'})", flush=True)  # fmt: skip
    uvicorn.run(create_app(guard), host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    return 0


def read_log(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="onbrand guard log", description="summarise a guard log directory")
    p.add_argument("dir", help="the guard's log.dir")
    p.add_argument("--compact", action="store_true", help="first compact segments no live guard holds")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    from onbrand.serve.convlog import ReadReport, iter_records, recover

    if args.compact:
        recover(args.dir)
    report = ReadReport()
    actions = Counter(rec.get("action") for rec in iter_records(args.dir, report))
    out = {"files": report.files, "records": report.records, "actions": dict(actions), "torn": report.torn}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{report.records} records in {report.files} segment(s); actions: "
              + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))  # fmt: skip
        for line in report.torn:
            print(f"warning: {line}", file=sys.stderr)
    return 0


def _handle(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if rest and rest[0] == "log":
        return read_log(rest[1:])
    bad = [a for a in rest if "=" not in a]
    if bad:
        raise ValueError(f"onbrand guard: expected key=value overrides, got {bad}; usage: {USAGE}")
    return serve(args.config, rest)


def register(sub) -> None:
    p = sub.add_parser(
        "guard",
        help="brand guard: an OpenAI-compatible proxy that checks answers against the brand card and logs them",
        description="Proxy /v1/chat/completions and /v1/completions to an OpenAI-compatible upstream "
        "(vllm serve), check each answer against the brand card (log, flag, regenerate or block per "
        "rule kind) and append every exchange to a conversation log (JSONL segments -> Parquet).",
        usage=USAGE,
    )
    p.add_argument("--config", help="guard config YAML (configs/guard/*.yaml)")
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, help="key=value overrides, or: log DIR [--compact] [--json]"
    )
    p.set_defaults(func=_handle)
