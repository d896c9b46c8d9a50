"""``onbrand data import|validate|snapshot|report``.

- ``import FILE... [--format auto|label-studio|argilla|trl|standard|hh-rlhf|ultrafeedback|csv|canonical]
  --out DIR``: stream files into ``DIR/records.jsonl`` (canonical, deduplicated), ``DIR/quarantine.jsonl``
  (every bad row with file, line, field, reason) and ``DIR/import_summary.json``; prints the counts.
  Exit 1 when nothing valid remains, or with ``--strict`` when any row was quarantined. Label Studio
  and Argilla exports: the config's ``format_options`` map their field names, and
  ``--ls-prompt-field/--ls-left-field/--ls-right-field``,
  ``--argilla-prompt-field/--argilla-response-fields A,B/--argilla-question`` override its keys.
- ``validate FILE...``: the same checks, writes nothing (prints every problem).
- ``snapshot [--config C] [--ls-*/--argilla-* ...] [key=value ...]``: import + dedup + tokenizer
  checks + leak checks + near-duplicate-aware train/dev/test/judge split -> snapshot (docs/data.md,
  "Splits and leakage").
- ``report [--config C] [--snapshot DIR] [--out DIR]``: data quality report (Markdown, JSON, PNG).

Without FILE arguments, ``import``/``validate`` read the config's fixed split files
(``test_inputs``, ``dev_inputs``, ``judge_inputs``) and ``inputs``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from onbrand.data.formats import FORMATS

DEFAULT_CONFIG = "configs/data/demo.yaml"
SHOW_PROBLEMS = 20


def _cfg(args):
    from onbrand.config import load_config
    from onbrand.data.config import DataConfig

    path = (
        args.config if (args.config and Path(args.config).exists()) or args.config != DEFAULT_CONFIG else None
    )
    return load_config(DataConfig, path, getattr(args, "overrides", None) or [])


def _files(args, cfg) -> list[str]:
    return list(args.files) or cfg.all_inputs


def _brand_id(args, cfg) -> str | None:
    from onbrand.data.brand import load_brand
    from onbrand.data.snapshot import resolve_input

    # Files named on the command line get a brand only from --brand; the config's card applies to
    # the config's own inputs (so importing another brand's file never stamps it "aurora").
    path = args.brand or (None if args.files else cfg.brand)
    return load_brand(resolve_input(path)).id if path else None


def _format_options(args, cfg) -> dict[str, object]:
    """The tool formats' field mapping: the config's ``format_options``, then ``--ls-*`` /
    ``--argilla-*`` on top (a flag given wins over the config's key of the same name)."""
    from onbrand.data.formats import MULTI_FORMATS

    opts: dict[str, object] = {k: getattr(args, k, None) for names in MULTI_FORMATS.values() for k in names}
    pair = opts.get("argilla_response_fields")
    if pair:
        names = tuple(x.strip() for x in str(pair).split(","))
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise ValueError(f"--argilla-response-fields: expected two different names 'a,b', got {pair!r}")
        opts["argilla_response_fields"] = names
    return {**cfg.format_options.as_options(), **{k: v for k, v in opts.items() if v}}


def _run_import(args, write: bool) -> int:
    from tqdm import tqdm

    from onbrand.artifacts import atomic_write_json
    from onbrand.data.records import to_json_line
    from onbrand.data.snapshot import resolve_input
    from onbrand.data.validate import ImportStats, Quarantined, import_files, quarantine_line

    cfg = _cfg(args)
    files = _files(args, cfg)
    if not files:
        raise ValueError("no input files: pass FILE... or set inputs in the data config")
    fmt = args.format or cfg.format
    stats = ImportStats()
    out = Path(args.out) if write else None
    shown = 0
    with _Sinks(out) as (rec_f, q_f):
        items = import_files(
            [resolve_input(f) for f in files],
            fmt,
            args.max_chars or cfg.max_chars,
            stats,
            _brand_id(args, cfg),
            options=_format_options(args, cfg),
        )
        for item in tqdm(items, desc="import", unit="row", disable=None, mininterval=1.0):
            if isinstance(item, Quarantined):
                if q_f:
                    q_f.write(quarantine_line(item))
                if shown < SHOW_PROBLEMS or not write:
                    print(f"quarantined {item}", file=sys.stderr)
                shown += 1
            elif rec_f:
                rec_f.write(to_json_line(item))
    if shown > SHOW_PROBLEMS and write:
        print(f"... {shown - SHOW_PROBLEMS} more in {out / 'quarantine.jsonl'}", file=sys.stderr)
    summary = stats.as_dict()
    print(stats.summary())
    if out is not None:
        atomic_write_json(out / "import_summary.json", {"files": files, "format": fmt, **summary})
        print(f"wrote {out / 'records.jsonl'} ({stats.accepted} records), {out / 'quarantine.jsonl'}")
    if stats.accepted == 0:
        print("onbrand: error: no valid pairs remain", file=sys.stderr)
        return 1
    if args.strict and summary["quarantined"]:
        print(f"onbrand: --strict: {summary['quarantined']} rows quarantined", file=sys.stderr)
        return 1
    return 0


class _Sinks:
    """records.jsonl + quarantine.jsonl written to temp files, renamed into place on success."""

    def __init__(self, out: Path | None):
        self.out = out
        self.files: list[tuple[str, object, Path]] = []

    def __enter__(self):
        if self.out is None:
            return None, None
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("records.jsonl", "quarantine.jsonl"):
            fd, tmp = tempfile.mkstemp(dir=self.out, prefix=f".{name}.", suffix=".tmp")
            self.files.append((name, os.fdopen(fd, "w", encoding="utf-8"), Path(tmp)))
        return self.files[0][1], self.files[1][1]

    def __exit__(self, exc_type, exc, tb):
        for name, f, tmp in self.files:
            f.close()
            if exc_type is None:
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.out / name)
            else:
                tmp.unlink(missing_ok=True)
        return False


def cmd_import(args) -> int:
    return _run_import(args, write=True)


def cmd_validate(args) -> int:
    return _run_import(args, write=False)


def cmd_snapshot(args) -> int:
    from dataclasses import replace

    from onbrand.data.config import FormatOptions
    from onbrand.data.snapshot import build_snapshot

    cfg = _cfg(args)
    opts = _format_options(args, cfg)
    if "argilla_response_fields" in opts:
        opts["argilla_response_fields"] = list(opts["argilla_response_fields"])
    cfg = replace(cfg, format_options=FormatOptions(**opts))  # the manifest records what was read
    m = build_snapshot(cfg)
    counts = ", ".join(f"{k} {v['pairs']}" for k, v in m["counts"].items())
    print(f"snapshot {m['snapshot_id']} -> {cfg.out} ({counts})")
    if m["quarantined_by_reason"]:
        print(
            "not in the snapshot: "
            + json.dumps(m["quarantined_by_reason"])
            + f" (see {cfg.out}/quarantine.jsonl)"
        )
    if cfg.strict and m["quarantined_by_reason"]:
        return 1
    return 0


def cmd_report(args) -> int:
    from onbrand.data.report import main as report_main

    argv = ["--config", args.config]
    if args.snapshot:
        argv += ["--snapshot", args.snapshot]
    if args.out:
        argv += ["--out", args.out]
    return report_main(argv + list(args.overrides or []))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"data config YAML (default {DEFAULT_CONFIG})")


def _tool_flags(q: argparse.ArgumentParser) -> None:
    g = q.add_argument_group("Label Studio / Argilla field names (docs/data.md)")
    g.add_argument("--ls-prompt-field", help="Label Studio data key of the prompt (default prompt)")
    g.add_argument(
        "--ls-left-field", help="data key of the Pairwise tag's left answer (default answer1|text1)"
    )
    g.add_argument("--ls-right-field", help="data key of the right answer (default answer2|text2)")
    g.add_argument("--argilla-prompt-field", help="Argilla field of the prompt (default prompt)")
    g.add_argument(
        "--argilla-response-fields",
        metavar="A,B",
        help="the two response fields (default response1,response2)",
    )
    g.add_argument(
        "--argilla-question", help="ranking/label question to read (default: the one naming A or B)"
    )


def register(sub) -> None:
    p = sub.add_parser("data", help="import, validate, snapshot and report preference data")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    for name, func, help_ in (
        ("import", cmd_import, "stream files into canonical records + quarantine"),
        ("validate", cmd_validate, "check files and print every problem; writes nothing"),
    ):
        q = dsub.add_parser(name, help=help_)
        q.add_argument("files", nargs="*", help="input files (default: the config's inputs)")
        q.add_argument("--format", choices=FORMATS)
        q.add_argument("--brand", help="brand card YAML; fills records without a brand")
        q.add_argument("--max-chars", type=int, help="per-row size cap (characters)")
        q.add_argument("--strict", action="store_true", help="exit 1 when any row is quarantined")
        _tool_flags(q)
        if name == "import":
            q.add_argument("--out", default="runs/demo/imported", help="output dir")
        _common(q)
        q.set_defaults(func=func)
    s = dsub.add_parser("snapshot", help="write a versioned Parquet snapshot + manifest")
    _common(s)
    _tool_flags(s)
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.set_defaults(func=cmd_snapshot)
    r = dsub.add_parser("report", help="data quality report of a snapshot")
    _common(r)
    r.add_argument("--snapshot", help="snapshot dir (default: the config's out)")
    r.add_argument("--out", help="report dir (default: <snapshot>/report)")
    r.add_argument("overrides", nargs="*", help="key=value config overrides")
    r.set_defaults(func=cmd_report)
