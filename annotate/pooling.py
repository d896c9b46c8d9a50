"""Judgements -> canonical preference records (docs/architecture.md), and project statistics.

Per task, the judgements are pooled: the label with a strict majority wins (``a``/``b`` become a
chosen/rejected record; ``tie``/``both_bad``/no majority produce no preference pair and are
counted). A reviewer's adjudication, when there is one, wins over the majority. A rewrite of the
better answer is a *new chosen*: it adds a record ``chosen=rewrite, rejected=the worse candidate``.
Gold items (known answers, a test of the annotators) are never exported, and the judgements of
annotators below an optional quality threshold are left out. Nothing is dropped without being
counted.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from onbrand.annotate.db import Adjudication, Annotator, Assignment, Judgement, Project, Task
from onbrand.annotate.quality import load_judgements, quality_report, unreliable_annotators
from onbrand.artifacts import atomic_write_text
from onbrand.data.records import canonicalize


def canonical(record: dict[str, Any]) -> dict[str, Any]:
    """Validate + id with ``onbrand.data.records.canonicalize`` (the importer's own rules)."""
    return canonicalize(record, source=record.get("source"))


def _iso(t: _dt.datetime) -> str:
    if t.tzinfo is None:  # SQLite drops the zone; we always store UTC
        t = t.replace(tzinfo=_dt.UTC)
    return t.isoformat(timespec="seconds")


def _record(
    project: Project, task: Task, chosen: str, rejected: str, js: list, names: dict, adj=None
) -> dict:
    """A canonical-shaped record; an adjudicating reviewer is listed as ``reviewer:<name>``."""
    chosen_m = [{"role": "assistant", "content": chosen}]
    rejected_m = [{"role": "assistant", "content": rejected}]
    src = task.source or {}
    annotators = sorted({names[j.annotator_id] for j in js})
    times = [j.created_at for j in js]
    if adj is not None:
        annotators.append(f"reviewer:{adj.reviewer or names.get(adj.reviewer_id, 'unknown')}")
        times.append(adj.created_at)
    return {
        "prompt": task.prompt,
        "chosen": chosen_m,
        "rejected": rejected_m,
        "brand": project.brand_id,
        "channel": task.channel,
        "annotators": annotators,
        "reason_tags": sorted({t for j in js for t in (j.reason_tags or [])}),
        "created_at": _iso(max(times)),
        "source": {
            "file": str(src.get("file") or f"annotate:{project.name}"),
            "line": int(src.get("line") or task.id),
        },
    }


def export_records(
    s: Session,
    project: Project,
    min_gold_accuracy: float | None = None,
    min_gold_items: int = 5,
    min_majority_agreement: float | None = None,
    min_majority_items: int = 5,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(records, counts) for every judged or adjudicated task of ``project``.

    Counts name every task that gave no record (``gold_items``, ``tie``, ``no_majority``,
    ``adjudicated_<choice>``, ...) and, with a threshold, ``dropped_annotator:<name>`` (their
    non-gold judgements left out) and ``unchecked_annotator:<name>`` (too few gold / compared
    items to apply it: kept). See ``quality.unreliable_annotators`` for the thresholds.
    """
    names = {a.id: a.name for a in s.scalars(select(Annotator).where(Annotator.project_id == project.id))}
    js, gold = load_judgements(s, project)
    dropped, unchecked = unreliable_annotators(
        js, gold, min_gold_accuracy, min_gold_items, min_majority_agreement, min_majority_items
    )
    counts: Counter = Counter()
    for a in sorted(dropped.keys() | unchecked, key=names.__getitem__):
        n = sum(j.annotator_id == a and gold.get(j.task_id) is None for j in js)
        counts[f"{'dropped' if a in dropped else 'unchecked'}_annotator:{names[a]}"] = n
    by_task: dict[int, list[Judgement]] = defaultdict(list)
    for j in js:
        by_task[j.task_id].append(j)
    adjs = {
        a.task_id: a for a in s.scalars(select(Adjudication).join(Task).where(Task.project_id == project.id))
    }
    records = []
    for task_id in sorted(by_task.keys() | adjs.keys()):
        if gold.get(task_id) is not None:
            counts["gold_items"] += 1
            continue
        kept = [j for j in by_task.get(task_id, []) if j.annotator_id not in dropped]
        label, winners, adj = _pool(kept, adjs.get(task_id), counts)
        if label is None:
            continue
        task = s.get(Task, task_id)
        for kind, rec in _candidates(project, task, label, winners, names, adj):
            try:
                records.append(canonical(rec))
                counts[kind] += 1
            except ValueError as e:  # e.g. a rewrite identical to the rejected answer
                counts[f"invalid:{getattr(e, 'reason', 'error')}"] += 1
    counts["tasks_judged"] = len(by_task)
    counts["records"] = len(records)
    return records, dict(counts)


def _pool(kept: list[Judgement], adj: Adjudication | None, counts: Counter) -> tuple[str | None, list, Any]:
    """(winning label a|b or None, the judgements that voted for it, the adjudication or None)."""
    if adj is not None:
        counts["adjudicated"] += 1
        if adj.choice not in ("a", "b"):
            counts[f"adjudicated_{adj.choice}"] += 1
            return None, [], adj
        return adj.choice, [j for j in kept if j.choice == adj.choice], adj
    if not kept:
        counts["all_judgements_dropped"] += 1
        return None, [], None
    label, votes = Counter(j.choice for j in kept).most_common(1)[0]
    if votes * 2 <= len(kept):
        counts["no_majority"] += 1
        return None, [], None
    if label not in ("a", "b"):
        counts[label] += 1
        return None, [], None
    return label, [j for j in kept if j.choice == label], None


def _candidates(project: Project, task: Task, label: str, winners: list, names: dict, adj) -> list:
    """The pair record for the winning side, plus one per rewrite of it."""
    better, worse = (
        (task.candidate_a, task.candidate_b) if label == "a" else (task.candidate_b, task.candidate_a)
    )
    out = [("pairs", _record(project, task, better, worse, winners, names, adj))]
    out += [
        ("rewrites", _record(project, task, j.rewrite, worse, [j], names))
        for j in winners
        if j.rewrite and j.rewrite not in (better, worse)
    ]
    return out


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def project_stats(s: Session, project: Project) -> dict[str, Any]:
    """Progress, throughput and quality per annotator, label counts, position bias, gold and
    agreement (on the non-gold overlapping items; ``quality.quality_report``)."""
    quality = quality_report(s, project)
    rows = []
    annotators = list(
        s.scalars(select(Annotator).where(Annotator.project_id == project.id).order_by(Annotator.id))
    )
    for a in annotators:
        assigned = s.scalar(select(func.count(Assignment.id)).where(Assignment.annotator_id == a.id))
        times = list(s.scalars(select(Judgement.created_at).where(Judgement.annotator_id == a.id)))
        q = quality["annotators"][a.name]
        rows.append(
            {
                "annotator": a.name,
                "assigned": assigned,
                "judged": len(times),
                "per_hour": q.pop("speed_per_hour"),
                "last": _iso(max(times)) if times else None,
                **q,
            }
        )
    judgements = list(s.scalars(select(Judgement).join(Task).where(Task.project_id == project.id)))
    decisive = [j for j in judgements if j.screen_choice in ("left", "right")]
    n_tasks = s.scalar(select(func.count(Task.id)).where(Task.project_id == project.id))
    return {
        "project": project.name,
        "brand": project.brand_name,
        "tasks": n_tasks,
        "judgements": len(judgements),
        "labels": dict(Counter(j.choice for j in judgements)),
        "left_chosen_rate": round(sum(j.screen_choice == "left" for j in decisive) / len(decisive), 4)
        if decisive
        else None,
        "annotators": rows,
        "gold": quality["gold"],
        "agreement": quality["agreement"],
    }
