"""Versioned dataset snapshots: ``build_snapshot(cfg)`` and ``load_snapshot(path)``.

Layout (docs/architecture.md)::

    <snap>/{train,dev,test,judge}.parquet   columns of the canonical record (dev/judge may be empty)
    <snap>/manifest.json  snapshot_id, schema_version, counts, sources, brand, tokenization, import,
                          leakage (max cross-split similarity per split pair, the closest pairs)
    <snap>/quarantine.jsonl  every row not in the snapshot, with file, line, field and reason

``snapshot_id`` = sha256 of the content: the canonical records (provenance ``source`` excluded) of
each split, sorted by id, plus the schema version. Same inputs -> same id; any changed pair -> new id.
A record's ``origin`` is part of it when it is ``"synthetic"`` (so human-only snapshots keep the
ids they had before the field existed, and relabelling a pair synthetic changes the id).

Synthetic pairs (``origin: "synthetic"``, judged by the reward model and the brand rules, not by
people) are training data only: in a fixed dev/test/judge file they are quarantined
(``synthetic_in_eval``); the pool's human records are split exactly as without them, and each
synthetic record then goes to train unless it near-duplicates (same relation as the clusters) a
record of dev/test/judge (``split_leak``). The manifest counts human and synthetic records per split.

Splits (docs/data.md, "Splits and leakage"): records of ``test_inputs`` / ``dev_inputs`` /
``judge_inputs`` all go to that split. A record with a near-twin (prompt or chosen text, word
3-gram Jaccard >= ``near_dup_threshold``, or the same normalized prompt) in a higher-priority split
(test > dev > judge > the pool) is quarantined with reason ``split_leak`` naming the twin. The pool
(``inputs``) is clustered over the same near-duplicate relation (union-find) and each cluster goes
whole to one split: per channel, deterministically by ``sha256(seed, cluster key)`` rank,
``<split>_fraction`` of the clusters for each split without a fixed file, the rest to train.
Records outside test that near-duplicate one of the brand card's adversarial prompts are
quarantined too (``split_leak``; ``adversarial_check``). The twin checks and the manifest's
``leakage`` block are ``onbrand.data.leakage``; this module imports, splits and writes.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_dir, atomic_write_json, now_iso, read_json, sha256_file, sha256_json
from onbrand.config import load_config, to_dict
from onbrand.data.adversarial import adversarial_prompts
from onbrand.data.brand import load_brand
from onbrand.data.config import DataConfig
from onbrand.data.leakage import (
    FIXED_SPLITS,
    SPLITS,
    Shingled,
    adversarial_index,
    drop_adversarial,
    drop_fixed_leaks,
    leakage,
    neighbours,
)
from onbrand.data.records import FIELDS, SCHEMA_VERSION, is_synthetic, prompt_key
from onbrand.data.similarity import UnionFind
from onbrand.data.tokcheck import check_records
from onbrand.data.validate import ImportStats, Quarantined, import_files, quarantine_line
from onbrand.models import load_tokenizer

MANIFEST = "manifest.json"
PKG_PREFIX = "pkg:"


def resolve_input(path: str) -> Path:
    """``pkg:brands/aurora/x.jsonl`` -> the file bundled in onbrand.data; else a plain path."""
    if path.startswith(PKG_PREFIX):
        return Path(__file__).resolve().parent / path[len(PKG_PREFIX) :]
    return Path(path)


def features(origin: bool = False):
    """The Parquet/Arrow schema of a snapshot split (datasets Features).

    ``origin=True`` adds the ``origin`` column (``build_snapshot`` writes it); snapshots without
    it (older ones, hand-made test ones) are read as all human."""
    from datasets import Features, List, Value

    msgs = List({"role": Value("string"), "content": Value("string")})
    extra = {"origin": Value("string")} if origin else {}
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
            **extra,
            "source": {"file": Value("string"), "line": Value("int64")},
        }
    )


def content_id(splits: dict[str, list[dict[str, Any]]]) -> str:
    body = {"schema_version": SCHEMA_VERSION}
    for name, recs in splits.items():
        body[name] = [
            {k: r.get(k) for k in FIELDS if k != "source" and (k != "origin" or is_synthetic(r))}
            for r in sorted(recs, key=lambda r: r["id"])
        ]
    return sha256_json(body)


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split_records(
    records: list[dict[str, Any]],
    fractions: dict[str, float],
    seed: int,
    threshold: float = 0.8,
    sh: Shingled | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Cluster near-duplicates (prompt OR chosen, plus identical prompts) with union-find; each
    cluster goes whole to one split: per channel (stratified), clusters ranked by
    ``sha256(seed, cluster key)``, the first ``fractions[split]`` of them to each split in order,
    the rest to train. The cluster key is its smallest prompt key (a lone prompt group keeps the
    rank it had before clustering existed)."""
    sh = sh or Shingled()
    uf = UnionFind(len(records))
    for i, near in neighbours(records, threshold, sh).items():
        for _, _, j in near:
            uf.union(i, j)
    by_channel: dict[str, list[tuple[str, list[int]]]] = defaultdict(list)
    for members in uf.groups():
        counts = Counter(records[i].get("channel") or "" for i in members)
        channel = min(counts, key=lambda c: (-counts[c], c))
        by_channel[channel].append((min(prompt_key(records[i]) for i in members), members))
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in ("train", *fractions)}
    for clusters in by_channel.values():
        clusters.sort(key=lambda c: _rank(seed, c[0]))
        start, acc = 0, 0.0
        for name, frac in fractions.items():
            acc += frac
            stop = int(round(acc * len(clusters)))
            out[name] += [records[i] for _, m in clusters[start:stop] for i in m]
            start = max(start, stop)
        out["train"] += [records[i] for _, m in clusters[start:] for i in m]
    return out


def _drop_adversarial(records, advs, threshold, sh, problems: list[Quarantined]) -> list[dict[str, Any]]:
    kept, dropped = drop_adversarial(records, advs, threshold, sh)
    problems += dropped
    return kept


def _import(cfg: DataConfig, brand_id: str | None, stats: ImportStats, problems: list[Quarantined]):
    """Fixed files first in priority order (a pair in both stays in the higher split), then the pool."""
    seen: set[bytes] = set()
    by_id: dict[str, dict[str, Any]] = {}
    out: dict[str, list[dict[str, Any]]] = {}
    for split, paths in (*cfg.fixed_inputs.items(), ("pool", cfg.inputs)):
        recs = []
        for item in import_files(
            [resolve_input(p) for p in paths],
            cfg.format,
            cfg.max_chars,
            stats,
            brand_id,
            seen=seen,
            options=cfg.format_options.as_options(),
        ):
            if isinstance(item, Quarantined):
                problems.append(item)
                if item.record is not None and item.record["id"] in by_id:
                    _merge_votes(by_id[item.record["id"]], item.record)
            else:
                recs.append(item)
                by_id[item["id"]] = item
        out[split] = recs
    return {s: out[s] for s in FIXED_SPLITS}, out["pool"]


def _merge_votes(kept: dict[str, Any], dup: dict[str, Any]) -> None:
    """The same pair judged again: keep one record, with the union of annotators and reason tags."""
    for key in ("annotators", "reason_tags"):
        if dup.get(key):
            kept[key] = sorted(set(kept.get(key) or []) | set(dup[key]))
    if is_synthetic(kept) and not is_synthetic(dup):
        kept["origin"] = None  # people judged it too: a human record


def _relabel_sources(records: list[dict[str, Any]], inputs: list[str]) -> None:
    # Record sources as the config names them (pkg:... or relative), not as absolute paths.
    names = {str(resolve_input(p)): p for p in inputs}
    for r in records:
        if r.get("source") and r["source"].get("file") in names:
            r["source"] = {**r["source"], "file": names[r["source"]["file"]]}


def _tokenizer_check(cfg: DataConfig, card, records: list[dict[str, Any]], problems: list[Quarantined]):
    """Drop pairs that fail the tokenizer checks; returns (kept ids, token stats)."""

    tok = load_tokenizer(cfg.tokenizer)
    sp = card.system_prompt() if card else None
    kept, dropped, tok_stats = check_records(records, tok, sp, cfg.max_length, cfg.min_completion_tokens)
    problems += dropped
    return {r["id"] for r in kept}, tok_stats


def collect(cfg: DataConfig) -> dict[str, Any]:
    """Import, dedup, tokenizer-check, leak-check and split; returns everything the writer needs."""
    card = None
    if cfg.brand:
        card = load_brand(resolve_input(cfg.brand))
    stats = ImportStats()
    problems: list[Quarantined] = []
    fixed, pool = _import(cfg, card.id if card else None, stats, problems)
    fixed = _drop_synthetic_eval(fixed, problems)
    all_inputs = cfg.all_inputs
    names = {str(resolve_input(p)): p for p in all_inputs}
    for q in problems:
        q.file = names.get(q.file, q.file)
    everything = [r for recs in fixed.values() for r in recs] + pool
    _relabel_sources(everything, all_inputs)
    tok_stats: dict[str, Any] | None = None
    if cfg.tokenizer:
        keep_ids, tok_stats = _tokenizer_check(cfg, card, everything, problems)
        fixed = {s: [r for r in recs if r["id"] in keep_ids] for s, recs in fixed.items()}
        pool = [r for r in pool if r["id"] in keep_ids]
    sh = Shingled()
    advs = []
    if cfg.adversarial_check and card is not None:
        advs = adversarial_index(adversarial_prompts(card))
    if advs:  # before the leak check: a dropped dev/judge record cannot cost a pool record
        for s in ("dev", "judge"):
            fixed[s] = _drop_adversarial(fixed[s], advs, cfg.near_dup_threshold, sh, problems)
    fixed, pool, leak_problems = drop_fixed_leaks(fixed, pool, cfg.near_dup_threshold, sh)
    problems += leak_problems
    fractions = {s: getattr(cfg, f"{s}_fraction") for s in cfg.pool_splits}
    # Human records are split as if no synthetic record existed; synthetic ones go to train only.
    parts = split_records(
        [r for r in pool if not is_synthetic(r)], fractions, cfg.seed, cfg.near_dup_threshold, sh
    )
    evals = {s: fixed.get(s, []) + parts.get(s, []) for s in FIXED_SPLITS}
    synthetic = [r for r in pool if is_synthetic(r)]
    parts["train"] += _place_synthetic(synthetic, evals, cfg.near_dup_threshold, sh, problems)
    if advs:  # the pool's records outside test
        for s in ("train", "dev", "judge"):
            if s in parts:
                parts[s] = _drop_adversarial(parts[s], advs, cfg.near_dup_threshold, sh, problems)
    splits = {s: sorted(fixed.get(s, []) + parts.get(s, []), key=lambda r: r["id"]) for s in SPLITS}
    return {
        "card": card,
        "stats": stats,
        "problems": problems,
        "tokenization": tok_stats,
        "splits": splits,
        "leakage": leakage(splits, cfg.near_dup_threshold, sh),
    }


def _drop_synthetic_eval(fixed: dict[str, list[dict[str, Any]]], problems: list[Quarantined]):
    """Quarantine (``synthetic_in_eval``) synthetic records of the fixed dev/test/judge files."""
    out = {}
    for split, recs in fixed.items():
        out[split] = [r for r in recs if not is_synthetic(r)]
        for r in recs:
            if is_synthetic(r):
                src = r.get("source") or {}
                msg = f"synthetic pair in a {split} input: the {split} split holds human judgements only"
                problems.append(
                    Quarantined(
                        src.get("file", ""), src.get("line", 0), "synthetic_in_eval", "origin", msg,
                        record_id=r["id"],
                    )
                )  # fmt: skip
    return out


def _place_synthetic(
    synthetic: list[dict[str, Any]],
    evals: dict[str, list[dict[str, Any]]],
    threshold: float,
    sh: Shingled,
    problems: list[Quarantined],
) -> list[dict[str, Any]]:
    """The synthetic pool records that may go to train: one whose prompt or chosen text
    near-duplicates a dev/test/judge record (the split clusters' relation) is quarantined
    (``split_leak``, naming the closest twin): training on it would leak into evaluation."""
    if not synthetic:
        return []
    items = [(split, r) for split, recs in evals.items() for r in recs]
    near = neighbours([r for _, r in items] + synthetic, threshold, sh)
    kept = []
    for k, r in enumerate(synthetic):
        twins = [
            (-sim, items[j][1]["id"], fld, j)
            for sim, fld, j in near.get(len(items) + k, [])
            if j < len(items)
        ]
        if not twins:
            kept.append(r)
            continue
        neg, twin_id, fld, j = min(twins)
        split = items[j][0]
        info = {"id": twin_id, "split": split, "field": fld, "similarity": round(-neg, 4)}
        msg = (
            f"synthetic pair: {fld} near-duplicates {twin_id} in the {split} split "
            f"(word 3-gram Jaccard {-neg:.3f}): kept out of train"
        )
        src = r.get("source") or {}
        problems.append(
            Quarantined(
                src.get("file", ""), src.get("line", 0), "split_leak", fld, msg, record_id=r["id"], twin=info
            )
        )
    return kept


def _manifest(cfg: DataConfig, got: dict[str, Any], snapshot_id: str) -> dict[str, Any]:
    splits, card = got["splits"], got["card"]
    counts: dict[str, Any] = {}
    for name, recs in splits.items():
        synthetic = sum(map(is_synthetic, recs))
        counts[name] = {
            "pairs": len(recs),
            "human": len(recs) - synthetic,
            "synthetic": synthetic,
            "channels": dict(sorted(Counter(r.get("channel") or "" for r in recs).items())),
        }
    reasons = Counter(q.reason for q in got["problems"])
    tok = dict(got["tokenization"] or {})
    tok.pop("lengths", None)

    return {
        "snapshot_id": snapshot_id,
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "created_at": now_iso(),
        "counts": counts,
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "leakage": got["leakage"],
        "import": got["stats"].as_dict(),
        "sources": [
            {
                "file": p,
                "split": split,
                "sha256": sha256_file(resolve_input(p)),
            }
            for split, paths in (*cfg.fixed_inputs.items(), ("pool", cfg.inputs))
            for p in paths
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
    schema = features(origin=True).arrow_schema
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
    if not cfg.inputs and not any(cfg.fixed_inputs.values()):
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
