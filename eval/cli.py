"""``onbrand eval``: compare aligned vs base and write the report (see ``onbrand.eval.runner``), and
run a blind human A/B round on a report (``publish``, then ``human``; see ``onbrand.eval.human``).

::

    onbrand eval --config configs/eval/demo.yaml [key=value ...] [--gate configs/eval/gates.yaml]
    onbrand eval publish --report runs/demo/eval --db sqlite:///annotations.db --project ab --annotators alice bob
    onbrand eval human   --report runs/demo/eval --db sqlite:///annotations.db --project ab
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_DB = "sqlite:///annotations.db"


def _publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", required=True, help="eval report dir (report.json + samples.jsonl)")
    p.add_argument("--db", default=DEFAULT_DB, help=f"annotation database URL (default {DEFAULT_DB})")
    p.add_argument("--project", required=True, help="name of the NEW annotation project for this round")
    p.add_argument("--brand", help="brand card YAML (default: the report's)")
    p.add_argument(
        "--annotators", nargs="*", default=[], help="create these annotators (tokens printed once) and assign"
    )
    p.add_argument(
        "--overlap", type=float, default=0.25, help="share of items judged by --per-item annotators"
    )
    p.add_argument("--per-item", type=int, default=2, help="annotators per overlapping item (>= 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the sides and the assignment")


def _human_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", required=True, help="the eval report dir that was published")
    p.add_argument("--db", default=DEFAULT_DB, help=f"annotation database URL (default {DEFAULT_DB})")
    p.add_argument("--project", required=True, help="the project `onbrand eval publish` created")
    p.add_argument("--brand", help="brand card YAML for the brand-rules judge (default: the report's)")
    p.add_argument("--gate", help="gate YAML (default: the one the report was gated with)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)


def _publish(args: argparse.Namespace) -> int:
    from onbrand.eval.human import publish

    out = publish(args.report, args.db, args.project, args.brand, args.annotators, args.overlap, args.per_item,
                  args.seed)  # fmt: skip
    tokens = out.pop("tokens")
    print(json.dumps(out), file=sys.stderr)
    for name, token in tokens.items():  # shown once, like `onbrand annotate annotator`
        print(f"{name}\t{token}")
    nxt = (
        ""
        if tokens
        else f"onbrand annotate annotator --db ... --project {args.project} NAMES, then annotate assign; "
    )
    print(f"next: {nxt}onbrand annotate serve --db ...; then onbrand eval human --report {args.report} "
          f"--project {args.project}", file=sys.stderr)  # fmt: skip
    return 0


def _human(args: argparse.Namespace) -> int:
    from onbrand.eval.human import collect, update_report
    from onbrand.eval.runner import print_gate

    human = collect(args.report, args.db, args.project, args.brand, args.bootstrap, seed=args.seed)
    report = update_report(args.report, human, args.gate)
    print(report["verdict_markdown"])
    h = human
    ag = h["agreement"]
    print(f"\nhuman round: {h['n_judgements']} judgements on {h['n_items']} items by {len(h['annotators'])} annotators; "
          f"alpha {ag['krippendorff_alpha']}")  # fmt: skip
    for name, a in h["judges"].items():
        kappa = "—" if not a["kappa"] else f"{a['kappa']['value']:.3f}"
        acc = "—" if not a["accuracy"] else f"{a['accuracy']['value']:.3f}"
        print(f"  {name:<14} vs human majority: accuracy {acc}, kappa {kappa} ({a['n']} items)")
    print(f"report updated: {args.report}/report.md")
    return print_gate(report["gate"]) if report.get("gate") else 0


# name -> (add arguments, handler, help)
SUBCOMMANDS = {
    "publish": (
        _publish_args,
        _publish,
        "load an eval report's base/aligned answers into the annotation app, blind",
    ),
    "human": (
        _human_args,
        _human,
        "read the human judgements back: win rate, agreement, each judge vs people",
    ),
}


def _handle(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if rest and rest[0] in SUBCOMMANDS:
        add, handler, help_text = SUBCOMMANDS[rest[0]]
        sub = argparse.ArgumentParser(prog=f"onbrand eval {rest[0]}", description=help_text)
        add(sub)
        return handler(sub.parse_args(rest[1:]))
    from onbrand.eval.runner import add_arguments, handle

    # The plain form: options may also follow the key=value overrides.
    run = argparse.ArgumentParser(prog="onbrand eval", add_help=False)
    add_arguments(run)
    ns = run.parse_args(rest, namespace=argparse.Namespace(config=args.config, gate=args.gate,
                                                           from_report=args.from_report))  # fmt: skip
    return handle(ns)


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="compare the aligned model with its base: win rates, brand compliance, drift, capability; human A/B",
        description="Generate with base and aligned (vLLM LoRA requests or transformers), score, write "
        "report.json / report.md / PNGs, and optionally gate a release (--gate: exit 1 on failure).",
        epilog="subcommands: "
        + "; ".join(f"onbrand eval {k} --help: {v[2]}" for k, v in SUBCOMMANDS.items()),
        usage="onbrand eval [--config C] [--gate G] [--from-report R] [key=value ...]\n"
        "       onbrand eval {publish,human} ...",
    )
    p.add_argument("--config", help="eval config YAML (configs/eval/*.yaml)")
    p.add_argument("--gate", help="gate thresholds YAML (configs/eval/gates.yaml): exit 1 when a check fails")
    p.add_argument("--from-report", help="skip generation: gate an existing report.json")
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, help="key=value overrides, or publish|human and its options"
    )
    p.set_defaults(func=_handle)
