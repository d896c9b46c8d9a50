"""``onbrand annotate export --to label-studio|argilla``: the project's tasks in each tool's import
shape, and the round trip: annotations in the tool's export shape -> ``onbrand data import`` ->
the expected canonical records (chosen/rejected right for left/right and both ranking shapes)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BRAND = REPO / "configs" / "brands" / "aurora.yaml"
SYSTEM = {"role": "system", "content": "Answer as Aurora Home."}


def _pairs() -> list[dict]:
    """Six pairs; "good" is the candidate the simulated annotators prefer. One multi-turn prompt."""
    out = []
    for i in range(6):
        prompt = [{"role": "user", "content": f"Question {i}: does the Dawn lamp have a timer?"}]
        if i == 5:
            prompt = [
                SYSTEM,
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ] + prompt
        good, bad = f"Yes, timer answer {i}, calm and precise.", f"BUY NOW!!! answer {i}"
        out.append(
            {
                "prompt": prompt,
                "candidates": [good, bad] if i % 2 else [bad, good],
                "channel": "product_question",
            }
        )
    return out


@pytest.fixture
def project_db(tmp_path):
    from onbrand.cli import main

    url = f"sqlite:///{tmp_path / 'ann.db'}"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in _pairs()), encoding="utf-8")
    assert main(["annotate", "project", "--db", url, "--brand", str(BRAND)]) == 0
    assert main(["annotate", "queue", "--db", url, "--project", "aurora", "--pairs", str(pairs)]) == 0
    return url


def _good(text: str) -> bool:
    return not text.startswith("BUY NOW")


def _export(url: str, to: str, out: Path, capsys) -> None:
    from onbrand.cli import main

    assert (
        main(["annotate", "export", "--db", url, "--project", "aurora", "--to", to, "--out", str(out)]) == 0
    )
    assert f"wrote 6 tasks to {out}" in capsys.readouterr().out


def _import(path: Path, fmt: str, out: Path) -> tuple[list[dict], dict]:
    from onbrand.cli import main

    assert main(["data", "import", str(path), "--format", fmt, "--out", str(out)]) == 0
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return recs, json.loads((out / "import_summary.json").read_text())


def _check_records(recs: list[dict]) -> None:
    by_q = {r["prompt"][-1]["content"]: r for r in recs}
    for p in _pairs():
        rec = by_q[p["prompt"][-1]["content"]]
        assert rec["prompt"] == p["prompt"]  # exactly, the multi-turn one included
        assert _good(rec["chosen"][0]["content"]) and not _good(rec["rejected"][0]["content"])
        assert rec["brand"] == "aurora" and rec["channel"] == "product_question"


def test_label_studio_export_and_round_trip(project_db, tmp_path, capsys):
    out = tmp_path / "ls_tasks.json"
    _export(project_db, "label-studio", out, capsys)
    tasks = json.loads(out.read_text())
    assert len(tasks) == 6 and all(set(t) == {"data"} for t in tasks)
    data = [t["data"] for t in tasks]
    assert {"prompt", "answer1", "answer2", "channel", "brand", "onbrand_task_id"} <= set(data[0])
    firsts = {_good(d["answer1"]) for d in data}
    assert firsts == {True, False}  # the shown order is drawn per task, not the candidate order
    multi = [d for d in data if "prompt_messages" in d]
    assert len(multi) == 1 and multi[0]["prompt"].startswith("System: Answer as Aurora Home.")
    config = ET.fromstring((tmp_path / "ls_tasks.xml").read_text())
    (pw,) = config.iter("Pairwise")
    assert pw.get("toName") == "answer1,answer2"
    assert {t.get("value") for t in config.iter("Text")} == {"$prompt", "$answer1", "$answer2"}
    # Label Studio's JSON export after two annotators judged every task (the second one cancels one)
    exported = []
    for i, t in enumerate(tasks):
        side = "left" if _good(t["data"]["answer1"]) else "right"
        anns = [_ls_annotation(1, side)]
        anns.append(_ls_annotation(2, None, cancelled=True) if i == 0 else _ls_annotation(2, side))
        exported.append(
            {"id": 100 + i, "data": t["data"], "annotations": anns, "drafts": [], "predictions": []}
        )
    path = tmp_path / "project-1-at-2026-11-02.json"
    path.write_text(json.dumps(exported, indent=2), encoding="utf-8")
    recs, summary = _import(path, "label-studio", tmp_path / "imported_ls")
    assert len(recs) == 6 and summary["duplicates"] == 5 and summary["skipped_by_reason"] == {"cancelled": 1}
    _check_records(recs)
    assert all(r["annotators"] == ["1"] for r in recs)


def _ls_annotation(who: int, side: str | None, cancelled: bool = False) -> dict:
    result = [] if side is None else [{"type": "pairwise", "from_name": "comparison", "to_name": "comparison",
                                       "value": {"selected": side}}]  # fmt: skip
    return {
        "completed_by": who,
        "result": result,
        "was_cancelled": cancelled,
        "created_at": "2026-11-02T09:00:00Z",
    }


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_argilla_export_and_round_trip(project_db, tmp_path, capsys, suffix):
    out = tmp_path / f"argilla_records{suffix}"
    _export(project_db, "argilla", out, capsys)
    text = out.read_text()
    records = json.loads(text) if suffix == ".json" else [json.loads(x) for x in text.splitlines()]
    assert len(records) == 6 and records[0]["id"].startswith("aurora-")
    assert set(records[0]["fields"]) == {"prompt", "response1", "response2"}
    assert records[0]["metadata"]["brand"] == "aurora" and records[0]["responses"] == {}
    settings = (tmp_path / "argilla_records.settings.py").read_text()
    compile(settings, "settings.py", "exec")  # valid Python
    assert 'rg.RankingQuestion(name="preference", values=["response1", "response2"])' in settings
    # Argilla's to_json after annotation: rankings best first, in both value shapes, plus a draft
    for i, r in enumerate(records):
        order = ["response1", "response2"] if _good(r["fields"]["response1"]) else ["response2", "response1"]
        ranked = [{"value": v, "rank": k} for k, v in enumerate(order, 1)]
        r["responses"] = {
            "preference": [
                {"value": order if i % 2 else ranked, "user_id": "u1", "status": "submitted"},
                {"value": order[::-1], "user_id": "u2", "status": "draft"},
            ]
        }
    path = tmp_path / "export.json"
    path.write_text(json.dumps(records), encoding="utf-8")  # one line, as to_json writes it
    recs, summary = _import(path, "argilla", tmp_path / "imported_ar")
    assert len(recs) == 6 and summary["skipped_by_reason"] == {"draft": 6} and summary["quarantined"] == 0
    _check_records(recs)
    assert all(r["annotators"] == ["u1"] for r in recs)


def test_gold_items_are_not_exported(project_db, tmp_path, capsys):
    from onbrand.annotate.db import Task, open_db

    with open_db(project_db)() as s:
        task = s.get(Task, 1)
        task.gold = "a"
        s.commit()
    from onbrand.cli import main

    out = tmp_path / "t.json"
    assert (
        main(
            [
                "annotate",
                "export",
                "--db",
                project_db,
                "--project",
                "aurora",
                "--to",
                "label-studio",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "gold items not exported: 1" in capsys.readouterr().out
    assert sorted(t["data"]["onbrand_task_id"] for t in json.loads(out.read_text())) == [2, 3, 4, 5, 6]
