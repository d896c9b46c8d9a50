"""The blind human A/B round end to end: a real eval report is published to the annotation app,
three simulated annotators judge every item through the real HTTP API (uvicorn on 127.0.0.1, one
annotator disagreeing), and `onbrand eval human` must reproduce hand-computed figures."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import yaml

from onbrand.cli import main
from onbrand.config import load_config
from onbrand.eval.config import EvalConfig
from onbrand.eval.runner import run_eval

QUESTIONS = ["Does the Dawn lamp have a timer?", "How bright is Halo?", "Is the app free?", "Can Drift bulbs dim?",
             "Where is my order?", "Does Halo work with the app?"]  # fmt: skip
# What each simulated annotator thinks of item i (they recognise the answers by their text).
INTENT = {
    "alice": ["aligned", "aligned", "aligned", "aligned", "tie", "base"],
    "bob": ["aligned", "aligned", "aligned", "base", "tie", "both_bad"],
    "carol": ["base"] * 6,  # the one who disagrees
}


class WordScorer:
    def score(self, conversations):
        return [float(len(c[-1]["content"].split())) for c in conversations]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, tiny_run_dir, repo_root):
    root = tmp_path_factory.mktemp("human")
    run = tiny_run_dir
    prompts = root / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q, "channel": "product_question"}) + "\n"
                               for i, q in enumerate(QUESTIONS)))  # fmt: skip
    cfg = load_config(EvalConfig, None, [f"aligned={run}", f"prompts={prompts}", f"out_dir={root / 'eval'}", "engine=hf",
                      f"brand={repo_root / 'configs/brands/aurora.yaml'}", "sampling.max_new_tokens=10", "bootstrap=200",
                      "metrics.voice=false", "metrics.kl=false", "metrics.perplexity=false", "metrics.implicit=false",
                      "adversarial.enabled=false", f"gate={repo_root / 'configs/eval/gates.yaml'}"])  # fmt: skip
    run_eval(cfg, scorer=WordScorer())
    return root / "eval"


@pytest.fixture
def app_url(tmp_path, repo_root):
    import uvicorn

    from onbrand.annotate.app import create_app
    from onbrand.annotate.service import brand_facts

    db = f"sqlite:///{tmp_path / 'ann.db'}"
    holder = {}

    def serve():
        app = create_app(db, [brand_facts(repo_root / "configs/brands/aurora.yaml")])
        holder["server"] = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        holder["server"].run()

    return db, holder, serve


def _start(holder, serve):
    threading.Thread(target=serve, daemon=True).start()
    for _ in range(200):
        srv = holder.get("server")
        if srv is not None and srv.started:
            port = srv.servers[0].sockets[0].getsockname()[1]
            return f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    raise RuntimeError("annotation server did not start")


def test_blind_round_reproduces_hand_computed_figures(report_dir, app_url, repo_root, tmp_path, capsys):
    db, holder, serve = app_url
    rows = [json.loads(x) for x in (report_dir / "samples.jsonl").read_text().splitlines()]
    assert all(r["aligned"][0].strip() != r["base"][0].strip() for r in rows), (
        "an identical pair breaks the hand sums"
    )
    assert main(["eval", "publish", "--report", str(report_dir), "--db", db, "--project", "ab", "--annotators",
                 "alice", "bob", "carol", "--overlap", "1.0", "--per-item", "3", "--seed", "3"]) == 0  # fmt: skip
    tokens = dict(line.split("\t") for line in capsys.readouterr().out.strip().splitlines())
    assert set(tokens) == {"alice", "bob", "carol"}
    round_file = json.loads((report_dir / "human_round.json").read_text())
    assert round_file["published"] == 6 and round_file["assigned"]["assignments"] == 18
    url = _start(holder, serve)
    sides = set()
    for who, token in tokens.items():
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            while (r := c.get("/api/next")).status_code == 200:
                item = r.json()
                # Blind: prompt (no system message), channel and two texts; nothing says which model.
                assert set(item) == {"assignment_id", "prompt", "channel", "left", "right", "submission_id"}
                assert [m["role"] for m in item["prompt"]] == ["user"]
                i = QUESTIONS.index(item["prompt"][-1]["content"])
                aligned_text = rows[i]["aligned"][0]
                sides.add("left" if item["left"] == aligned_text else "right")
                want = INTENT[who][i]
                if want in ("aligned", "base"):
                    on_left = (item["left"] == aligned_text) == (want == "aligned")
                    choice = "left" if on_left else "right"
                else:
                    choice = want
                post = c.post(
                    "/api/judgements", json={"assignment_id": item["assignment_id"], "choice": choice}
                )
                assert post.status_code == 200, post.text
    assert sides == {"left", "right"}  # the aligned answer was not always on one side
    holder["server"].should_exit = True

    gate = tmp_path / "gate.yaml"
    gate.write_text(yaml.safe_dump({**yaml.safe_load((repo_root / "configs/eval/gates.yaml").read_text()),
                                    "min_human_win_rate_low": 0.5, "min_judge_human_kappa": 0.2}))  # fmt: skip
    rc = main(
        ["eval", "human", "--report", str(report_dir), "--db", db, "--project", "ab", "--gate", str(gate)]
    )
    assert rc == 1  # the gate's human checks fail (people do not prefer aligned here)
    report = json.loads((report_dir / "report.json").read_text())
    h = report["metrics"]["human"]
    assert h["n_items"] == 6 and h["n_judgements"] == 18 and h["annotators"] == ["alice", "bob", "carol"]
    assert h["votes"] == {"aligned": 7, "tie": 2, "base": 8, "both_bad": 1}
    # Item means (both bad left out): 2/3, 2/3, 2/3, 1/3, (1/2 + 1/2 + 0)/3, 0/2 -> mean 8/18.
    assert h["win_rate"]["value"] == pytest.approx(8 / 18) and h["n_scored_items"] == 6
    assert h["majority"] == {"aligned": 3, "tie": 1, "base": 2, "both_bad": 0, "none": 0}
    kappas = {tuple(k["annotators"]): k["kappa"] for k in h["agreement"]["cohen_kappa"]}
    # alice/bob: p_o 4/6, p_e (4*3 + 1*1 + 1*1)/36 = 14/36 -> (24 - 14) / (36 - 14) = 10/22.
    assert kappas[("alice", "bob")] == pytest.approx(10 / 22, abs=1e-4)
    assert kappas[("alice", "carol")] == 0 and kappas[("bob", "carol")] == 0
    # Coincidences: n_aligned 7, n_base 8, n_tie 2, n_both_bad 1 (n 18), disagreeing mass 12:
    # alpha = 1 - 17 * 12 / (18^2 - (49 + 64 + 4 + 1)) = 1 - 204/206.
    assert h["agreement"]["krippendorff_alpha"] == pytest.approx(1 - 204 / 206, abs=1e-4)
    majority = ["aligned", "aligned", "aligned", "base", "tie", "base"]
    rm = ["aligned" if r["aligned_reward"] > r["base_reward"] else "base" if r["aligned_reward"] < r["base_reward"]
          else "tie" for r in rows]  # fmt: skip
    assert h["judges"]["reward_model"]["n"] == 6
    assert h["judges"]["reward_model"]["accuracy"]["value"] == pytest.approx(
        sum(a == b for a, b in zip(rm, majority)) / 6
    )
    assert h["judges"]["brand_rules"]["n"] == 6 and "llm_judge" in h["skipped_judges"]
    checks = {c["name"]: c for c in report["gate"]["checks"]}
    assert checks["human_win_rate_ci_low"]["passed"] is False
    assert checks["human_win_rate_ci_low"]["value"] == pytest.approx(h["win_rate"]["low"])
    assert report["verdict"].startswith(("NO CLEAR DIFFERENCE", "ALIGNED IS NOT BETTER"))
    assert "primary metric: human win rate (blind a/b)" in report["verdict"]
    md = (report_dir / "report.md").read_text()
    assert "## Human A/B round (blind)" in md and "| Human win rate (blind A/B) |" in md
    assert (report_dir / "human_agreement.png").stat().st_size > 0 or h["judges"]["reward_model"][
        "kappa"
    ] is None
