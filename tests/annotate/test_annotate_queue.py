"""Loading work: prompt/pair files (errors name file, line, field) and candidate generation."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from onbrand.annotate import queue


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_pairs_formats_and_errors(tmp_path):
    good = _write(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "Is Halo dimmable?", "candidates": ["Yes.", "No."], "channel": "product_question"},
            "",
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "Hello."}],
                "rejected": "Yo",
            },
        ],
    )
    pairs = queue.read_pairs(good)
    assert [p["a"] for p in pairs] == ["Yes.", "Hello."] and pairs[1]["b"] == "Yo"
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Is Halo dimmable?"}]
    assert pairs[1]["source"] == {"file": "pairs.jsonl", "line": 3}
    cases = [
        ({"prompt": "x", "candidates": ["only one"]}, "bad.jsonl:1: candidates"),
        ({"candidates": ["a", "b"]}, "bad.jsonl:1: prompt: missing"),
        (
            {"prompt": [{"role": "assistant", "content": "x"}], "candidates": ["a", "b"]},
            "end with a user turn",
        ),
        ({"prompt": [{"role": "robot", "content": "x"}], "candidates": ["a", "b"]}, "bad.jsonl:1: prompt[0]"),
        ({"prompt": "x", "candidates": ["same", "same"]}, "identical"),
        ({"prompt": "x", "candidates": ["a", ""]}, "bad.jsonl:1: candidates[1]"),
        ({"prompt": "x", "candidates": ["a", "b"], "channel": 3}, "bad.jsonl:1: channel"),
        ("{not json", "bad.jsonl:1: invalid JSON"),
        ("[1, 2]", "bad.jsonl:1: expected a JSON object"),
    ]
    for row, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            queue.read_pairs(_write(tmp_path / "bad.jsonl", [row]))


def test_read_prompts_text_and_jsonl(tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("How bright is Dawn?\n\nCan Drift bulbs change colour?\n")
    rows = queue.read_prompts(txt)
    assert [r["source"]["line"] for r in rows] == [1, 3]
    assert rows[1]["prompt"] == [{"role": "user", "content": "Can Drift bulbs change colour?"}]
    js = _write(tmp_path / "p.jsonl", [{"prompt": "a", "channel": "social_post"}, {"text": "no prompt"}])
    with pytest.raises(ValueError, match="p.jsonl:2: prompt: missing"):
        queue.read_prompts(js)


def test_generate_pairs_with_the_transformers_engine(tiny_model_dir, tmp_path):
    prompts = queue.read_prompts(
        _write(tmp_path / "p.jsonl", [{"prompt": "Tell me about Dawn."}, {"prompt": "Hi"}])
    )
    pairs, stats = queue.generate_pairs(
        prompts,
        str(tiny_model_dir),
        n=2,
        system_prompt="You are Aurora.",
        engine="hf",
        max_new_tokens=6,
        temperature=1.0,
    )
    assert stats["prompts"] == 2 and stats["pairs"] + stats["identical_or_empty"] == 2
    assert stats["pairs"] >= 1  # a random tiny model at T=1 does not repeat itself
    for p in pairs:
        assert p["a"] != p["b"] and p["prompt"][0]["role"] == "user"  # system prompt not stored
        assert p["source"]["generated"]["engine"] == "hf" and p["source"]["generated"]["sampling"]["n"] == 2
    with pytest.raises(ValueError, match="even number"):
        queue.generate_pairs(prompts, str(tiny_model_dir), n=3, engine="hf")


def test_cli_queue_assign_stats(tiny_model_dir, tmp_path, capsys, repo_root):
    from onbrand.annotate.db import Task, open_db
    from onbrand.cli import main

    db = f"sqlite:///{tmp_path / 'q.db'}"
    brand = str(repo_root / "configs" / "brands" / "aurora.yaml")
    assert main(["annotate", "project", "--db", db, "--brand", brand, "--overlap", "0.5"]) == 0
    assert main(["annotate", "annotator", "--db", db, "--project", "aurora", "ann", "bob"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [line.split("\t")[0] for line in lines] == ["ann", "bob"] and all(
        len(line.split("\t")[1]) >= 40 for line in lines
    )
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": "Tell me about Halo.", "channel": "product_question"}])
    args = [
        "annotate",
        "queue",
        "--db",
        db,
        "--project",
        "aurora",
        "--prompts",
        str(prompts),
        "--model",
        str(tiny_model_dir),
    ]
    assert main([*args, "--engine", "hf", "--max-new-tokens", "6", "--temperature", "1.0", "--assign"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["added"] == out["pairs"] and out["assigned"]["tasks"] == out["pairs"]
    with open_db(db)() as s:
        task = s.scalars(select(Task)).first()
        assert task.channel == "product_question" and task.source["generated"]["engine"] == "hf"
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "x?", "candidates": ["A.", "B."]}])
    assert main(["annotate", "queue", "--db", db, "--project", "aurora", "--pairs", str(pairs)]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1
    assert main(["annotate", "stats", "--db", db, "--project", "aurora", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == out["pairs"] + 1
    assert main(["annotate", "stats", "--db", db, "--project", "nope"]) == 2  # clear error, exit 2
