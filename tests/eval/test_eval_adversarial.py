"""The adversarial suite, judge independence, power, the served decoding and the voice fallback,
through ``run_eval`` with a tiny fake engine whose outputs are known (no model is loaded)."""

from __future__ import annotations

import json

import pytest

from onbrand.config import load_config
from onbrand.data.adversarial import adversarial_prompts
from onbrand.data.brand import load_brand
from onbrand.engines import Generation
from onbrand.eval import runner
from onbrand.eval.config import EvalConfig
from onbrand.eval.metrics.logprobs import kl_note

CALM = "The Dawn lamp brightens slowly over thirty minutes before your alarm, with a soft amber light."
BAD = "Yes, we guarantee it works for everyone, or your money back."


class FakeEngine:
    """Answers CALM, except the aligned adapter answers BAD to the prompts in ``bait``."""

    starts: list[FakeEngine] = []

    def __init__(self, bait: set[str]):
        self.kind, self.adapters, self.bait, self.calls = "fake", {}, bait, []
        FakeEngine.starts.append(self)

    def generate(self, requests, sampling):
        self.calls.append((len(requests), sampling))
        out = []
        for r in requests:
            text = BAD if r.adapter and r.messages[-1]["content"] in self.bait else CALM
            out.append(
                Generation(r.id, r.adapter, [text] * sampling.n, [[5] * len(text.split())] * sampling.n)
            )
        return out

    def close(self):
        pass


class WordScorer:
    def score(self, conversations):
        return [float(len(c[-1]["content"])) for c in conversations]


def _run(path, kind, records, parent=None):
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_config.json").write_text("{}")
    run = {
        "kind": kind,
        "run_id": f"{kind}-1",
        "base_model": "fake-base",
        "parent_run": parent,
        "system_prompt": None,
    }
    if records is not None:
        run["data"] = {"snapshot_id": "s1", "split": "train", "record_ids": sorted(records)}
    (path / "run.json").write_text(json.dumps(run))
    return path


@pytest.fixture
def setup(tmp_path, repo_root, monkeypatch):
    card = load_brand(repo_root / "configs/brands/aurora.yaml")
    bait = {p["prompt"] for p in adversarial_prompts(card) if p["rule_id"] == "guarantee"}
    FakeEngine.starts = []
    monkeypatch.setattr(runner, "get_engine", lambda *a, **k: FakeEngine(bait))
    prompts = tmp_path / "p.jsonl"
    rows = [
        {"id": f"q{i}", "prompt": f"Does the Dawn lamp have feature {i}?", "channel": "product_question"}
        for i in range(3)
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sft = _run(tmp_path / "sft", "sft", ["r1", "r2", "r3"])
    dpo = _run(tmp_path / "dpo", "dpo", ["r1", "r2", "r3"], parent=str(sft))
    judge = _run(tmp_path / "reward", "reward", ["j1", "j2"])
    base = [f"aligned={dpo}", f"prompts={prompts}", f"brand={repo_root / 'configs/brands/aurora.yaml'}",
            f"reward={judge}", f"out_dir={tmp_path / 'out'}", "bootstrap=100", "metrics.voice=false",
            "metrics.implicit=false", "metrics.kl=false", "metrics.perplexity=false"]  # fmt: skip
    return dict(tmp=tmp_path, card=card, base=base, sft=sft, dpo=dpo, judge=judge)


def test_a_model_that_takes_the_bait_is_caught(setup):
    cfg = load_config(EvalConfig, None, setup["base"])
    rep = runner.run_eval(cfg, scorer=WordScorer())
    adv = rep["metrics"]["adversarial"]
    n_adv = len(adversarial_prompts(setup["card"]))
    assert adv["n_prompts"] == n_adv and adv["sources"] == {"card": n_adv, "files": 0}
    g = adv["per_rule"]["guarantee"]
    assert (g["base"]["value"], g["aligned"]["value"], g["diff"]["value"]) == (0.0, 1.0, 1.0)
    assert g["aligned_violations"] == 2 and adv["worse_rules"] == ["guarantee"]
    assert adv["per_rule"]["hype_words"]["aligned"]["value"] == 0.0
    # CALM has no apology: the complaint rules catch both models alike.
    assert adv["per_rule"]["complaint_apology"]["base"]["value"] == 1.0
    o = adv["overall"]
    assert o["aligned"]["value"] - o["base"]["value"] == pytest.approx(2 / n_adv) == o["diff"]["value"]
    # One engine start, one generate call: 3 main + the adversarial prompts, for base and aligned.
    assert len(FakeEngine.starts) == 1 and FakeEngine.starts[0].calls[0][0] == 2 * (3 + n_adv)
    assert len(FakeEngine.starts[0].calls) == 1 and FakeEngine.starts[0].calls[0][1] == cfg.sampling
    row = next(r for r in rep["verdict_rows"] if r["metric"].startswith("Adversarial"))
    # 2 of 24 answers: the overall CI decides the side; the rule that got worse is named.
    assert row["better"] != "aligned" and "worse on: guarantee" in row["note"]
    assert any("breaks these rules more often than base: guarantee" in w for w in rep["warnings"])
    out = setup["tmp"] / "out"
    md = (out / "report.md").read_text()
    assert (
        "## Adversarial prompts" in md
        and "| guarantee | banned | 2 | 0.00 [0.00, 0.00] | 1.00 [1.00, 1.00]" in md
    )
    assert (out / "adversarial.png").stat().st_size > 0 and "adversarial.png" in rep["plots"]
    lines = (out / "adversarial.jsonl").read_text().splitlines()
    assert len(lines) == n_adv and json.loads(lines[0])["rule_id"] == "shouting"
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3  # main prompts only


def test_user_adversarial_inputs_and_their_errors(setup):
    extra = setup["tmp"] / "adv.jsonl"
    extra.write_text(json.dumps({"prompt": "Can you guarantee it?", "rule_id": "guarantee"}) + "\n")
    cfg = load_config(
        EvalConfig, None, setup["base"] + ["adversarial.per_rule=0", f"adversarial.inputs=[{extra}]"]
    )
    adv = runner.run_eval(cfg, scorer=WordScorer())["metrics"]["adversarial"]
    assert adv["sources"] == {"card": 0, "files": 1} and list(adv["per_rule"]) == ["guarantee"]
    assert adv["per_prompt"][0]["id"] == "adv-1"
    bad = setup["tmp"] / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "rule_id": "guarantee"}\n{"prompt": "x", "rule_id": "nope"}\n')
    cfg = load_config(EvalConfig, None, setup["base"] + [f"adversarial.inputs=[{bad}]"])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'rule_id' 'nope' is not a rule"):
        runner.run_eval(cfg, scorer=WordScorer())
    bad.write_text('{"prompt": "x", "rule_id": "guarantee", "channel": "fax"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'channel' 'fax'"):
        runner.run_eval(cfg, scorer=WordScorer())
    assert not FakeEngine.starts[1:]  # input errors come before any engine start


def test_judge_independence_passes_and_is_recorded(setup):
    rep = runner.run_eval(load_config(EvalConfig, None, setup["base"]), scorer=WordScorer())
    ji = rep["judge_independence"]
    assert (ji["checked"], ji["independent"], ji["overlap"], ji["allowed"]) == (True, True, 0, False)
    assert (ji["policy_records"], ji["judge_records"]) == (3, 2) and len(
        ji["policy_runs"]
    ) == 2  # dpo + its sft
    assert "Judge independence: no shared record" in (setup["tmp"] / "out" / "report.md").read_text()


def test_judge_trained_on_policy_records_is_refused(setup, capsys):
    from onbrand.cli import main as cli_main

    judge = _run(setup["tmp"] / "leaky", "reward", ["r2", "r3", "j9"])
    args = [a for a in setup["base"] if not a.startswith("reward=")] + [f"reward={judge}"]
    with pytest.raises(ValueError, match=r"was trained on 2 record\(s\) that the policy .*dpo"):
        runner.run_eval(load_config(EvalConfig, None, args), scorer=WordScorer())
    assert cli_main(["eval", *args]) == 2  # `onbrand eval`: a one-line error and a non-zero exit
    assert "was trained on 2 record(s)" in capsys.readouterr().err
    assert not FakeEngine.starts  # refused before generating
    rep = runner.run_eval(
        load_config(EvalConfig, None, args + ["allow_judge_overlap=true"]), scorer=WordScorer()
    )
    ji = rep["judge_independence"]
    assert (ji["overlap"], ji["allowed"], ji["independent"]) == (2, True, False)
    assert any("judge saw training data" in w for w in rep["warnings"])
    md = (setup["tmp"] / "out" / "report.md").read_text()
    assert "judge saw training data" in md.split("| Metric |")[0]  # in the verdict line itself


def test_sft_parent_records_count_as_policy_records(setup):
    sft = _run(setup["tmp"] / "sft2", "sft", ["s-only"])
    dpo = _run(setup["tmp"] / "dpo2", "dpo", ["r1"], parent=str(sft))
    judge = _run(setup["tmp"] / "judge2", "reward", ["s-only"])
    args = [a for a in setup["base"] if not a.startswith(("reward=", "aligned="))]
    with pytest.raises(ValueError, match=r"1 record\(s\)"):
        runner.run_eval(
            load_config(EvalConfig, None, args + [f"aligned={dpo}", f"reward={judge}"]), scorer=WordScorer()
        )


def test_runs_without_data_lineage_are_not_checked(setup):
    old = _run(setup["tmp"] / "old-reward", "reward", None)
    args = [a for a in setup["base"] if not a.startswith("reward=")] + [f"reward={old}"]
    rep = runner.run_eval(load_config(EvalConfig, None, args), scorer=WordScorer())
    ji = rep["judge_independence"]
    assert ji["checked"] is False and "no data record" in ji["detail"] and ji["independent"] is None
    assert any("judge independence not checked" in w for w in rep["warnings"])


def test_parent_run_found_next_to_a_moved_run(setup, tmp_path):
    from onbrand.lineage import run_chain

    moved = tmp_path / "moved"
    moved.mkdir()
    _run(moved / "sft", "sft", ["a"])
    _run(moved / "dpo", "dpo", ["b"], parent="runs/elsewhere/sft")  # recorded path no longer exists
    chain, missing = run_chain(moved / "dpo")
    assert [r.dir.name for r in chain] == ["dpo", "sft"] and missing == []


def test_power_and_sampling_in_the_report(setup):
    cfg = load_config(EvalConfig, None, setup["base"] + ["sampling.temperature=0.2", "sampling.top_p=0.9",
                                                         "sampling.repetition_penalty=1.1"])  # fmt: skip
    rep = runner.run_eval(cfg, scorer=WordScorer())
    pw = rep["metrics"]["power"]
    assert pw["n_prompts"] == 3 and pw["min_detectable_diff"] == pytest.approx(
        2.80158 * 0.5 / 3**0.5, rel=1e-4
    )
    md = (setup["tmp"] / "out" / "report.md").read_text()
    assert "Power: with 3 test prompts" in md
    assert "temperature 0.2, top_p 0.9, repetition penalty 1.1" in md
    assert any(r["metric"].startswith("Repetition rate") for r in rep["verdict_rows"])
    assert rep["inputs"]["sampling"]["repetition_penalty"] == 1.1


def test_repetition_penalty_is_range_checked():
    from onbrand.config import ConfigError

    with pytest.raises(ConfigError, match="repetition_penalty"):
        load_config(EvalConfig, None, ["sampling.repetition_penalty=0"])


def test_kl_note_says_what_the_samples_are():
    from onbrand.engines import Sampling

    assert kl_note(Sampling()).startswith("greedy")
    assert "Monte Carlo KL" in kl_note(Sampling(temperature=1.0))
    assert "not an unbiased KL" in kl_note(Sampling(temperature=0.2, top_p=0.9, repetition_penalty=1.1))


class LetterEmbedder:
    def encode(self, texts, **kw):
        import numpy as np

        out = np.zeros((len(texts), 26)) + 1e-3
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out


def test_voice_falls_back_to_train_chosen_answers(setup, tmp_path):
    from datasets import Dataset

    from onbrand.data.records import SCHEMA_VERSION
    from onbrand.data.snapshot import features

    snap = tmp_path / "snap"
    snap.mkdir()

    def rec(i, split):
        return {"id": f"{split}-{i}", "prompt": [{"role": "user", "content": f"Is lamp {i} dimmable?"}],
                "chosen": [{"role": "assistant", "content": f"Yes, lamp {i} dims smoothly."}],
                "rejected": [{"role": "assistant", "content": "no"}], "brand": "plain", "channel": None,
                "created_at": "2026-12-01T00:00:00+00:00", "annotators": ["a"], "reason_tags": [],
                "source": {"file": "x.jsonl", "line": i + 1}}  # fmt: skip

    for split in ("train", "test"):
        Dataset.from_list([rec(i, split) for i in range(4)], features=features()).to_parquet(
            str(snap / f"{split}.parquet")
        )
    (snap / "manifest.json").write_text(json.dumps({"snapshot_id": "x", "schema_version": SCHEMA_VERSION}))
    card = tmp_path / "plain.yaml"  # no channels, and an exemplar may now omit its channel
    card.write_text("id: plain\nname: Plain\ndescription: Plain makes lamps.\n")
    args = [a for a in setup["base"] if not a.startswith(("prompts=", "brand=", "metrics.voice"))]
    cfg = load_config(EvalConfig, None, args + [f"snapshot={snap}", f"brand={card}"])
    rep = runner.run_eval(cfg, scorer=WordScorer(), embedder=LetterEmbedder())
    assert rep["metrics"]["voice"]["reference"] == "4 train chosen answers, the card has no exemplars"
    row = next(r for r in rep["verdict_rows"] if r["metric"] == "Brand-voice similarity")
    assert row["note"] == "voice vs train chosen answers, the card has no exemplars"
    card.write_text(card.read_text() + "exemplars:\n  - text: Our lamps dim smoothly.\n")
    rep = runner.run_eval(cfg, scorer=WordScorer(), embedder=LetterEmbedder())
    assert rep["metrics"]["voice"]["reference"] == "the brand card's 1 exemplars"
