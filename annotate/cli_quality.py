"""``onbrand annotate gold``: load gold (known-answer) items and set the project's gold rate.

::

    onbrand annotate gold --db ... --project aurora --pairs gold.jsonl --rate 0.1
    onbrand annotate gold --db ... --project aurora --rate 0.05          # only change the rate

Also the text form of the quality numbers that ``onbrand annotate stats`` prints
(:func:`print_quality`), kept here so ``cli.py`` stays a list of commands.
"""

from __future__ import annotations

import json
from typing import Any


def cmd_gold(args) -> int:
    from onbrand.annotate import gold
    from onbrand.annotate.cli import _project, _sessions

    if args.pairs is None and args.rate is None:
        raise ValueError("annotate gold: give --pairs (gold items to load) and/or --rate")
    items = gold.read_gold(args.pairs) if args.pairs else []  # a bad line fails before any write
    out: dict[str, Any] = {}
    with _sessions(args) as s:
        project = _project(s, args.project)
        if args.rate is not None:
            gold.set_gold_rate(s, project, args.rate)
        if items:
            out.update(gold.add_gold(s, project, items))
        out["gold_rate"] = project.gold_rate
    print(json.dumps(out))
    return 0


def register(asub) -> None:
    """Add the ``gold`` subcommand to ``onbrand annotate``."""
    sp = asub.add_parser("gold", help="load gold (known-answer) items and set how often they are mixed in")
    sp.add_argument("--db", default="sqlite:///annotations.db", help="SQLAlchemy URL")
    sp.add_argument("--project", required=True, help="project name or id")
    sp.add_argument(
        "--pairs",
        help="gold JSONL: {prompt, candidates: [a, b], gold: a|b|tie|both_bad} or canonical records (gold a = chosen)",
    )
    sp.add_argument("--rate", type=float, help="fraction of each queue that is gold, [0, 0.5] (next assign)")
    sp.set_defaults(func=cmd_gold)


def _fmt(x: Any) -> str:
    return "-" if x is None else str(x)


def print_quality(st: dict[str, Any]) -> None:
    """The per-annotator quality table and the project's gold and agreement lines."""
    print(
        f"  {'annotator':<20} {'judged':>13} {'per hour':>8} {'s/item':>7}  "
        f"{'gold acc (95% CI, n)':<26} {'vs majority (n)':<16}"
    )
    for r in st["annotators"]:
        ci = r.get("gold_accuracy_ci95")
        gold = f"{_fmt(r['gold_accuracy'])} ({ci[0]}-{ci[1]}, {r['gold_judged']})" if ci else "-"
        maj = f"{_fmt(r['majority_agreement'])} ({r['majority_compared']})"
        print(
            f"  {r['annotator']:<20} {r['judged']:>6} / {r['assigned']:<6}"
            f"{_fmt(r['per_hour']):>8} {_fmt(r['speed_median_seconds']):>7}  {gold:<26} {maj:<16}"
        )
    g = st["gold"]
    if g["items"]:
        print(
            f"  gold: {g['items']} items at rate {g['rate']}; {g['judgements']} judged, "
            f"accuracy {_fmt(g['accuracy'])} (95% CI {_fmt(g['accuracy_ci95'])})"
        )
    ag = st["agreement"]
    o = ag.get("ordinal") or {}
    print(
        f"  agreement on {ag['items_overlapping']} overlapping non-gold items: "
        f"alpha nominal {_fmt(ag['krippendorff_alpha'])}, ordinal (a < tie < b) "
        f"{_fmt(ag.get('krippendorff_alpha_ordinal'))} on {o.get('items', 0)} items "
        f"({o.get('excluded', 0)} both_bad left out); raw {_fmt(ag['percent_agreement'])}"
    )
    for k in ag["cohen_kappa"]:
        print(f"    kappa {' & '.join(k['annotators'])}: {k['kappa']} ({k['items']} items)")
