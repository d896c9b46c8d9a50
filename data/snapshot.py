"""Versioned dataset snapshots: ``build_snapshot(cfg)`` and ``load_snapshot(path)``.

Layout (docs/architecture.md)::

    <snap>/train.parquet  <snap>/test.parquet   columns of the canonical record
    <snap>/manifest.json  snapshot_id, schema_version, counts, sources, brand, tokenization, import
    <snap>/quarantine.jsonl  every row not in the snapshot, with file, line, field and reason

``snapshot_id`` = sha256 of the content: the canonical records (provenance ``source`` excluded) of
each split, sorted by id, plus the schema version. Same inputs -> same id; any changed pair -> new id.

Split: records from ``cfg.test_inputs`` form the fixed test split (their prompts are removed from
train, reason ``split_leak``). Otherwise prompt groups (same normalized prompt) are assigned to test
deterministically by ``sha256(seed, group)`` rank, per channel (stratified), ``test_fraction`` each.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from onbrand.data.config import DataConfig
from onbrand.data.records import FIELDS, SCHEMA_VERSION, prompt_key
from onbrand.data.validate import ImportStats, Quarantined, import_files, quarantine_line
from onbrand.runs import atomic_dir, atomic_write_json, now_iso, read_json, sha256_file, sha256_json

SPLITS = ("train", "test")
MANIFEST = "manifest.json"
PKG_PREFIX = "pkg:"


def resolve_input(path: str) -> Path:
    """``pkg:brands/aurora/x.jsonl`` -> the file bundled in onbrand.data; else a plain path."""
    if path.startswith(PKG_PREFIX):
        return Path(__file__).resolve().parent / path[len(PKG_PREFIX) :]
    return Path(path)


def features():
    """The Parquet/Arrow schema of a snapshot split (datasets Features)."""
    from datasets import Features, List, Value

    msgs = List({"role": Value("string"), "content": Value("string")})
    return Features(
        {
            "id": Value("string"),
            "prompt": msgs,
            "chosen": msgs,
            "rejected": msgs,
            "brand": Value("string"),
            "channel": Value("string"),
            "created_at": Value("string"),
            "annotators": List(Value("string")),
            "reason_tags": List(Value("string")),
            "source": {"file": Value("string"), "line": Value("int64")},
        }
    )


def content_id(splits: dict[str, list[dict[str, Any]]]) -> str:
    body = {"schema_version": SCHEMA_VERSION}
    for name, recs in splits.items():
        body[name] = [
            {k: r.get(k) for k in FIELDS if k != "source"} for r in sorted(recs, key=lambda r: r["id"])
        ]
    return sha256_json(body)


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split_records(
    records: list[dict[str, Any]], test_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Group by prompt (no prompt in both splits), stratify by channel, deterministic by seed."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[prompt_key(r)].append(r)
    by_channel: dict[str, list[str]] = defaultdict(list)
    for key, recs in groups.items():
        channel = Counter(r.get("channel") or "" for r in recs).most_common(1)[0][0]
        by_channel[channel].append(key)
    test_keys: set[str] = set()
    for keys in by_channel.values():
        keys.sort(key=lambda k: _rank(seed, k))
        test_keys.update(keys[: int(round(test_fraction * len(keys)))])
    train = [r for k, g in groups.items() if k not in test_keys for r in g]
    test = [r for k, g in groups.items() if k in test_keys for r in g]
    return train, test


def _import(cfg: DataConfig, brand_id: str | None, stats: ImportStats, problems: list[Quarantined]):
    """Fixed test files first (a pair in both stays in test), then train files."""
    seen: set[bytes] = set()
    by_id: dict[str, dict[str, Any]] = {}
    out: dict[str, list[dict[str, Any]]] = {}
    for split, paths in (("test", cfg.test_inputs), ("train", cfg.inputs)):
        recs = []
        for item in import_files(
            [resolve_input(p) for p in paths], cfg.format, cfg.max_chars, stats, brand_id, seen=seen
        ):
            if isinstance(item, Quarantined):
                problems.append(item)
                if item.record is not None and item.record["id"] in by_id:
                    _merge_votes(by_id[item.record["id"]], item.record)
            else:
                recs.append(item)
                by_id[item["id"]] = item
        out[split] = recs
    return out["train"], out["test"]


def _merge_votes(kept: dict[str, Any], dup: dict[str, Any]) -> None:
    """The same pair judged again: keep one record, with the union of annotators and reason tags."""
    for key in ("annotators", "reason_tags"):
        if dup.get(key):
            kept[key] = sorted(set(kept.get(key) or []) | set(dup[key]))


def _relabel_sources(records: list[dict[str, Any]], inputs: list[str]) -> None:
    # Record sources as the config names them (pkg:... or relative), not as absolute paths.
    names = {str(resolve_input(p)): p for p in inputs}
    for r in records:
        if r.get("source") and r["source"].get("file") in names:
            r["source"] = {**r["source"], "file": names[r["source"]["file"]]}


def collect(cfg: DataConfig) -> dict[str, Any]:
    """Import, dedup, tokenizer-check and split; returns everything the writer needs."""
    card = None
    if cfg.brand:
        from onbrand.data.brand import load_brand

        card = load_brand(resolve_input(cfg.brand))
    stats = ImportStats()
    problems: list[Quarantined] = []
    train, test = _import(cfg, card.id if card else None, stats, problems)
    all_inputs = [*cfg.test_inputs, *cfg.inputs]
    for q in problems:
        q.file = {str(resolve_input(p)): p for p in all_inputs}.get(q.file, q.file)
    _relabel_sources(train + test, all_inputs)
    tok_stats: dict[str, Any] | None = None
    if cfg.tokenizer:
        from onbrand.data.tokcheck import check_records
        from onbrand.models import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer)
        sp = card.system_prompt() if card else None
        kept, dropped, tok_stats = check_records(
            train + test, tok, sp, cfg.max_length, cfg.min_completion_tokens
        )
        keep_ids = {r["id"] for r in kept}
        train = [r for r in train if r["id"] in keep_ids]
        test = [r for r in test if r["id"] in keep_ids]
        problems += dropped
    if cfg.test_inputs:
        test_keys = {prompt_key(r) for r in test}
        leaks = [r for r in train if prompt_key(r) in test_keys]
        for r in leaks:
            msg = "prompt also in the fixed test split: kept out of train"
            problems.append(
                Quarantined(r["source"]["file"], r["source"]["line"], "split_leak", "prompt", msg, r["id"])
            )
        train = [r for r in train if prompt_key(r) not in test_keys]
    else:
        train, test = split_records(train, cfg.test_fraction, cfg.seed)
    return {
        "card": card,
        "stats": stats,
        "problems": problems,
        "tokenization": tok_stats,
        "splits": {
            "train": sorted(train, key=lambda r: r["id"]),
            "test": sorted(test, key=lambda r: r["id"]),
        },
    }


def _manifest(cfg: DataConfig, got: dict[str, Any], snapshot_id: str) -> dict[str, Any]:
    splits, card = got["splits"], got["card"]
    counts: dict[str, Any] = {}
    for name, recs in splits.items():
        counts[name] = {
            "pairs": len(recs),
            "channels": dict(sorted(Counter(r.get("channel") or "" for r in recs).items())),
        }
    reasons = Counter(q.reason for q in got["problems"])
    tok = dict(got["tokenization"] or {})
    tok.pop("lengths", None)
    from onbrand.config import to_dict

    return {
        "snapshot_id": snapshot_id,
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "created_at": now_iso(),
        "counts": counts,
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "import": got["stats"].as_dict(),
        "sources": [
            {
                "file": p,
                "split": "test" if p in cfg.test_inputs else "train",
                "sha256": sha256_file(resolve_input(p)),
            }
            for p in [*cfg.test_inputs, *cfg.inputs]
        ],
        "brand": None
        if card is None
        else {"id": card.id, "path": cfg.brand, "sha256": sha256_file(resolve_input(cfg.brand))},
        "system_prompt": card.system_prompt() if card else None,
        "tokenization": {"tokenizer": cfg.tokenizer, **tok} if cfg.tokenizer else None,
        "config": to_dict(cfg),
    }


def write_snapshot(cfg: DataConfig, got: dict[str, Any]) -> dict[str, Any]:
    """Write Parquet splits, quarantine and manifest atomically into ``cfg.out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    snapshot_id = content_id(got["splits"])
    manifest = _manifest(cfg, got, snapshot_id)
    schema = features().arrow_schema
    with atomic_dir(cfg.out) as tmp:
        for name, recs in got["splits"].items():
            rows = [{k: r.get(k) for k in FIELDS} for r in recs]
            # pyarrow directly, with the datasets Features in the schema metadata (what
            # Dataset.to_parquet writes), also for an empty split, and without progress bars.
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp / f"{name}.parquet")
        with open(tmp / "quarantine.jsonl", "w", encoding="utf-8") as f:
            for q in got["problems"]:
                f.write(quarantine_line(q))
        if got["tokenization"]:
            atomic_write_json(tmp / "token_lengths.json", got["tokenization"]["lengths"])
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def build_snapshot(cfg: DataConfig) -> dict[str, Any]:
    """Import + validate + check + split + write; returns the manifest."""
    if not cfg.inputs and not cfg.test_inputs:
        raise ValueError("data config has no inputs (set inputs: [...] or pass files)")
    got = collect(cfg)
    if not any(got["splits"].values()):
        raise ValueError(f"no valid pairs remain ({got['stats'].summary()}); see the quarantine reasons")
    return write_snapshot(cfg, got)


def load_snapshot(path: str | Path):
    """``(datasets.DatasetDict, manifest)`` of a snapshot directory."""
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    path = Path(path)
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(
            f"{path}: not a snapshot (no {MANIFEST}); build one with: onbrand data snapshot"
        )
    manifest = read_json(path / MANIFEST)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {manifest.get('schema_version')} != supported {SCHEMA_VERSION}"
        )
    # Read the Arrow tables directly (in memory, small): load_dataset("parquet") would also work but
    # writes a copy into the HF datasets cache on every new snapshot.
    dd = DatasetDict(
        {s: Dataset(pq.read_table(path / f"{s}.parquet")) for s in SPLITS if (path / f"{s}.parquet").exists()}
    )
    return dd, manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m onbrand.data.snapshot --config configs/data/demo.yaml [key=value ...]``."""
    from onbrand.config import load_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/data/demo.yaml")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(DataConfig, args.config, args.overrides)
    m = build_snapshot(cfg)
    print(
        f"snapshot {m['snapshot_id'][:16]} -> {cfg.out}: "
        + ", ".join(f"{k} {v['pairs']}" for k, v in m["counts"].items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
