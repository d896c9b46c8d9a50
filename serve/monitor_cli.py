"""``onbrand monitor``: drift of the served model against its release eval, and feedback to people.

::

    onbrand monitor logs/ --export exports/aurora-v3 --out runs/monitor/2026-12-14   # exit 1 on drift
    onbrand monitor logs/ --baseline runs/demo/eval --brand configs/brands/aurora.yaml --window hour
    onbrand monitor logs/ --export exports/aurora-v3 --reward runs/demo/reward \\
        --to-annotate --db sqlite:///annotations.db --project aurora-prod \\
        --generate-url http://127.0.0.1:8000/v1 --generate-model aurora-v3
    onbrand monitor --export-feedback data/feedback --db sqlite:///annotations.db --project aurora-prod

Exit codes (for cron and CI alerts): 0 no drift, 1 at least one drift check failed, 2 a mistake in
what was given (config, paths, unreadable log in strict mode), with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys

from onbrand.config import load_config

DEFAULT_CONFIG = "configs/monitor/demo.yaml"


def _overrides(args: argparse.Namespace) -> list[str]:
    over = list(args.set)
    for flag, key in (("window", "window"), ("brand", "brand"), ("reward", "reward"), ("out", "out_dir")):
        if getattr(args, flag):
            over.append(f"{key}={getattr(args, flag)}")
    baseline = args.baseline or args.export
    if baseline:
        over.append(f"baseline={baseline}")
    if args.voice:
        over.append("voice=true")
    return over


def _generator(args: argparse.Namespace):
    from onbrand.serve.feedback import EndpointGenerator, EngineGenerator

    if args.generate_url:
        if not args.generate_model:
            raise ValueError("--generate-url needs --generate-model (the served model's name)")
        return EndpointGenerator(args.generate_url, args.generate_model, args.api_key_env)
    if args.model:
        return EngineGenerator(args.model, args.engine, args.adapter)
    if args.export:
        return EngineGenerator(args.export, args.engine)
    raise ValueError(
        "--to-annotate generates alternatives: pass --generate-url URL --generate-model NAME, or --model"
    )


def _to_annotate(args: argparse.Namespace, cfg, sampler, info: dict) -> dict:
    from onbrand.annotate.db import open_db
    from onbrand.serve import feedback

    generator = _generator(args)
    items, counts = feedback.select(sampler, generator, info["scorer"], cfg.batch_size)
    tasks, identical = feedback.to_tasks(items, {**generator.describe(), "seed": cfg.to_annotate.seed})
    card = info["card"]
    sent = feedback.send(open_db(args.db), args.project, tasks, card.source if card else None)
    return {**counts, "identical_or_empty": identical, **sent}


def cmd_monitor(args: argparse.Namespace) -> int:
    from onbrand.serve import monitor_run
    from onbrand.serve.feedback import FeedbackSampler, require_reward
    from onbrand.serve.monitor import MonitorConfig

    if args.export_feedback:
        return _export(args)
    if not args.logs:
        raise ValueError(
            "onbrand monitor needs conversation logs (files or directories), or --export-feedback DIR"
        )
    if args.to_annotate and not args.project:
        raise ValueError("--to-annotate needs --project NAME (and --db URL)")
    cfg = load_config(MonitorConfig, args.config, _overrides(args))
    if args.to_annotate:
        require_reward(cfg.to_annotate, bool(cfg.reward))
    sampler = FeedbackSampler(cfg.to_annotate) if args.to_annotate else None
    result, info = monitor_run.analyse(args.logs, cfg, visit=sampler)
    monitor_run.write_outputs(result, cfg.out_dir)
    _print_summary(result, cfg.out_dir)
    if sampler is not None:
        print("to-annotate: " + json.dumps(_to_annotate(args, cfg, sampler, info)))
    return 1 if result["drift"] else 0


def _print_summary(result: dict, out_dir: str) -> None:
    corr = result["correction"]
    verdict = "DRIFT" if result["drift"] else "no drift"
    print(f"{verdict}: {len(result['drift'])} of {corr['family_size']} checks ({corr['method']}, alpha {corr['alpha']}) "
          f"over {result['n_conversations']} exchanges in {len({w['window'] for w in result['windows']})} windows "
          f"-> {out_dir}/monitor.md")  # fmt: skip
    for c in result["drift"][:20]:
        print(
            f"  {c['window']} {c['scope']} {c['metric']}: {c['value']:.4g} vs {c['baseline']:.4g} (p_adj {c['p_adj']:.2g})"
        )
    if len(result["drift"]) > 20:
        print(f"  ... {len(result['drift']) - 20} more in monitor.json")
    unread = result["unreadable"]
    if unread["total"]:
        print(f"warning: {unread['total']} unreadable rows ({unread['by_reason']}), e.g. {unread['examples'][0]}",
              file=sys.stderr)  # fmt: skip


def _export(args: argparse.Namespace) -> int:
    from onbrand.annotate.db import open_db
    from onbrand.serve.feedback import export_feedback

    if not args.project:
        raise ValueError("--export-feedback needs --project NAME (and --db URL)")
    out = export_feedback(open_db(args.db), args.project, args.export_feedback)
    for path, n in out["files"].items():
        print(f"wrote {n} records to {path}")
    print(json.dumps(out["counts"]))
    if out["files"]:
        print(
            "next: add these files to a data config's inputs and run onbrand data snapshot", file=sys.stderr
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser("monitor", help="drift of the served model vs its release eval; feedback to annotators",
                       description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("logs", nargs="*", help="conversation logs: .jsonl / .parquet files or directories")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"monitor config YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (dotted)")
    p.add_argument(
        "--export", help="the served export dir: its eval report is the baseline, its card and tokenizer"
    )
    p.add_argument("--baseline", help="eval report dir or report.json (overrides --export's)")
    p.add_argument("--brand", help="brand card YAML (default: the one the export / report names)")
    p.add_argument("--reward", help="reward run for scores and --to-annotate margins ('eval': the eval's)")
    p.add_argument("--voice", action="store_true", help="brand-voice similarity (needs the embedder)")
    p.add_argument("--window", choices=("hour", "day", "week"))
    p.add_argument("--out", help="output directory (default: the config's out_dir)")
    g = p.add_argument_group("feedback to annotators")
    g.add_argument("--to-annotate", action="store_true", help="send flagged + uncertain + random exchanges")
    g.add_argument("--db", default="sqlite:///annotations.db", help="annotation database (SQLAlchemy URL)")
    g.add_argument("--project", help="annotation project (created from the brand card if missing)")
    g.add_argument("--generate-url", help="OpenAI-compatible endpoint for the alternatives (e.g. vllm serve)")
    g.add_argument("--generate-model", help="model name at --generate-url")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the endpoint's key")
    g.add_argument("--model", help="or: generate with onbrand's engines on this model dir")
    g.add_argument("--adapter", help="LoRA adapter for --model")
    g.add_argument("--engine", default="auto", choices=("auto", "vllm", "hf"))
    g.add_argument(
        "--export-feedback", metavar="DIR", help="write the project's judgements as canonical records"
    )
    p.set_defaults(func=cmd_monitor)


def main(argv: list[str] | None = None) -> int:
    from onbrand.console import user_error_message

    parser = argparse.ArgumentParser(prog="onbrand")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["monitor", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(user_error_message(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
