"""onbrand monitor --to-annotate: flagged + uncertain + random production exchanges become annotation
tasks (real SQLite db, real reward model and generation engine on the tiny model), and the judged
pairs carry their production window into a data snapshot's lineage."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest
from fastapi import Request
from sqlalchemy import select

from onbrand.cli import main as cli_main

BRAND = "configs/brands/aurora.yaml"
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
CLEAN = "Yes, the Dawn lamp dims smoothly and wakes you gently in the morning."
HYPE = "The Dawn lamp is a game changer, it dims smoothly and wakes you gently."


def _toy_records(n: int, offset: int) -> list[dict]:
    return [
        {
            "id": f"toy-{i:04d}", "prompt": [{"role": "user", "content": f"Question {i}: is the lamp dimmable?"}],
            "chosen": [{"role": "assistant", "content": "Yes, it dims smoothly. Thank you!"}],
            "rejected": [{"role": "assistant", "content": "no" if i % 2 else "whatever, read the box"}],
            "brand": "toy", "channel": "product_question", "created_at": "2026-12-01T00:00:00+00:00",
            "annotators": ["a1"], "reason_tags": ["tone"], "source": {"file": "toy.jsonl", "line": i + 1},
        }
        for i in range(offset, offset + n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model_dir):
    """A reward run on the tiny model (one short epoch: its scores only need to be a real model's)."""
    from datasets import Dataset

    from onbrand.data.snapshot import features
    from onbrand.training import reward_model

    root = tmp_path_factory.mktemp("feedback-rm")
    snap = root / "snapshot"
    snap.mkdir()
    for k, split in enumerate(("train", "dev", "test", "judge")):
        Dataset.from_list(_toy_records(8, 8 * k), features=features()).to_parquet(
            str(snap / f"{split}.parquet")
        )
    (snap / "manifest.json").write_text(json.dumps({"snapshot_id": "toy", "schema_version": 1, "counts": {}}))
    (root / "toy.yaml").write_text("id: toy\nname: Toy Lamps\ndescription: Toy Lamps makes small lamps.\n")
    args = [
        f"model={tiny_model_dir}", f"data.snapshot={snap}", f"data.brand={root / 'toy.yaml'}", f"out_dir={root / 'rm'}",
        "train.max_length=64", "train.tracking.wandb=disabled", "train.threads=1", "lora.layers=0",
        "train.precision=fp32", "train.batch_size=4", "train.epochs=1", "lora.r=4", "lora.alpha=8",
    ]  # fmt: skip
    assert reward_model.main(["--config", "configs/reward/demo.yaml", *args]) == 0
    return root / "rm"


def _log(path, days: int = 3, per_day: int = 30):
    """Every 10th exchange breaks the hype-words rule (flagged): 9 flagged of 90."""
    with open(path, "w") as f:
        for d in range(days):
            for i in range(per_day):
                ts = T0 + dt.timedelta(days=d, minutes=10 * i)
                q = f"Day {d} question {i}: does the Dawn lamp dim?"
                text = HYPE if i % 10 == 0 else CLEAN
                row = {"ts": ts.isoformat(), "channel": "product_question",
                       "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": text}]}  # fmt: skip
                f.write(json.dumps(row) + "\n")
    return path


SAMPLE = ["to_annotate.n_uncertain=3", "to_annotate.uncertain_pool=8", "to_annotate.n_random=3",
          "to_annotate.max_new_tokens=8", "scored_per_window=10", "thresholds.min_window_n=10"]  # fmt: skip


def _sets(items):
    return [x for s in items for x in ("--set", s)]


def test_to_annotate_sends_flagged_uncertain_random_and_lineage_reaches_the_snapshot(
    tmp_path, tiny_model_dir, reward_run, capsys
):
    from onbrand.annotate import service
    from onbrand.annotate.db import Task, open_db
    from onbrand.data.config import DataConfig
    from onbrand.data.snapshot import build_snapshot

    log = _log(tmp_path / "log.jsonl")
    db = f"sqlite:///{tmp_path / 'ann.db'}"
    rc = cli_main(["monitor", str(log), "--brand", BRAND, "--reward", str(reward_run), "--out", str(tmp_path / "m"),
                   "--to-annotate", "--db", db, "--project", "aurora-prod", "--model", str(tiny_model_dir),
                   "--engine", "hf", *_sets(SAMPLE)])  # fmt: skip
    assert rc == 0  # no baseline: nothing drifts; the tasks are sent anyway
    sent = json.loads(capsys.readouterr().out.split("to-annotate: ")[1])
    assert sent["added"] + sent["identical_or_empty"] == 15 and sent["flagged_left_out"] == 0
    sessions = open_db(db)
    with sessions() as s:
        project = service.get_project(s, "aurora-prod")
        tasks = list(s.scalars(select(Task).where(Task.project_id == project.id)))
        by = {t.source["selection"] for t in tasks}
        assert by == {"flagged", "uncertain", "random"}
        flagged = [t for t in tasks if t.source["selection"] == "flagged"]
        assert all(
            "game changer" in t.candidate_a and t.source["failed_rules"] == ["hype_words"] for t in flagged
        )
        assert all(t.source["file"].startswith("production:2026-12-0") and t.source["file"].endswith("/day")
                   for t in tasks)  # fmt: skip
        assert all(t.source["margin"] is not None and t.candidate_a != t.candidate_b for t in tasks)
        assert tasks[0].source["generated"]["via"] == "engine"
        ann, token = service.add_annotator(s, project, "alice")
        service.assign(s, project, overlap=0.0)
        while (nxt := service.next_assignment(s, ann)) is not None:
            service.submit(s, ann, nxt[0].id, "left")
    out = tmp_path / "feedback"
    assert cli_main(["monitor", "--export-feedback", str(out), "--db", db, "--project", "aurora-prod"]) == 0
    files = sorted(out.glob("*.jsonl"))
    assert files and all(
        f.name.startswith("production-2026-12-0") and f.name.endswith("T00-day.jsonl") for f in files
    )
    rec = json.loads(files[0].read_text().splitlines()[0])
    assert (
        rec["source"]["file"]
        == "production:" + files[0].name[len("production-") : -len("-day.jsonl")] + "/day"
    )
    cfg = DataConfig(
        inputs=[str(f) for f in files], tokenizer="", out=str(tmp_path / "snap"), test_fraction=0.0
    )
    manifest = build_snapshot(cfg)
    assert {src["file"] for src in manifest["sources"]} == {str(f) for f in files}
    rows = pq.read_table(tmp_path / "snap" / "train.parquet").to_pylist()
    assert rows and all("production-2026-12-0" in r["source"]["file"] for r in rows)


def test_uncertain_are_the_smallest_reward_margins(tmp_path, tiny_model_dir, reward_run):
    from onbrand.config import load_config
    from onbrand.scoring import load_scorer
    from onbrand.serve import feedback, monitor_run
    from onbrand.serve.monitor import MonitorConfig

    cfg = load_config(MonitorConfig, "configs/monitor/demo.yaml", [*SAMPLE, f"brand={BRAND}", "scored_per_window=0",
                                                                   f"out_dir={tmp_path}"])  # fmt: skip
    sampler = feedback.FeedbackSampler(cfg.to_annotate)
    monitor_run.analyse([str(_log(tmp_path / "log.jsonl"))], cfg, visit=sampler)
    assert sampler.flagged_total == 9 and len(sampler.pool) == 11  # n_random + uncertain_pool
    chosen, counts = feedback.select(sampler, feedback.EngineGenerator(str(tiny_model_dir), "hf"),
                                     load_scorer(reward_run))  # fmt: skip
    assert counts["flagged"] == 9 and counts["uncertain"] == 3 and counts["random"] == 3
    candidates = [it for it in sampler.pool if it.selection in ("", "uncertain")]
    picked = [it.margin for it in candidates if it.selection == "uncertain"]
    others = [it.margin for it in candidates if it.selection == ""]
    assert len(picked) == 3 and len(others) == 5 and max(picked) <= min(others)


def test_to_annotate_errors_are_one_line(tmp_path, capsys):
    log = _log(tmp_path / "log.jsonl", days=1, per_day=10)
    base = ["monitor", str(log), "--brand", BRAND, "--out", str(tmp_path / "m"), "--to-annotate"]
    assert cli_main(base) == 2
    assert "--to-annotate needs --project NAME" in capsys.readouterr().err
    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert cli_main([*base, "--project", "p", "--db", db, "--model", "x"]) == 2
    assert "picks uncertain exchanges with the reward model" in capsys.readouterr().err
    assert (
        cli_main(["monitor", "--export-feedback", str(tmp_path / "f"), "--db", db, "--project", "nope"]) == 2
    )
    assert "no project 'nope'" in capsys.readouterr().err


def test_alternatives_from_an_openai_compatible_endpoint(tmp_path, monkeypatch, capsys):
    """``--generate-url``: the openai client against a tiny local endpoint; the key comes from the
    environment, reaches the endpoint and is stored nowhere."""
    import threading

    import uvicorn
    from fastapi import FastAPI

    seen = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append((request.headers.get("authorization"), body))
        text = f"Alternative for: {body['messages'][-1]['content']} (seed {body['seed']})"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}  # fmt: skip

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    monkeypatch.setenv("GEN_KEY", "sk-test-secret-123")
    db = f"sqlite:///{tmp_path / 'a.db'}"
    try:
        rc = cli_main(["monitor", str(_log(tmp_path / "log.jsonl", days=1, per_day=20)), "--brand", BRAND,
                       "--out", str(tmp_path / "m"), "--to-annotate", "--db", db, "--project", "p",
                       "--generate-url", f"http://127.0.0.1:{port}/v1", "--generate-model", "aurora-v3",
                       "--api-key-env", "GEN_KEY", *_sets(["to_annotate.n_uncertain=0", "to_annotate.n_random=4"])])  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(10)
    assert rc == 0
    sent = json.loads(capsys.readouterr().out.split("to-annotate: ")[1])
    assert sent["flagged"] == 2 and sent["random"] == 4 and sent["added"] == 6
    assert len(seen) == 6 and all(auth == "Bearer sk-test-secret-123" for auth, _ in seen)
    assert {b["model"] for _, b in seen} == {"aurora-v3"} and all(b["max_tokens"] == 128 for _, b in seen)
    assert b"sk-test-secret" not in (tmp_path / "a.db").read_bytes()
