"""``onbrand annotate``: serve the web app and administer projects from the command line.

::

    onbrand annotate migrate     --db sqlite:///annotations.db        # schema upgrade; prints 'from -> to'
    onbrand annotate admin-token --db sqlite:///annotations.db        # prints the admin token
    onbrand annotate project     --db ... --brand configs/brands/aurora.yaml --overlap 0.1
    onbrand annotate annotator   --db ... --project aurora alice bob  # prints one token each
    onbrand annotate annotator   --db ... --project aurora --role reviewer --expires-in-days 30 carol
    onbrand annotate revoke      --db ... --project aurora alice      # the token stops working at once
    onbrand annotate rotate      --db ... --project aurora bob        # prints bob's new token
    onbrand annotate audit       --db ... [--project aurora] [--json] # admin and reviewer actions
    onbrand annotate gold        --db ... --project aurora --pairs gold.jsonl --rate 0.1
    onbrand annotate queue       --db ... --project aurora --prompts prompts.jsonl --model embedded:smollm2-135m-instruct --n 2
    onbrand annotate queue       --db ... --project aurora --pairs pairs.jsonl
    onbrand annotate queue       --db ... --project aurora --prompts prompts.jsonl --strategy uncertain \
                                 --n 4 --reward-model runs/demo/reward --margin 1.0 --budget 200 --synthetic-out synthetic.jsonl
    onbrand annotate assign      --db ... --project aurora
    onbrand annotate serve       --db ... --brand configs/brands/aurora.yaml --port 8000
    onbrand annotate stats       --db ... --project aurora            # gold accuracy, majority, alpha
    onbrand annotate export      --db ... --project aurora --out annotations.jsonl [--min-gold-accuracy 0.7]
    onbrand annotate export      --db ... --project aurora --to label-studio --out tasks.json  # or argilla

migrate, revoke, rotate and audit live in ``cli_access.py``, gold in ``cli_quality.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from onbrand.annotate.cli_quality import register as _register_quality
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
    from onbrand.annotate.web import install_access_log_filter

    brands = [service.brand_facts(p) for p in args.brand]
    token = os.environ.get(args.admin_token_env)
    if args.migrate:
        from onbrand.annotate.cli_access import run_migrate

        print(run_migrate(args.db), file=sys.stderr)
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
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
    # After uvicorn has set up its loggers: a token pasted into a URL never reaches the access log.
    install_access_log_filter()
    uvicorn.Server(config).run()
    return 0


def cmd_admin_token(args) -> int:
    from onbrand.annotate.service import set_admin_token

    with _sessions(args) as s:
        print(set_admin_token(s))
    return 0


def cmd_project(args) -> int:
    from onbrand.annotate.gold import MAX_GOLD_RATE, set_gold_rate
    from onbrand.annotate.service import brand_facts, create_project
    from onbrand.config import check_range

    if args.gold_rate is not None:  # checked before the project exists: no half-made project
        check_range("gold_rate", args.gold_rate, 0.0, MAX_GOLD_RATE)
    brand = brand_facts(args.brand)
    with _sessions(args) as s:
        p = create_project(s, args.name or brand["id"], brand, args.overlap, args.seed)
        if args.gold_rate is not None:
            set_gold_rate(s, p, args.gold_rate)
        print(f"project {p.name!r} (brand {p.brand_id}, reason tags: {', '.join(p.reason_tags) or 'none'})")
    return 0


def cmd_annotator(args) -> int:
    from onbrand.annotate.cli_access import expires_in
    from onbrand.annotate.service import add_annotator

    expires = expires_in(args.expires_in_days)
    with _sessions(args) as s:
        project = _project(s, args.project)
        for name in args.names:
            ann, token = add_annotator(s, project, name, role=args.role, expires_at=expires)
            print(f"{ann.name}\t{token}")
    return 0


def cmd_queue(args) -> int:
    from onbrand.annotate import queue, service

    scored = args.strategy != "all"
    if scored and args.pairs:
        raise ValueError(f"--strategy {args.strategy} samples answers to judge: use --prompts, not --pairs")
    if args.synthetic_out and not scored:
        raise ValueError("--synthetic-out is written by --strategy uncertain (all queues every pair)")
    if args.strategy == "uncertain" and not args.synthetic_out:
        raise ValueError("--strategy uncertain writes the confident pairs to --synthetic-out FILE (required)")
    with _sessions(args) as s:
        project = _project(s, args.project)
        records: list = []
        if args.pairs:
            items, gen_stats = queue.read_pairs(args.pairs), {}
        elif scored:
            items, gen_stats, records = _scored_queue(args, project)
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
        if args.synthetic_out and scored:
            from onbrand.data.records import write_jsonl

            out["synthetic_written"] = write_jsonl(args.synthetic_out, records)
            out["synthetic_out"] = args.synthetic_out
        if args.assign:
            out["assigned"] = service.assign(s, project, args.overlap)
    print(json.dumps(out))
    return 0


def _scored_queue(args, project) -> tuple[list, dict, list]:
    """``--strategy uncertain|random``: sample K answers, judge every candidate pair with the reward
    model and the brand rules, route it (``onbrand.annotate.active``). Returns the pairs for
    people, the counts, and the synthetic canonical records (uncertain only)."""
    from pathlib import Path

    from onbrand.annotate import active, queue
    from onbrand.artifacts import now_iso
    from onbrand.data.brand import load_brand

    if args.n < 2:
        raise ValueError(f"--n must be >= 2 answers per prompt, got {args.n}")
    card_path = args.brand or project.brand_path
    if not card_path:
        raise ValueError(
            f"project {project.name!r} has no brand card: pass --brand (its rules judge the pairs)"
        )
    card = load_brand(card_path)
    prompts = queue.read_prompts(args.prompts)
    scorer = None
    if args.reward_model:
        from onbrand.scoring import load_scorer

        scorer = load_scorer(args.reward_model)
    texts, meta = queue.sample_answers(
        prompts, args.model, args.n, card.system_prompt(), args.adapter, args.engine, args.max_new_tokens,
        args.temperature, seed=args.seed, options=load_config(EngineOptions, None, args.engine_option),
    )  # fmt: skip
    meta["reward_model"] = args.reward_model
    items, judged, stats = queue.judge_answers(prompts, texts, meta, card, scorer, args.pairing)
    human, sel = queue.route_pairs(
        items, judged, args.strategy, args.margin, args.rules_clear, args.budget, args.seed
    )
    judge = Path(args.reward_model).name if args.reward_model else "rules"
    records, invalid = active.synthetic_records(items, sel.synthetic, judge, now_iso())
    out = {"strategy": args.strategy, **stats, **sel.counts(), "synthetic_invalid": invalid}
    return human, out, records


def cmd_assign(args) -> int:
    from onbrand.annotate.service import assign

    with _sessions(args) as s:
        print(json.dumps(assign(s, _project(s, args.project), args.overlap, args.seed, args.per_item)))
    return 0


def cmd_stats(args) -> int:
    from onbrand.annotate.cli_quality import print_quality
    from onbrand.annotate.pooling import project_stats

    with _sessions(args) as s:
        st = project_stats(s, _project(s, args.project))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"{st['project']}: {st['judgements']} judgements on {st['tasks']} tasks; labels {st['labels']}")
    print_quality(st)
    return 0


def cmd_export(args) -> int:
    if args.to:  # the project's tasks for Label Studio / Argilla (annotate/interop.py)
        from onbrand.annotate.interop import export_command

        return export_command(args)
    from onbrand.annotate.pooling import export_records, write_jsonl

    with _sessions(args) as s:
        records, counts = export_records(
            s,
            _project(s, args.project),
            min_gold_accuracy=args.min_gold_accuracy,
            min_gold_items=args.min_gold_items,
            min_majority_agreement=args.min_majority_agreement,
            min_majority_items=args.min_majority_items,
        )
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
    sp.add_argument("--migrate", action="store_true", help="upgrade an older database schema first")
    sp.set_defaults(func=cmd_serve)

    sp = asub.add_parser("admin-token", help="create or rotate the admin token (printed once)")
    _common(sp, project=False)
    sp.set_defaults(func=cmd_admin_token)

    _register_admin(asub)
    _access_cli().register(asub, _common)


def _access_cli():
    from onbrand.annotate import cli_access

    return cli_access


def _register_admin(asub) -> None:
    sp = asub.add_parser("project", help="create a project from a brand card")
    _common(sp, project=False)
    sp.add_argument("--brand", required=True, help="brand card YAML")
    sp.add_argument("--name", help="project name (default: the card id)")
    sp.add_argument("--overlap", type=float, default=0.1, help="fraction of items given to two annotators")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--gold-rate", type=float, help="fraction of each queue that is gold items, [0, 0.5]")
    sp.set_defaults(func=cmd_project)

    sp = asub.add_parser("annotator", help="add annotators; prints 'name<TAB>token' (tokens are shown once)")
    _common(sp)
    sp.add_argument("names", nargs="+")
    _access_cli().member_args(sp)
    sp.set_defaults(func=cmd_annotator)

    sp = asub.add_parser("queue", help="load candidate pairs: generate them with a model or import a file")
    _common(sp)
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="prompts JSONL/text: candidates are generated with --model")
    src.add_argument("--pairs", help="pairs JSONL ({prompt, candidates:[a,b]} or canonical records)")
    sp.add_argument("--strategy", default="all", choices=["all", "uncertain", "random"],
                    help="all: queue every sampled pair; uncertain: people get only the pairs the reward "
                         "model and the brand rules are unsure of (the rest -> --synthetic-out); random: "
                         "--budget pairs drawn at random from the same candidates (the baseline)")  # fmt: skip
    sp.add_argument("--model", default="embedded:smollm2-135m-instruct")
    sp.add_argument("--adapter", help="LoRA adapter dir (e.g. a run's adapter/) to sample from")
    sp.add_argument("--brand", help="brand card for the system prompt (default: the project's card)")
    sp.add_argument("--n", type=int, default=2,
                    help="samples per prompt (all: paired, even >= 2; uncertain/random: K >= 2)")  # fmt: skip
    sp.add_argument("--reward-model", help="reward run dir scoring the answers (uncertain/random)")
    sp.add_argument("--margin", type=float, default=1.0,
                    help="reward-score difference at or above which the reward model decides a pair alone")  # fmt: skip
    sp.add_argument("--rules-clear", type=float, default=0.2,
                    help="brand-rule compliance difference at or above which the rules decide a pair")  # fmt: skip
    sp.add_argument("--pairing", default="adjacent", choices=["adjacent", "all"],
                    help="candidate pairs of the K answers: neighbours by score (K-1) or all (K(K-1)/2)")  # fmt: skip
    sp.add_argument("--budget", type=int, default=None, help="at most this many pairs for people")
    sp.add_argument(
        "--synthetic-out", help="JSONL of the confident pairs as canonical records (origin synthetic)"
    )
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
    sp.add_argument("--to", choices=["label-studio", "argilla"],
                    help="write the project's tasks (not judgements) for Label Studio / Argilla instead")  # fmt: skip
    sp.add_argument("--min-gold-accuracy", type=float, help="drop annotators below this gold accuracy")
    sp.add_argument("--min-gold-items", type=int, default=5, help="gold judged before the threshold applies")
    sp.add_argument("--min-majority-agreement", type=float, help="drop annotators below this")
    sp.add_argument("--min-majority-items", type=int, default=5, help="items compared before that applies")
    sp.set_defaults(func=cmd_export)
    _register_quality(asub)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onbrand")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
