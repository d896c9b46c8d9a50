"""Gold items, annotator quality, adjudication and quality thresholds in export (real SQLite)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from onbrand.annotate import gold, quality, review, service
from onbrand.annotate.access import Principal
from onbrand.annotate.db import Annotator, Assignment, AuditEntry, Task, open_db
from onbrand.annotate.pooling import export_records, project_stats
from onbrand.stats.agreement import krippendorff_alpha


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'gold.db'}"
    return url, open_db(url)


def gold_items(n: int, answer: str = "a", prefix: str = "g") -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"{prefix} {i}: is the Halo lamp dimmable?"}],
            "a": f"Yes: Halo dims from 100% to 5% ({i}).",
            "b": f"idk lol {i}",
            "channel": "product_question",
            "source": {"file": "gold.jsonl", "line": i + 1},
            "gold": answer,
        }
        for i in range(n)
    ]


def _project(s, brand_facts, name="p", annotators=("alice", "bob"), **kw):
    p = service.create_project(s, name, brand_facts, overlap=kw.pop("overlap", 0.0), seed=kw.pop("seed", 7))
    anns = [service.add_annotator(s, p, a)[0] for a in annotators]
    return p, anns


def _judge(s, ann, choice_of) -> int:
    """Judge every open item of ``ann``: ``choice_of(task)`` is the candidate choice (a|b|tie|both_bad)."""
    n = 0
    while (nxt := service.next_assignment(s, ann)) is not None:
        asg, task = nxt
        choice = choice_of(task)
        screen = {"a": "left" if asg.left == "a" else "right", "b": "right" if asg.left == "a" else "left"}
        service.submit(s, ann, asg.id, screen.get(choice, choice))
        n += 1
    return n


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_gold_formats_and_errors(tmp_path):
    rows = [
        {"prompt": "Is Halo dimmable?", "candidates": ["Yes, 5-100%.", "No idea."], "gold": "a"},
        {"prompt": "hi", "chosen": "Hello, how can I help?", "rejected": "what"},  # canonical: gold a
        {"prompt": "x?", "candidates": ["A.", "B."], "gold": "both_bad"},
    ]
    items = gold.read_gold(_write(tmp_path / "gold.jsonl", rows))
    assert [i["gold"] for i in items] == ["a", "a", "both_bad"]
    assert items[1]["a"] == "Hello, how can I help?" and items[1]["source"] == {
        "file": "gold.jsonl",
        "line": 2,
    }
    bad = [
        ({"prompt": "x", "candidates": ["a", "b"]}, r"bad.jsonl:1: gold: missing"),
        ({"prompt": "x", "candidates": ["a", "b"], "gold": "left"}, r"bad.jsonl:1: gold: expected one of"),
        ({"prompt": "x", "candidates": ["a"], "gold": "a"}, r"bad.jsonl:1: candidates"),
    ]
    for row, message in bad:
        with pytest.raises(ValueError, match=message):
            gold.read_gold(_write(tmp_path / "bad.jsonl", [row]))


def test_add_gold_refuses_duplicates_all_or_nothing(db, brand_facts, pairs):
    _, sessions = db
    with sessions() as s:
        p, _ = _project(s, brand_facts)
        service.add_tasks(s, p, pairs(3))
        clash = dict(pairs(3)[1], gold="b", source={"file": "gold.jsonl", "line": 4})
        clash["a"], clash["b"] = clash["b"], clash["a"]  # same pair, other order: still the same task
        with pytest.raises(ValueError, match=r"gold.jsonl:4: this gold item is identical to task \d+"):
            gold.add_gold(s, p, [*gold_items(2), clash])
        with pytest.raises(ValueError, match=r"gold.jsonl:1: this gold item repeats gold.jsonl:1"):
            gold.add_gold(s, p, gold_items(1) + gold_items(1))
        assert s.scalar(select(Task).where(Task.gold.is_not(None))) is None  # nothing half-loaded
        assert gold.add_gold(s, p, gold_items(2, "tie")) == {"added": 2, "answers": {"tie": 2}}
        with pytest.raises(ValueError, match=r"identical to gold task \d+ \(answer tie\)"):
            gold.add_gold(s, p, gold_items(1))
        # Loading a gold pair as a regular task is a duplicate, and says it is one of gold.
        again = [{k: v for k, v in g.items() if k != "gold"} for g in gold_items(1)]
        assert service.add_tasks(s, p, again) == {"added": 0, "duplicates": 1, "duplicates_of_gold": 1}
        with pytest.raises(ValueError, match=r"gold_rate must be in \[0.0, 0.5\]"):
            gold.set_gold_rate(s, p, 0.6)


def test_gold_target_rounding():
    # gold / (regular + gold) = r  <=>  gold = regular * r / (1 - r), half rounded up.
    assert gold.gold_target(20, 0.2) == 5 and gold.gold_target(40, 0.2) == 10
    assert gold.gold_target(10, 0.2) == 3  # 2.5 -> 3
    assert gold.gold_target(0, 0.5) == 0 and gold.gold_target(7, 0.0) == 0 and gold.gold_target(7, 0.5) == 7


def test_gold_mixing_rate_interleaving_and_shortfall(db, brand_facts, pairs):
    _, sessions = db
    with sessions() as s:
        p, anns = _project(s, brand_facts)
        service.add_tasks(s, p, pairs(40))
        gold.add_gold(s, p, gold_items(3))
        gold.set_gold_rate(s, p, 0.2)
        out = service.assign(s, p)
        # 20 regular items each -> round(20 * 0.2 / 0.8) = 5 gold due; the pool has 3: all 3, short 2.
        assert out["tasks"] == 40 and out["assignments"] == 40  # gold is not counted as a regular task
        assert out["gold"] == {"rate": 0.2, "pool": 3, "assigned": 6, "shortfall": {"alice": 2, "bob": 2}}
        gold.add_gold(s, p, gold_items(10, "b", prefix="h"))
        out = service.assign(s, p)  # no new regular work: tops gold up to 5 each
        assert out["tasks"] == 0 and out["gold"]["assigned"] == 4 and out["gold"]["shortfall"] == {}
        gold_ids = set(s.scalars(select(Task.id).where(Task.gold.is_not(None))))
        for ann in anns:
            rows = list(s.scalars(select(Assignment).where(Assignment.annotator_id == ann.id)))
            mine = [r.task_id for r in rows if r.task_id in gold_ids]
            assert len(rows) == 25 and len(mine) == len(set(mine)) == 5  # 20% of the queue, no repeats
        # A fresh project: 40 regular items, 2 annotators, rate 0.2 -> 5 gold each, interleaved.
        q, anns = _project(s, brand_facts, name="q")
        service.add_tasks(s, q, pairs(40))
        gold.add_gold(s, q, gold_items(12))
        gold.set_gold_rate(s, q, 0.2)
        out = service.assign(s, q)
        assert out["gold"]["assigned"] == 10 and out["gold"]["shortfall"] == {}
        gold_ids = set(s.scalars(select(Task.id).where(Task.project_id == q.id, Task.gold.is_not(None))))
        regular_tasks = set()
        for ann in anns:
            rows = list(s.scalars(select(Assignment).where(Assignment.annotator_id == ann.id)))
            assert sorted(r.position for r in rows) == list(range(25))  # one queue, no gaps
            gold_pos = sorted(r.position for r in rows if r.task_id in gold_ids)
            assert len(gold_pos) == 5 and gold_pos != list(range(20, 25))  # mixed in, not appended
            regular_tasks |= {r.task_id for r in rows if r.task_id not in gold_ids}
        assert len(regular_tasks) == 40  # every regular task assigned once; no gold among them


def test_gold_is_never_revealed_by_the_api(env):
    with env.sessions() as s:
        p = service.get_project(s, env.project)
        gold.add_gold(s, p, gold_items(6, "b"))
        gold.set_gold_rate(s, p, 0.5)
        assert service.assign(s, p)["gold"]["assigned"] > 0
        gold_ids = set(s.scalars(select(Task.id).where(Task.gold.is_not(None))))
        asg = {a.id: a.task_id for a in s.scalars(select(Assignment).where(Assignment.task_id.in_(gold_ids)))}
    seen_gold = 0
    h = env.auth("alice")
    while (r := env.client.get("/api/next", headers=h)).status_code == 200:
        item = r.json()
        one = env.client.get(f"/api/items/{item['assignment_id']}", headers=h)
        for body in (item, one.json()):
            assert "gold" not in json.dumps(body).lower()  # neither key nor value
        page = env.client.get("/annotate", headers=h)  # the HTML page of the same item
        assert page.status_code == 200 and item["left"] in page.text and "gold" not in page.text.lower()
        seen_gold += item["assignment_id"] in asg
        env.client.post(
            "/api/judgements",
            json={
                "assignment_id": item["assignment_id"],
                "choice": "left",
                "submission_id": f"s-{item['assignment_id']:06d}",
            },
            headers=h,
        )
    assert seen_gold > 0  # alice did get gold items, looking like any other


def test_gold_accuracy_wilson_and_speed(db, brand_facts, pairs):
    _, sessions = db
    with sessions() as s:
        p, (alice, bob) = _project(s, brand_facts)
        service.add_tasks(s, p, pairs(10))
        gold.add_gold(s, p, gold_items(10))  # known answer: a
        gold.set_gold_rate(s, p, 0.5)  # 5 regular each -> 5 gold each
        service.assign(s, p)
        wrong = {"alice": 1, "bob": 5}  # gold items each one gets wrong (of 5)
        for ann in (alice, bob):
            left = [wrong[ann.name]]

            def pick(task, left=left):
                if task.gold and left[0] > 0:
                    left[0] -= 1
                    return "b"
                return "a"

            _judge(s, ann, pick)
        st = project_stats(s, p)
    rows = {r["annotator"]: r for r in st["annotators"]}
    # Wilson 95% by hand, p = 4/5, n = 5, z = 1.959964: denominator 1 + z^2/5 = 1.768293;
    # centre (0.8 + z^2/10) / 1.768293 = 0.669655; half z*sqrt(0.16/5 + z^2/100) / 1.768293 = 0.294121.
    assert rows["alice"]["gold_judged"] == 5 and rows["alice"]["gold_accuracy"] == 0.8
    assert rows["alice"]["gold_accuracy_ci95"] == pytest.approx([0.3755, 0.9638], abs=1e-4)
    # 0/5: centre = half = (z^2/10) / 1.768293 -> [0, 0.434482].
    assert rows["bob"]["gold_accuracy"] == 0.0
    assert rows["bob"]["gold_accuracy_ci95"] == pytest.approx([0.0, 0.4345], abs=1e-4)
    assert st["gold"] == {
        "rate": 0.5,
        "items": 10,
        "judgements": 10,
        "accuracy": 0.4,
        "accuracy_ci95": pytest.approx(list(quality.wilson_interval(4, 10)), abs=1e-4),
    }
    assert st["agreement"]["items_overlapping"] == 0  # gold items are kept out of agreement
    # Speed: gaps 10 s, 20 s, 2 h (a new sitting: left out), 20 s -> median 20 s.
    t0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
    times = [t0 + dt.timedelta(seconds=x) for x in (0, 10, 30, 7230, 7250)]
    sp = quality.speed(times)
    assert sp["median_seconds"] == 20.0 and sp["sittings"] == 2
    assert sp["per_hour"] == pytest.approx(5 / (7250 / 3600), abs=0.05)
    assert quality.speed([]) == {"median_seconds": None, "sittings": 0, "per_hour": None}
    assert quality.wilson_interval(0, 0) is None


def test_four_annotators_on_one_item_majority_and_alpha(db, brand_facts, pairs, tmp_path, capsys):
    from onbrand.cli import main

    url, sessions = db
    votes = {  # item -> the four annotators' choices
        0: ["a", "a", "a", "b"],
        1: ["b", "b", "b", "b"],
        2: ["tie", "tie", "a", "tie"],
        3: ["a", "b", "both_bad", "a"],
    }
    names = ["ann", "ben", "cat", "dan"]
    with sessions() as s:
        p, anns = _project(s, brand_facts, annotators=names)
        service.add_tasks(s, p, pairs(4))
    assert (
        main(["annotate", "assign", "--db", url, "--project", "p", "--overlap", "1", "--per-item", "4"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["assignments"] == 16
    with sessions() as s:
        p = service.get_project(s, "p")
        tasks = sorted(s.scalars(select(Task.id)))
        for k, ann in enumerate(s.scalars(select(Annotator).order_by(Annotator.id))):
            assert _judge(s, ann, lambda t, k=k: votes[tasks.index(t.id)][k]) == 4
        st = project_stats(s, p)
        records, counts = export_records(s, p)
    ag = st["agreement"]
    units = list(votes.values())
    assert ag["items_overlapping"] == 4 and len(ag["cohen_kappa"]) == 6  # every pair of the four
    assert ag["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(units), abs=1e-4)
    ordinal = [[v for v in u if v != "both_bad"] for u in units]
    assert ag["krippendorff_alpha_ordinal"] == pytest.approx(
        krippendorff_alpha(ordinal, "ordinal", ["a", "tie", "b"]), abs=1e-4
    )
    assert ag["ordinal"] == {"scale": ["a", "tie", "b"], "items": 4, "values": 15, "excluded": 1}
    rows = {r["annotator"]: r for r in st["annotators"]}
    # ann vs the others: item 0 (a | a,a,b -> a) yes, 1 yes, 2 (tie | tie,a,tie -> tie) yes,
    # 3 (a | b,both_bad,a: no majority) left out -> 3/3. dan: 0 (b | a,a,a) no, 1 yes, 2 yes, 3 out.
    assert (rows["ann"]["majority_agreement"], rows["ann"]["majority_compared"]) == (1.0, 3)
    assert rows["ann"]["majority_no_majority"] == 1
    # ben: item 3 (b | a,both_bad,a -> a) no -> 3/4; cat: 2 (a | tie x3) no, 3 (both_bad | a,b,a) no.
    assert (rows["ben"]["majority_agreement"], rows["ben"]["majority_compared"]) == (0.75, 4)
    assert (rows["cat"]["majority_agreement"], rows["cat"]["majority_compared"]) == (0.5, 4)
    assert (rows["dan"]["majority_agreement"], rows["dan"]["majority_compared"]) == (0.6667, 3)
    assert counts == {"pairs": 2, "tie": 1, "no_majority": 1, "tasks_judged": 4, "records": 2}
    assert sorted(r["annotators"] for r in records) == [["ann", "ben", "cat"], ["ann", "ben", "cat", "dan"]]
    # Optional agreement-with-majority threshold: cat (2/4) and dan (2/3) fall below 0.7: left out.
    with sessions() as s:
        _, counts = export_records(
            s, service.get_project(s, "p"), min_majority_agreement=0.7, min_majority_items=3
        )
    assert counts["dropped_annotator:cat"] == 4 and counts["dropped_annotator:dan"] == 4
    with pytest.raises(ValueError, match="5 annotators per item needs at least 5"):
        with sessions() as s:
            service.assign(s, service.get_project(s, "p"), overlap=1.0, per_item=5)


def test_adjudication_wins_over_the_majority(db, brand_facts, pairs):
    _, sessions = db
    with sessions() as s:
        p, (alice, bob) = _project(s, brand_facts, overlap=1.0)
        service.add_tasks(s, p, pairs(1))
        rita = service.add_annotator(s, p, "rita")[0]
        rita.role = "reviewer"
        s.commit()
        service.assign(s, p)
        assert s.scalar(select(Assignment).where(Assignment.annotator_id == rita.id)) is None  # no queue
        _judge(s, alice, lambda t: "a")
        _judge(s, bob, lambda t: "b")
        records, counts = export_records(s, p)
        assert records == [] and counts["no_majority"] == 1  # a 1:1 split, nobody decides
        task = s.scalars(select(Task)).one()
        reviewer = Principal(role="reviewer", name="rita", project_id=p.id, member_id=rita.id)
        review.adjudicate(s, reviewer, task.id, "b", note="B names the dimmer range")
        records, counts = export_records(s, p)
        assert counts == {"adjudicated": 1, "pairs": 1, "tasks_judged": 1, "records": 1}
        (rec,) = records
        assert (
            rec["chosen"][0]["content"] == task.candidate_b
            and rec["rejected"][0]["content"] == task.candidate_a
        )
        assert rec["annotators"] == ["bob", "reviewer:rita"]
        review.adjudicate(s, reviewer, task.id, "both_bad")  # a later verdict replaces it
        records, counts = export_records(s, p)
        assert records == [] and counts["adjudicated"] == 1 and counts["adjudicated_both_bad"] == 1


def test_export_threshold_drops_a_bad_annotator(db, brand_facts, pairs, tmp_path, capsys):
    from onbrand.cli import main

    url, sessions = db
    with sessions() as s:
        p, (alice, carol) = _project(s, brand_facts, annotators=("alice", "carol"), overlap=1.0)
        service.add_tasks(s, p, pairs(10))
        gold.add_gold(s, p, gold_items(6))
        gold.set_gold_rate(s, p, 0.375)  # 10 regular each -> round(10 * 0.6) = 6 gold each
        service.assign(s, p)
        _judge(s, alice, lambda t: "a")  # right on every gold item
        _judge(s, carol, lambda t: "b")  # wrong on every gold item, and disagrees with alice
        records, counts = export_records(s, p)
        assert records == [] and counts["no_majority"] == 10 and counts["gold_items"] == 6
        records, counts = export_records(s, p, min_gold_accuracy=0.8)
        assert counts == {
            "dropped_annotator:carol": 10,
            "gold_items": 6,
            "pairs": 10,
            "tasks_judged": 16,
            "records": 10,
        }
        assert all(r["annotators"] == ["alice"] for r in records)
        # Fewer gold judgements than --min-gold-items: nobody is dropped, both reported unchecked.
        _, counts = export_records(s, p, min_gold_accuracy=0.8, min_gold_items=7)
        assert counts["unchecked_annotator:alice"] == counts["unchecked_annotator:carol"] == 10
        assert counts["no_majority"] == 10
    out = tmp_path / "ann.jsonl"
    args = ["annotate", "export", "--db", url, "--project", "p", "--out", str(out)]
    assert main([*args, "--min-gold-accuracy", "0.8"]) == 0
    assert '"dropped_annotator:carol": 10' in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 10
    assert main([*args, "--min-gold-accuracy", "1.5"]) == 2  # clear error, exit 2
    assert "min_gold_accuracy must be in [0.0, 1.0]" in capsys.readouterr().err
    assert main(["annotate", "stats", "--db", url, "--project", "p"]) == 0
    text = capsys.readouterr().out
    assert "gold: 6 items at rate 0.375; 12 judged, accuracy 0.5" in text
    assert "carol" in text and "0.0 (0.0-0.3903, 6)" in text


def test_cli_gold_and_project_gold_rate(tmp_path, capsys, repo_root):
    from onbrand.cli import main

    db = f"sqlite:///{tmp_path / 'c.db'}"
    brand = str(repo_root / "configs" / "brands" / "aurora.yaml")
    assert main(["annotate", "project", "--db", db, "--brand", brand, "--gold-rate", "0.7"]) == 2
    assert "gold_rate must be in [0.0, 0.5]" in capsys.readouterr().err
    assert main(["annotate", "project", "--db", db, "--brand", brand, "--gold-rate", "0.1"]) == 0
    assert "project 'aurora'" in capsys.readouterr().out
    path = _write(
        tmp_path / "gold.jsonl",
        [
            {"prompt": "Is Halo dimmable?", "candidates": ["Yes, 5-100%.", "No idea."], "gold": "a"},
            {"prompt": "hi", "chosen": "Hello, how can I help?", "rejected": "what"},
        ],
    )
    assert (
        main(["annotate", "gold", "--db", db, "--project", "aurora", "--pairs", str(path), "--rate", "0.25"])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"added": 2, "answers": {"a": 2}, "gold_rate": 0.25}
    assert main(["annotate", "gold", "--db", db, "--project", "aurora", "--pairs", str(path)]) == 2
    assert "gold.jsonl:1: this gold item is identical to gold task" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "x", "candidates": ["A.", "B."], "gold": "maybe"}])
    assert main(["annotate", "gold", "--db", db, "--project", "aurora", "--pairs", str(bad)]) == 2
    assert "bad.jsonl:1: gold: expected one of a, b, tie, both_bad" in capsys.readouterr().err
    with open_db(db)() as s:
        rows = [r.action for r in s.scalars(select(AuditEntry))]
    assert rows.count("project.gold_rate") == 2 and rows.count("gold.add") == 1


def test_admin_page_shows_quality_numbers(db, brand_facts, pairs):
    """The /admin page renders project_stats' quality numbers: per annotator gold judged, gold
    accuracy with its Wilson interval, agreement with the majority (n), median seconds; the
    project's nominal and ordinal alpha. Three annotators judge 2 shared items and 2 gold items."""
    from fastapi.testclient import TestClient

    from onbrand.annotate.app import create_app
    from onbrand.annotate.db import Judgement

    url, sessions = db
    votes = {0: ["a", "a", "tie"], 1: ["b", "b", "b"]}  # regular item -> ann, ben, cat
    gold_votes = {"ann": ["a", "a"], "ben": ["a", "b"], "cat": ["b", "b"]}  # known answer: a
    with sessions() as s:
        p, anns = _project(s, brand_facts, annotators=("ann", "ben", "cat"))
        service.add_tasks(s, p, pairs(2))
        gold.add_gold(s, p, gold_items(2))
        gold.set_gold_rate(s, p, 0.5)
        service.assign(s, p, overlap=1.0, per_item=3)
        regular = sorted(s.scalars(select(Task.id).where(Task.gold.is_(None))))
        for k, ann in enumerate(anns):
            left = list(gold_votes[ann.name])

            def pick(task, k=k, left=left):
                return left.pop(0) if task.gold else votes[regular.index(task.id)][k]

            assert _judge(s, ann, pick) == 4
            # Judged 10, 20 and 40 s apart: median 20 s between judgements (the clock is set here).
            t0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
            mine = s.scalars(select(Judgement).where(Judgement.annotator_id == ann.id).order_by(Judgement.id))
            for j, sec in zip(mine, (0, 10, 30, 70), strict=True):
                j.created_at = t0 + dt.timedelta(seconds=sec)
        s.commit()
        s.expire_all()  # read the times back as stored
        st = project_stats(s, p)
        admin = service.set_admin_token(s)
    rows = {r["annotator"]: r for r in st["annotators"]}
    assert [rows[n]["gold_accuracy"] for n in ("ann", "ben", "cat")] == [1.0, 0.5, 0.0]
    with TestClient(create_app(url, [brand_facts]), base_url="http://127.0.0.1") as client:
        r = client.get("/admin", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200
    html = r.text
    for name, acc, maj in (
        ("ann", "1.0", "1.0 (n 1)"),
        ("ben", "0.5", "1.0 (n 1)"),
        ("cat", "0.0", "0.5 (n 2)"),
    ):
        ci = rows[name]["gold_accuracy_ci95"]
        lo, hi = quality.wilson_interval(int(float(acc) * 2), 2)
        assert ci == pytest.approx([lo, hi], abs=1e-4) and 0 < hi - lo < 1  # a real interval
        # name, judged/assigned, per hour, median s, gold judged, gold accuracy [CI], vs majority (n)
        cells = [name, "4 / 4", rows[name]["per_hour"], "20.0", "2", f"{acc} [{ci[0]}, {ci[1]}]", maj]
        assert "<tr><td>" + "</td><td>".join(map(str, cells)) + "</td>" in html
    ag = st["agreement"]
    assert ag["krippendorff_alpha"] is not None and ag["krippendorff_alpha_ordinal"] is not None
    assert ag["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(list(votes.values())), abs=1e-4)
    assert ag["krippendorff_alpha"] != ag["krippendorff_alpha_ordinal"]  # tie sits between a and b
    assert f"Krippendorff alpha nominal <b>{ag['krippendorff_alpha']}</b>" in html
    assert f"ordinal (a &lt; tie &lt; b) <b>{ag['krippendorff_alpha_ordinal']}</b> on 2 items" in html
    assert "Gold: 2 items at rate 0.5; 6 judged, accuracy 0.5 [" in html
    assert "<script>" not in html.split("</main>")[0]  # no inline script: CSP allows only our file
