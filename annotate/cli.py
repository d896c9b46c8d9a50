"""``onbrand annotate``: serve the web app and administer projects from the command line.

::

    onbrand annotate admin-token --db sqlite:///annotations.db        # prints the admin token
    onbrand annotate project     --db ... --brand configs/brands/aurora.yaml --overlap 0.1
    onbrand annotate annotator   --db ... --project aurora alice bob  # prints one token each
    onbrand annotate queue       --db ... --project aurora --prompts prompts.jsonl --model embedded:smollm2-135m-instruct --n 2
    onbrand annotate queue       --db ... --project aurora --pairs pairs.jsonl
    onbrand annotate assign      --db ... --project aurora
    onbrand annotate serve       --db ... --brand configs/brands/aurora.yaml --port 8000
    onbrand annotate stats       --db ... --project aurora
    onbrand annotate export      --db ... --project aurora --out annotations.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from onbrand.config import load_config
from onbrand.engines.options import EngineOptions

DEFAULT_DB = "sqlite:///annotations.db"


def _sessions(args):
    from onbrand.annotate.db import open_db

    return open_db(args.db)()


def _project(s, name):
    from onbrand.annotate.service import get_project

    try:
        return get_project(s, name)
    except LookupError as e:
        raise ValueError(str(e)) from None


def cmd_serve(args) -> int:
    import uvicorn

    from onbrand.annotate import service
    from onbrand.annotate.app import create_app

    brands = [service.brand_facts(p) for p in args.brand]
    token = os.environ.get(args.admin_token_env)
    with _sessions(args) as s:
        if token:
            service.set_admin_token(s, token)
        elif not service.has_admin(s):
            print(
                "no admin token yet: run 'onbrand annotate admin-token --db ...' "
                f"(or set ${args.admin_token_env}) to use the admin pages",
                file=sys.stderr,
            )
    app = create_app(args.db, brands, max_body=args.max_body_bytes)
    print(
        f"annotation server on http://{args.host}:{args.port}/  (db {args.db.split('://')[0]})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_admin_token(args) -> int:
    from onbrand.annotate.service import set_admin_token

    with _sessions(args) as s:
        print(set_admin_token(s))
    return 0


def cmd_project(args) -> int:
    from onbrand.annotate.service import brand_facts, create_project

    brand = brand_facts(args.brand)
    with _sessions(args) as s:
        p = create_project(s, args.name or brand["id"], brand, args.overlap, args.seed)
        print(f"project {p.name!r} (brand {p.brand_id}, reason tags: {', '.join(p.reason_tags) or 'none'})")
    return 0


def cmd_annotator(args) -> int:
    from onbrand.annotate.service import add_annotator

    with _sessions(args) as s:
        project = _project(s, args.project)
        for name in args.names:
            ann, token = add_annotator(s, project, name)
            print(f"{ann.name}\t{token}")
    return 0


def cmd_queue(args) -> int:
    from onbrand.annotate import queue, service

    with _sessions(args) as s:
        project = _project(s, args.project)
        if args.pairs:
            items, gen_stats = queue.read_pairs(args.pairs), {}
        else:
            prompts = queue.read_prompts(args.prompts)
            card = args.brand or project.brand_path
            system = service.brand_facts(card)["system_prompt"] if card else None
            items, gen_stats = queue.generate_pairs(
                prompts,
                args.model,
                n=args.n,
                system_prompt=system,
                adapter=args.adapter,
                engine=args.engine,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                seed=args.seed,
                options=load_config(EngineOptions, None, args.engine_option),
            )
        counts = service.add_tasks(s, project, items)
        out = {**gen_stats, **counts}
        if args.assign:
            out["assigned"] = service.assign(s, project, args.overlap)
    print(json.dumps(out))
    return 0


def cmd_assign(args) -> int:
    from onbrand.annotate.service import assign

    with _sessions(args) as s:
        print(json.dumps(assign(s, _project(s, args.project), args.overlap, args.seed, args.per_item)))
    return 0


def cmd_stats(args) -> int:
    from onbrand.annotate.pooling import project_stats

    with _sessions(args) as s:
        st = project_stats(s, _project(s, args.project))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    ag = st["agreement"]
    print(f"{st['project']}: {st['judgements']} judgements on {st['tasks']} tasks; labels {st['labels']}")
    for r in st["annotators"]:
        print(
            f"  {r['annotator']:<20} {r['judged']:>6} / {r['assigned']:<6} per hour: {r['per_hour'] or '-'}"
        )
    print(f"  agreement on {ag['items_overlapping']} overlapping items: alpha {ag['krippendorff_alpha']}")
    for k in ag["cohen_kappa"]:
        print(f"    kappa {' & '.join(k['annotators'])}: {k['kappa']} ({k['items']} items)")
    return 0


def cmd_export(args) -> int:
    from onbrand.annotate.pooling import export_records, write_jsonl

    with _sessions(args) as s:
        records, counts = export_records(s, _project(s, args.project))
    write_jsonl(args.out, records)
    print(f"wrote {len(records)} records to {args.out}; {json.dumps(counts)}")
    if records:
        print(f"next: onbrand data import {args.out} ... && onbrand data snapshot ...", file=sys.stderr)
    return 0


def _common(p, project: bool = True) -> None:
    p.add_argument(
        "--db", default=DEFAULT_DB, help=f"SQLAlchemy URL (default {DEFAULT_DB}; postgresql+psycopg://...)"
    )
    if project:
        p.add_argument("--project", required=True, help="project name or id")


def register(sub) -> None:
    p = sub.add_parser("annotate", help="annotation web app: serve, projects, queues, agreement, export")
    asub = p.add_subparsers(dest="annotate_cmd", required=True)

    sp = asub.add_parser("serve", help="run the web app (FastAPI + uvicorn)")
    _common(sp, project=False)
    sp.add_argument("--brand", action="append", default=[], help="brand card YAML (repeatable)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--max-body-bytes", type=int, default=1 << 20)
    sp.add_argument(
        "--admin-token-env", default="ONBRAND_ADMIN_TOKEN", help="env var holding the admin token"
    )
    sp.add_argument("--log-level", default="info")
    sp.set_defaults(func=cmd_serve)

    sp = asub.add_parser("admin-token", help="create or rotate the admin token (printed once)")
    _common(sp, project=False)
    sp.set_defaults(func=cmd_admin_token)

    _register_admin(asub)


def _register_admin(asub) -> None:
    sp = asub.add_parser("project", help="create a project from a brand card")
    _common(sp, project=False)
    sp.add_argument("--brand", required=True, help="brand card YAML")
    sp.add_argument("--name", help="project name (default: the card id)")
    sp.add_argument("--overlap", type=float, default=0.1, help="fraction of items given to two annotators")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_project)

    sp = asub.add_parser("annotator", help="add annotators; prints 'name<TAB>token' (tokens are shown once)")
    _common(sp)
    sp.add_argument("names", nargs="+")
    sp.set_defaults(func=cmd_annotator)

    sp = asub.add_parser("queue", help="load candidate pairs: generate them with a model or import a file")
    _common(sp)
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="prompts JSONL/text: candidates are generated with --model")
    src.add_argument("--pairs", help="pairs JSONL ({prompt, candidates:[a,b]} or canonical records)")
    sp.add_argument("--model", default="embedded:smollm2-135m-instruct")
    sp.add_argument("--adapter", help="LoRA adapter dir (e.g. a run's adapter/) to sample from")
    sp.add_argument("--brand", help="brand card for the system prompt (default: the project's card)")
    sp.add_argument("--n", type=int, default=2, help="samples per prompt (paired: even, >= 2)")
    sp.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"])
    sp.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                    help="vLLM engine option (onbrand.engines.options.EngineOptions), e.g. dtype=bfloat16")  # fmt: skip
    sp.add_argument("--max-new-tokens", type=int, default=128)
    sp.add_argument("--temperature", type=float, default=0.9)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--assign", action="store_true", help="assign the new tasks right away")
    sp.add_argument("--overlap", type=float, default=None)
    sp.set_defaults(func=cmd_queue)

    sp = asub.add_parser("assign", help="assign unassigned tasks (with overlap for agreement)")
    _common(sp)
    sp.add_argument("--overlap", type=float, default=None, help="default: the project's overlap")
    sp.add_argument("--per-item", type=int, default=2, help="annotators per overlapping item (>= 2)")
    sp.add_argument("--seed", type=int, default=None)
    sp.set_defaults(func=cmd_assign)

    sp = asub.add_parser("stats", help="progress, throughput and agreement (kappa / alpha)")
    _common(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_stats)

    sp = asub.add_parser("export", help="write judgements as canonical preference records (JSONL)")
    _common(sp)
    sp.add_argument("--out", required=True, help="output .jsonl (for onbrand data import)")
    sp.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onbrand")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
