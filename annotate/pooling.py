"""Judgements -> canonical preference records (docs/architecture.md), and project statistics.

Per task, the judgements are pooled: the label with a strict majority wins (``a``/``b`` become a
chosen/rejected record; ``tie``/``both_bad``/no majority produce no preference pair and are
counted). A rewrite of the better answer is a *new chosen*: it adds a record
``chosen=rewrite, rejected=the worse candidate``. Nothing is dropped without being counted.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from onbrand.annotate.db import Annotator, Assignment, Judgement, Project, Task
from onbrand.artifacts import atomic_write_text
from onbrand.data.records import canonicalize
from onbrand.stats.agreement import agreement_report


def canonical(record: dict[str, Any]) -> dict[str, Any]:
    """Validate + id with ``onbrand.data.records.canonicalize`` (the importer's own rules)."""
    return canonicalize(record, source=record.get("source"))


def _iso(t: _dt.datetime) -> str:
    if t.tzinfo is None:  # SQLite drops the zone; we always store UTC
        t = t.replace(tzinfo=_dt.UTC)
    return t.isoformat(timespec="seconds")


def _record(project: Project, task: Task, chosen: str, rejected: str, js: list, names: dict) -> dict:
    prompt = task.prompt
    chosen_m = [{"role": "assistant", "content": chosen}]
    rejected_m = [{"role": "assistant", "content": rejected}]
    src = task.source or {}
    return {
        "prompt": prompt,
        "chosen": chosen_m,
        "rejected": rejected_m,
        "brand": project.brand_id,
        "channel": task.channel,
        "annotators": sorted({names[j.annotator_id] for j in js}),
        "reason_tags": sorted({t for j in js for t in (j.reason_tags or [])}),
        "created_at": _iso(max(j.created_at for j in js)),
        "source": {
            "file": str(src.get("file") or f"annotate:{project.name}"),
            "line": int(src.get("line") or task.id),
        },
    }


def export_records(s: Session, project: Project) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(records, counts) for every judged task of ``project``."""
    names = {a.id: a.name for a in s.scalars(select(Annotator).where(Annotator.project_id == project.id))}
    by_task: dict[int, list[Judgement]] = defaultdict(list)
    for j in s.scalars(
        select(Judgement).join(Task).where(Task.project_id == project.id).order_by(Judgement.id)
    ):
        by_task[j.task_id].append(j)
    counts = Counter()
    records = []
    for task_id in sorted(by_task):
        js = by_task[task_id]
        task = s.get(Task, task_id)
        label, votes = Counter(j.choice for j in js).most_common(1)[0]
        if votes * 2 <= len(js):
            counts["no_majority"] += 1
            continue
        if label not in ("a", "b"):
            counts[label] += 1
            continue
        winners = [j for j in js if j.choice == label]
        better, worse = (
            (task.candidate_a, task.candidate_b) if label == "a" else (task.candidate_b, task.candidate_a)
        )
        candidates = [("pairs", _record(project, task, better, worse, winners, names))]
        candidates += [
            ("rewrites", _record(project, task, j.rewrite, worse, [j], names))
            for j in winners
            if j.rewrite and j.rewrite not in (better, worse)
        ]
        for kind, rec in candidates:
            try:
                records.append(canonical(rec))
                counts[kind] += 1
            except ValueError as e:  # e.g. a rewrite identical to the rejected answer
                counts[f"invalid:{getattr(e, 'reason', 'error')}"] += 1
    counts["tasks_judged"] = len(by_task)
    counts["records"] = len(records)
    return records, dict(counts)


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def project_stats(s: Session, project: Project) -> dict[str, Any]:
    """Progress and throughput per annotator, label counts, position bias and agreement."""
    rows = []
    annotators = list(
        s.scalars(select(Annotator).where(Annotator.project_id == project.id).order_by(Annotator.id))
    )
    for a in annotators:
        assigned = s.scalar(select(func.count(Assignment.id)).where(Assignment.annotator_id == a.id))
        times = list(s.scalars(select(Judgement.created_at).where(Judgement.annotator_id == a.id)))
        span_h = (max(times) - min(times)).total_seconds() / 3600 if len(times) > 1 else 0.0
        rows.append(
            {
                "annotator": a.name,
                "assigned": assigned,
                "judged": len(times),
                "per_hour": round(len(times) / span_h, 1) if span_h > 0 else None,
                "last": _iso(max(times)) if times else None,
            }
        )
    judgements = list(s.scalars(select(Judgement).join(Task).where(Task.project_id == project.id)))
    names = {a.id: a.name for a in annotators}
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
        "agreement": agreement_report([(j.task_id, names[j.annotator_id], j.choice) for j in judgements]),
    }
