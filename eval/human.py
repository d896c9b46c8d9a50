"""The blind human A/B round: an eval report's base/aligned answers go to annotators through the
annotation app, and their judgements come back into the report.

::

    onbrand eval publish --report runs/demo/eval --db sqlite:///annotations.db --project aurora-ab \\
        --annotators alice bob carol --overlap 0.25
    onbrand eval human   --report runs/demo/eval --db sqlite:///annotations.db --project aurora-ab

``publish`` loads one task per prompt of ``samples.jsonl``; which candidate (a or b) holds the
aligned answer is drawn per item (seeded) and kept in the task's ``source`` and in
``human_round.json``, never shown to annotators (the app shows prompt, channel and the two texts,
in a left/right order drawn per annotator). Identical answers are not published (counted).

``human`` reads the judgements back. Per judgement: aligned 1, tie 1/2, base 0; "both bad" is
counted apart. Per item: the mean of its votes; the human win rate is the mean over items, with a
bootstrap CI over items. The item's majority label (strict majority of its votes) is the
reference each automatic judge (reward model, LLM judge, brand rules) is compared with: accuracy
and Cohen's kappa with CIs. Inter-annotator agreement (Krippendorff's alpha, pairwise kappa) is the
app's own. The result goes into ``report.json`` (``metrics.human``) and ``report.md``, and the
release gate is applied again (``min_human_win_rate_low``, ``min_judge_human_kappa``).
"""

from __future__ import annotations

import os
import random
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from onbrand.annotate import service
from onbrand.annotate.db import Annotator, Judgement, Task, open_db
from onbrand.artifacts import atomic_write_json, now_iso, read_json, sha256_file
from onbrand.data.brand import load_brand
from onbrand.eval.metrics.agreement import SCORE, agreement, labels_from_scores
from onbrand.eval.metrics.power import power_analysis
from onbrand.eval.plots import plot_human_agreement, plot_win_rates
from onbrand.eval.report import read_samples, rerender
from onbrand.eval.runner import apply_gate
from onbrand.stats.agreement import agreement_report
from onbrand.stats.ci import mean_ci

ROUND_FILE = "human_round.json"


def redact_url(url: str) -> str:
    """A database URL without its password (it goes into files people share)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown by its scheme only
        return url.split("://")[0] + "://***"


def report_id(report_dir: Path) -> str:
    """Identifies the answers of one eval report (the hash of its samples.jsonl)."""
    return sha256_file(report_dir / "samples.jsonl")[:16]


def _load(report_dir: str | Path) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    d = Path(report_dir)
    if not (d / "report.json").exists() or not (d / "samples.jsonl").exists():
        raise FileNotFoundError(f"{d}: not an eval report dir (needs report.json and samples.jsonl)")
    return d, read_json(d / "report.json"), read_samples(d)


def _brand_path(report: dict[str, Any], brand: str | None) -> str:
    path = brand or (report.get("inputs") or {}).get("brand")
    if not path or not Path(path).exists():
        raise ValueError(f"brand card {path!r} not found: pass --brand configs/brands/<id>.yaml")
    return str(path)


def publish(report_dir, db_url: str, project: str, brand: str | None = None, annotators: list[str] = (),
            overlap: float = 0.25, per_item: int = 2, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Create project ``project`` with one task per answer pair; returns counts and annotator tokens."""
    d, report, rows = _load(report_dir)
    rid, rng = report_id(d), random.Random(seed)
    items, skipped = [], Counter()
    for i, row in enumerate(rows):
        al, base = row["aligned"][0], row["base"][0]
        side = rng.choice("ab")  # drawn for every row, so a row's side never depends on the others
        if not al.strip() or not base.strip():
            skipped["empty"] += 1
            continue
        if al.strip() == base.strip():
            skipped["identical"] += 1
            continue
        a, b = (al, base) if side == "a" else (base, al)
        prompt = [m for m in row["prompt"] if m["role"] != "system"]  # the project shows the brand
        source = {
            "file": f"eval:{rid}",
            "line": i + 1,
            "eval": {"report_id": rid, "item": row["id"], "aligned": side},
        }
        items.append({"prompt": prompt, "a": a, "b": b, "channel": row.get("channel"), "source": source})
    Sessions = open_db(db_url)
    with Sessions() as s:
        proj = service.create_project(
            s, project, service.brand_facts(_brand_path(report, brand)), overlap, seed
        )
        counts = service.add_tasks(s, proj, items)
        tokens = {name: service.add_annotator(s, proj, name)[1] for name in annotators}
        assigned = service.assign(s, proj, overlap, seed, per_item) if annotators else None
    summary = {"project": project, "db": redact_url(db_url), "report_id": rid, "published": counts["added"],
               "duplicates": counts["duplicates"], "not_published": dict(skipped), "assigned": assigned,
               "seed": seed, "created": now_iso()}  # fmt: skip
    atomic_write_json(d / ROUND_FILE, summary)
    return {**summary, "tokens": tokens}


def _votes(s, project, rid: str) -> tuple[dict[int, dict], dict[int, list[tuple[str, str]]]]:
    """({task_id: eval source}, {task_id: [(annotator, label)]}) for this report's tasks."""
    tasks = {t.id: t.source["eval"] for t in s.query(Task).filter(Task.project_id == project.id)
             if (t.source or {}).get("eval", {}).get("report_id") == rid}  # fmt: skip
    if not tasks:
        raise ValueError(f"project {project.name!r} holds no items of this report (report id {rid}): "
                         "was it published from another eval run?")  # fmt: skip
    names = {a.id: a.name for a in s.query(Annotator).filter(Annotator.project_id == project.id)}
    votes: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for j in s.query(Judgement).filter(Judgement.task_id.in_(list(tasks))).order_by(Judgement.id):
        side = tasks[j.task_id]["aligned"]
        label = {"a": "aligned" if side == "a" else "base", "b": "base" if side == "a" else "aligned"}.get(
            j.choice, j.choice
        )
        votes[j.task_id].append((names[j.annotator_id], label))
    return tasks, votes


def _majority(labels: list[str]) -> str:
    top, n = Counter(labels).most_common(1)[0]
    return top if 2 * n > len(labels) else "none"


def _judge_labels(report: dict[str, Any], rows: list[dict], card) -> tuple[dict[str, list], dict[str, str]]:
    """Per samples.jsonl row, each automatic judge's label; and why a judge is missing."""
    m, out, skipped = report.get("metrics", {}), {}, {}
    if m.get("rewards"):
        out["reward_model"] = labels_from_scores(m["rewards"]["aligned"], m["rewards"]["base"])
    else:
        skipped["reward_model"] = "the report has no reward-model scores"
    if m.get("judge"):
        out["llm_judge"] = list(m["judge"]["labels"])
    else:
        skipped["llm_judge"] = "the eval ran without the LLM judge (metrics.judge=false)"
    if card is not None:

        def violations(text, ch):
            return -sum(not c.passed for c in card.check(text, ch))

        out["brand_rules"] = labels_from_scores([violations(r["aligned"][0], r.get("channel")) for r in rows],
                                                [violations(r["base"][0], r.get("channel")) for r in rows])  # fmt: skip
    else:
        skipped["brand_rules"] = "no brand card"
    return out, skipped


def collect(report_dir, db_url: str, project: str, brand: str | None = None, n_boot: int = 1000,
            ci: float = 0.95, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """``metrics.human`` for the report in ``report_dir`` from the project's judgements."""

    d, report, rows = _load(report_dir)
    rid = report_id(d)
    with open_db(db_url)() as s:
        try:
            proj = service.get_project(s, project)
        except LookupError as e:  # a user error: one line, no traceback
            raise ValueError(str(e)) from None
        tasks, votes = _votes(s, proj, rid)
    all_votes = [lab for v in votes.values() for _, lab in v]
    scored = {t: [SCORE[lab] for _, lab in v if lab != "both_bad"] for t, v in votes.items()}
    item_scores = [sum(x) / len(x) for x in scored.values() if x]
    majority = {t: _majority([lab for _, lab in v]) for t, v in votes.items()}
    index = {r["id"]: i for i, r in enumerate(rows)}
    row_of = {t: index[src["item"]] for t, src in tasks.items()}
    card = None
    try:
        card = load_brand(_brand_path(report, brand))
    except (ValueError, FileNotFoundError):
        pass
    judge_labels, skipped = _judge_labels(report, rows, card)
    judged = sorted(votes)
    human_ref = [majority[t] if majority[t] in SCORE else None for t in judged]
    judges = {
        k: agreement([labels[row_of[t]] for t in judged], human_ref, n_boot, ci, seed)
        for k, labels in judge_labels.items()
    }
    return {
        "project": project, "db": redact_url(db_url), "report_id": rid,
        "n_published": len(tasks), "n_items": len(votes), "n_judgements": len(all_votes),
        "annotators": sorted({a for v in votes.values() for a, _ in v}),
        "votes": {k: all_votes.count(k) for k in ("aligned", "tie", "base", "both_bad")},
        "win_rate": mean_ci(item_scores, n_boot, ci, seed).to_dict() if item_scores else None,
        "n_scored_items": len(item_scores),
        "majority": {k: list(majority.values()).count(k) for k in ("aligned", "tie", "base", "both_bad", "none")},
        "agreement": agreement_report([(t, a, lab) for t, v in votes.items() for a, lab in v]),
        "judges": judges, "skipped_judges": skipped,
        "not_published": (read_json(d / ROUND_FILE).get("not_published") if (d / ROUND_FILE).exists() else {}),
    }  # fmt: skip


def update_report(report_dir, human: dict[str, Any], gate: str | None = None) -> dict[str, Any]:
    """Put ``human`` into the report (json, md, plots) and apply the gate again."""

    d, report, _ = _load(report_dir)
    m = report["metrics"]
    m["human"] = human
    if "power" in m:
        m["power"] = power_analysis(m, report["inputs"]["n_prompts"])
    plots = list(report.get("plots", []))
    with tempfile.TemporaryDirectory(dir=d) as tmp:  # drawn aside, then moved in: no half-written PNG
        for name, plot in (("win_rates.png", plot_win_rates), ("human_agreement.png", plot_human_agreement)):
            if plot(m, Path(tmp) / name):
                os.replace(Path(tmp) / name, d / name)
                plots += [] if name in plots else [name]
    report["plots"] = plots
    gate = gate or (report.get("gate") or {}).get("config")
    if gate:
        report["gate"] = apply_gate(report, gate)
    rerender(d, report)
    return report
