"""Ask people only where it matters: the selection rule (onbrand.annotate.active), the queue command
--strategy uncertain|random end to end (tiny model, a real tiny reward run, real SQLite), and
synthetic records: accepted by data import, counted apart in the snapshot, kept out of dev/test/judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from onbrand.annotate.active import Judged, candidate_pairs, decide, rank_uncertain, route
from onbrand.annotate.active import select as select_pairs

REPO = Path(__file__).resolve().parents[2]
BRAND = str(REPO / "configs" / "brands" / "aurora.yaml")


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    "rm,rules,expected,reason",
    [
        (2.0, -0.3, "human", "disagree"),  # confident reward model, but the rules prefer b
        (-0.2, 0.3, "human", "disagree"),  # any non-zero opposite preference is a disagreement
        (0.3, 0.0, "human", "uncertain"),  # small reward margin, rules silent
        (0.0, 0.1, "human", "uncertain"),  # rules differ, but not clearly (< rules_clear 0.2)
        (None, 0.0, "human", "uncertain"),  # no reward model and no rule difference
        (-2.0, 0.0, ("synthetic", "b"), "reward_model"),
        (1.5, 0.1, ("synthetic", "a"), "reward_model"),  # both agree
        (1.0, 0.0, ("synthetic", "a"), "reward_model"),  # |margin| == margin decides
        (0.2, 0.3, ("synthetic", "a"), "rules"),  # reward model unsure, rules clear and agree
        (None, -0.5, ("synthetic", "b"), "rules"),
    ],
)
def test_decide(rm, rules, expected, reason):
    j = Judged(rm, rules)
    assert decide(j, margin=1.0, rules_clear=0.2) == expected
    assert route(j, 1.0, 0.2)[0] == reason


def test_rank_and_budget():
    scores = [
        Judged(0.5, 0.0),  # 0 uncertain
        Judged(3.0, 0.0),  # 1 synthetic a
        Judged(0.9, -0.1),  # 2 disagree
        Judged(0.1, 0.0),  # 3 uncertain (smallest margin)
        Judged(-0.3, 0.2),  # 4 disagree (smaller |margin| than 2)
        Judged(-4.0, -0.4),  # 5 synthetic b
        Judged(0.2, 0.5),  # 6 synthetic a (the rules decide)
    ]
    assert rank_uncertain(scores) == [4, 2, 3, 6, 0, 1, 5]
    sel = select_pairs(scores, margin=1.0, rules_clear=0.2)
    assert (
        sel.human == [4, 2, 3, 0] and sel.synthetic == [(1, "a"), (5, "b"), (6, "a")] and sel.left_out == []
    )
    sel = select_pairs(scores, margin=1.0, rules_clear=0.2, budget=3)
    assert sel.human == [4, 2, 3] and sel.left_out == [0]
    c = sel.counts()
    assert (c["human"], c["synthetic"], c["left_out_budget"]) == (3, 3, 1)
    assert c["by_reason"] == {"uncertain": 2, "reward_model": 2, "disagree": 2, "rules": 1}
    with pytest.raises(ValueError, match="rm_margin must be finite"):
        Judged(float("nan"), 0.0)
    with pytest.raises(ValueError, match="budget"):
        select_pairs(scores, budget=-1)


def test_candidate_pairs():
    texts = ["b", "a", " ", "c", "a "]
    scores = [2.0, 3.0, 9.0, 1.0, 5.0]  # the blank and the repeat of "a" are not paired
    assert candidate_pairs(texts, scores, "adjacent") == [(1, 0), (0, 3)]
    assert candidate_pairs(texts, scores, "all") == [(1, 0), (1, 3), (0, 3)]
    with pytest.raises(ValueError, match="pairing"):
        candidate_pairs(texts, scores, "nearest")


# ----------------------------------------------------------------------------- snapshots
def _human(i: int, split_prompt: str = "") -> dict:
    ch = ("product_question", "complaint_reply")[i % 2]
    return {
        "prompt": f"Question {i} about the lamp model {i * 7} {split_prompt}?",
        "chosen": f"A precise, calm answer number {i} with the facts about it.",
        "rejected": f"NUMBER {i}!! BEST EVER!!",
        "channel": ch,
        "annotators": ["a1"],
    }


def _synthetic(i: int) -> dict:
    r = _human(i)
    return {
        **r,
        "chosen": f"Another careful reply {i} that names the lamp.",
        "rejected": f"meh {i}",
        "origin": "synthetic",
    }


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _snap(tmp_path, name, inputs, **kw):
    from onbrand.data.config import DataConfig
    from onbrand.data.snapshot import build_snapshot, load_snapshot

    cfg = DataConfig(
        inputs=[str(p) for p in inputs], brand=BRAND, tokenizer="", out=str(tmp_path / name), **kw
    )
    manifest = build_snapshot(cfg)
    dd, _ = load_snapshot(cfg.out)
    quarantine = [json.loads(x) for x in (Path(cfg.out) / "quarantine.jsonl").read_text().splitlines()]
    return manifest, dd, quarantine


def test_snapshot_keeps_synthetic_pairs_in_train_and_counts_them_apart(tmp_path):
    human = _write(tmp_path / "human.jsonl", [_human(i) for i in range(40)])
    # Synthetic pairs on 20 of the same prompts (as the uncertain queue makes them) and 10 new ones.
    synth = _write(
        tmp_path / "synth.jsonl",
        [_synthetic(i) for i in range(20)] + [_synthetic(i) for i in range(100, 110)],
    )
    kw = {"test_fraction": 0.25, "dev_fraction": 0.15, "judge_fraction": 0.15}
    m0, dd0, _ = _snap(tmp_path, "human-only", [human], **kw)
    m1, dd1, q1 = _snap(tmp_path, "mixed", [human, synth], **kw)
    for split in ("dev", "test", "judge"):
        assert m1["counts"][split]["synthetic"] == 0 and set(dd1[split]["origin"]) <= {None}
        # human records are split exactly as without any synthetic record
        assert sorted(dd1[split]["id"]) == sorted(dd0[split]["id"]) and dd0[split].num_rows > 0
    train = dd1["train"]
    n_syn = sum(o == "synthetic" for o in train["origin"])
    assert m1["counts"]["train"] == {
        **m1["counts"]["train"],
        "synthetic": n_syn,
        "human": train.num_rows - n_syn,
    }
    assert (
        m0["counts"]["train"]["human"] == m1["counts"]["train"]["human"]
        and m0["counts"]["train"]["synthetic"] == 0
    )
    leaks = [q for q in q1 if q["reason"] == "split_leak" and q["file"].endswith("synth.jsonl")]
    assert n_syn + len(leaks) == 30 and n_syn >= 10 and leaks  # the new prompts always stay in train
    assert all(
        q["twin"]["split"] in ("dev", "test", "judge") and q["message"].startswith("synthetic pair")
        for q in leaks
    )
    assert m1["snapshot_id"] != m0["snapshot_id"]


def test_origin_is_part_of_the_snapshot_id_and_eval_files_refuse_synthetic(tmp_path):
    rows = [_human(i) for i in range(12)]
    m_abs, _, _ = _snap(tmp_path, "a", [_write(tmp_path / "a.jsonl", rows)], test_fraction=0.0)
    explicit = [{**r, "origin": "human"} for r in rows]
    m_hum, _, _ = _snap(tmp_path, "b", [_write(tmp_path / "b.jsonl", explicit)], test_fraction=0.0)
    flipped = [{**r, "origin": "synthetic"} if i == 3 else r for i, r in enumerate(rows)]
    m_syn, dd, _ = _snap(tmp_path, "c", [_write(tmp_path / "c.jsonl", flipped)], test_fraction=0.0)
    assert m_abs["snapshot_id"] == m_hum["snapshot_id"] != m_syn["snapshot_id"]
    assert m_syn["counts"]["train"]["synthetic"] == 1 and dd["train"].num_rows == 12
    # a synthetic pair in a fixed test file is quarantined, never evaluated on
    test_file = _write(tmp_path / "test.jsonl", [_human(50), _synthetic(51)])
    m, dd, q = _snap(tmp_path, "d", [_write(tmp_path / "e.jsonl", rows)], test_inputs=[str(test_file)])
    assert dd["test"].num_rows == 1 and m["counts"]["test"] == {
        **m["counts"]["test"],
        "synthetic": 0,
        "human": 1,
    }
    assert [x["line"] for x in q if x["reason"] == "synthetic_in_eval"] == [2]
    bad = _write(tmp_path / "bad.jsonl", [{**rows[0], "origin": "robot"}])
    _, _, q = _snap(tmp_path, "f", [bad, _write(tmp_path / "g.jsonl", rows[1:])], test_fraction=0.0)
    assert [(x["reason"], x["field"]) for x in q] == [("wrong_type", "origin")]


# ----------------------------------------------------------------------------- the queue command
@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model_dir):
    """A reward run on the tiny model (one short epoch: its scores only need to be a real model's)."""
    from datasets import Dataset

    from onbrand.data.snapshot import features
    from onbrand.training import reward_model

    root = tmp_path_factory.mktemp("active-rm")
    snap = root / "snapshot"
    snap.mkdir()
    for k, split in enumerate(("judge", "dev")):  # the reward recipe trains on judge
        rows = [
            {"id": f"r{k}-{i}", "prompt": [{"role": "user", "content": f"Question {i}: is the lamp dimmable?"}],
             "chosen": [{"role": "assistant", "content": "Yes, it dims smoothly. Thank you!"}],
             "rejected": [{"role": "assistant", "content": "no" if i % 2 else "whatever, read the box"}],
             "brand": "toy", "channel": "product_question", "created_at": None, "annotators": ["a1"],
             "reason_tags": [], "source": {"file": "toy.jsonl", "line": i + 1}}
            for i in range(8)
        ]  # fmt: skip
        Dataset.from_list(rows, features=features()).to_parquet(str(snap / f"{split}.parquet"))
    (snap / "manifest.json").write_text(json.dumps({"snapshot_id": "toy", "schema_version": 1, "counts": {}}))
    (root / "toy.yaml").write_text("id: toy\nname: Toy Lamps\ndescription: Toy Lamps makes small lamps.\n")
    args = [  # a short system prompt (toy card): the scorer prepends it to every answer it scores
        f"model={tiny_model_dir}", f"data.snapshot={snap}", f"data.brand={root / 'toy.yaml'}", f"out_dir={root / 'rm'}",
        "train.max_length=96", "train.tracking.wandb=disabled", "train.threads=1", "lora.layers=0",
        "train.precision=fp32", "train.batch_size=4", "train.epochs=1", "lora.r=4", "lora.alpha=8",
    ]  # fmt: skip
    assert reward_model.main(["--config", "configs/reward/demo.yaml", *args]) == 0
    return root / "rm"


def _project(db: str, main, capsys) -> None:
    assert main(["annotate", "project", "--db", db, "--brand", BRAND]) == 0
    assert main(["annotate", "annotator", "--db", db, "--project", "aurora", "ann"]) == 0
    capsys.readouterr()


def _tasks(db: str) -> list:
    from onbrand.annotate.db import Task, open_db

    with open_db(db)() as s:
        return [
            (t.prompt, t.candidate_a, t.candidate_b, t.source)
            for t in s.scalars(select(Task).order_by(Task.id))
        ]


def _pick_margin(judged):
    """A margin between two observed reward margins for which some pairs go to people and some not."""
    mags = sorted({abs(j.rm_margin) for j in judged})
    for lo, hi in zip(mags, mags[1:]):
        sel = select_pairs(judged, (lo + hi) / 2)
        if sel.human and sel.synthetic:
            return (lo + hi) / 2, sel
    pytest.fail(f"no margin splits these pairs: {judged}")


def test_cli_uncertain_queue_end_to_end(tiny_model_dir, reward_run, tmp_path, capsys):
    from onbrand.cli import main

    prompts = _write(
        tmp_path / "p.jsonl",
        [
            {"prompt": f"Tell me about the {n} lamp.", "channel": "product_question"}
            for n in ("Halo", "Dawn", "Drift")
        ],
    )
    common = ["--project", "aurora", "--prompts", str(prompts), "--model", str(tiny_model_dir), "--engine", "hf",
              "--max-new-tokens", "8", "--temperature", "1.0", "--n", "4", "--reward-model", str(reward_run)]  # fmt: skip
    # 1. the random baseline with no budget: every candidate pair, both margins in its source
    db_r = f"sqlite:///{tmp_path / 'r.db'}"
    _project(db_r, main, capsys)
    assert main(["annotate", "queue", "--db", db_r, *common, "--strategy", "random"]) == 0
    out_r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tasks = _tasks(db_r)
    assert out_r["prompts"] == 3 and out_r["samples"] == 12 and out_r["human"] == out_r["added"] == len(tasks)
    assert out_r["pairs"] == len(tasks) >= 6 and out_r["synthetic"] == 0  # adjacent: up to K-1 = 3 per prompt
    assert all(t[3]["strategy"] == "random" and t[3]["generated"]["reward_model"] for t in tasks)
    judged = [Judged(t[3]["rm_margin"], t[3]["rules_margin"]) for t in tasks]
    margin, full = _pick_margin(judged)
    budget = max(len(full.human) - 1, 1)
    expected = select_pairs(judged, margin, budget=budget)
    key = lambda prompt, a, b: (prompt[-1]["content"], frozenset((a, b)))  # noqa: E731

    # 2. the same samples (same seed) routed by the rule, with a budget
    db_u = f"sqlite:///{tmp_path / 'u.db'}"
    _project(db_u, main, capsys)
    synth = tmp_path / "synthetic.jsonl"
    args = ["annotate", "queue", "--db", db_u, *common, "--strategy", "uncertain", "--margin", str(margin),
            "--budget", str(budget), "--synthetic-out", str(synth)]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["human"], out["synthetic"], out["left_out_budget"]) == (
        len(expected.human),
        len(expected.synthetic),
        len(expected.left_out),
    )
    assert out["human"] + out["synthetic"] + out["left_out_budget"] == out["pairs"] == len(tasks)
    queued = _tasks(db_u)
    assert {key(*t[:3]) for t in queued} == {key(*tasks[i][:3]) for i in expected.human}
    for t in queued:
        j = Judged(t[3]["rm_margin"], t[3]["rules_margin"])
        assert (
            t[3]["strategy"] == "uncertain"
            and decide(j, margin) == "human"
            and t[3]["reason"] == route(j, margin)[0]
        )
    records = [json.loads(x) for x in synth.read_text().splitlines()]
    assert out["synthetic_written"] == len(records) == len(expected.synthetic) > 0
    want = {}
    for i, winner in expected.synthetic:
        p, a, b, _ = tasks[i]
        want[key(p, a, b)] = a if winner == "a" else b
    for r in records:
        assert r["origin"] == "synthetic" and r["source"]["file"] == f"synthetic:{reward_run.name}"
        assert (
            r["brand"] == "aurora" and r["channel"] == "product_question" and r["prompt"][0]["role"] == "user"
        )
        assert (
            want[key(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"])]
            == r["chosen"][0]["content"]
        )

    # 3. onbrand data import accepts the file and keeps the marker
    assert main(["data", "import", str(synth), "--out", str(tmp_path / "imported")]) == 0
    imported = [json.loads(x) for x in (tmp_path / "imported" / "records.jsonl").read_text().splitlines()]
    assert len(imported) == len(records) and all(r["origin"] == "synthetic" for r in imported)
    capsys.readouterr()

    # 4. a snapshot of people's judgements (the queued tasks, judged a) + the synthetic pairs
    human = _write(tmp_path / "human.jsonl", [{"prompt": p, "chosen": a, "rejected": b, "channel": "product_question"} for p, a, b, _ in queued])  # fmt: skip
    m, dd, q = _snap(tmp_path, "snap", [human, synth], test_fraction=0.34)
    leaked = sum(x["reason"] == "split_leak" and x["file"].endswith("synthetic.jsonl") for x in q)
    assert m["counts"]["train"]["synthetic"] + leaked == len(records)
    assert all(m["counts"][s]["synthetic"] == 0 for s in ("dev", "test", "judge"))
    n_human = sum(m["counts"][s]["human"] for s in m["counts"])
    assert n_human + sum(x["file"].endswith("human.jsonl") for x in q) == len(queued) and n_human > 0


def test_cli_queue_argument_errors(tmp_path, capsys):
    from onbrand.cli import main

    db = f"sqlite:///{tmp_path / 'e.db'}"
    _project(db, main, capsys)
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": "Hi"}])
    base = ["annotate", "queue", "--db", db, "--project", "aurora"]
    cases = [
        ([*base, "--prompts", str(prompts), "--strategy", "uncertain"], "--synthetic-out FILE (required)"),
        ([*base, "--pairs", str(prompts), "--strategy", "random"], "use --prompts, not --pairs"),
        ([*base, "--prompts", str(prompts), "--synthetic-out", "x.jsonl"], "written by --strategy uncertain"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
