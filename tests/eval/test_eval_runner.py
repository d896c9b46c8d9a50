"""The eval stage end to end on the tiny model (HF engine), report contents, gate exit codes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from onbrand.config import ConfigError, load_config
from onbrand.eval.config import EvalConfig
from onbrand.eval.runner import run_eval

CHANNEL = "product_question"


class LengthScorer:
    """A reward model that only likes length (words), for a known verdict shape."""

    def __init__(self):
        self.calls = 0

    def score(self, conversations):
        self.calls += 1
        assert all(c[-1]["role"] == "assistant" and c[0]["role"] == "system" for c in conversations)
        return [float(len(c[-1]["content"].split())) for c in conversations]


class HashEmbedder:
    """Deterministic bag-of-letters embedder (the real MiniLM is tested separately)."""

    def encode(self, texts, **kw):
        out = np.zeros((len(texts), 26))
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out + 1e-3


@pytest.fixture(scope="module")
def run_dir(tiny_run_dir):
    return tiny_run_dir


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    rows = []
    for i, q in enumerate(
        [
            "Does the Dawn lamp have a timer?",
            "How bright is Halo?",
            "Is the app free?",
            "Can Drift bulbs dim?",
        ]
    ):
        rows.append({"id": f"r{i}", "prompt": [{"role": "user", "content": q}], "channel": CHANNEL,
                     "chosen": [{"role": "assistant", "content": "Yes, it has a thirty minute timer you set in the app."}],
                     "rejected": [{"role": "assistant", "content": "BUY NOW!!"}]})  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, run_dir, prompts_file, repo_root):
    out = tmp_path_factory.mktemp("eval") / "report"
    cfg = load_config(EvalConfig, None, [f"aligned={run_dir}", f"prompts={prompts_file}", f"out_dir={out}",
                      f"brand={repo_root / 'configs/brands/aurora.yaml'}", "engine=hf", "sampling.max_new_tokens=12",
                      "bootstrap=200", "ppl_max_tokens=300", "ppl_window=64",
                      f"gate={repo_root / 'configs/eval/gates.yaml'}"])  # fmt: skip
    scorer = LengthScorer()
    rep = run_eval(cfg, scorer=scorer, embedder=HashEmbedder())
    assert scorer.calls == 2
    return rep, out


def test_report_files_and_first_screen(report):
    rep, out = report
    for name in ("report.json", "report.md", "samples.jsonl", "win_rates.png", "rewards_hist.png",
                 "length_vs_reward.png", "compliance.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text().splitlines()
    assert md[0] == "# Eval report: aligned vs base"
    assert md[2].startswith("**ALIGNED IS") or md[2].startswith("**NO CLEAR")  # verdict on line 3
    assert any(line.startswith("| Reward-model win rate |") for line in md[:12])
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["verdict"] == rep["verdict"] and isinstance(rep["verdict"], str)
    assert set(rep["summary"]) >= {
        "Reward-model win rate",
        "Length-controlled win rate",
        "Perplexity, general text (lower = better)",
    }
    assert rep["gate"]["passed"] is False  # 4 prompts: the win-rate CI cannot clear 0.5
    assert "Release gate" in "\n".join(md[:20])


def test_report_metrics_consistent(report):
    rep, _ = report
    m = rep["metrics"]
    assert set(m) >= {"win_rate", "compliance", "voice", "implicit", "kl", "perplexity", "drift"}
    assert m["implicit"]["beta"] == 0.25 and m["implicit"]["n_pairs"] == 4  # beta from the run's config.yaml
    wr = m["win_rate"]
    assert wr["wins"] + wr["ties"] + wr["losses"] == 4
    # The length-only scorer: every win must go to the longer answer.
    for a, b, la, lb in zip(m["rewards"]["aligned"], m["rewards"]["base"], *_words(report)):
        assert (a > b) == (la > lb)
    assert m["perplexity"]["base"]["ppl"]["value"] > 1.0 and m["perplexity"]["ratio"] > 0
    assert m["kl"]["per_sequence"]["value"] != 0.0  # the adapter changes the distribution
    assert rep["inputs"]["engine"] == "hf" and rep["inputs"]["reference"] == "base model"


def _words(report):
    _, out = report
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    return [len(r["aligned"][0].split()) for r in rows], [len(r["base"][0].split()) for r in rows]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="sampling.temperatur"):
        load_config(EvalConfig, None, ["sampling.temperatur=1"])
    with pytest.raises(ConfigError, match="split must be"):
        load_config(EvalConfig, None, ["split=validation"])
    with pytest.raises(ConfigError, match="ci must be in"):
        load_config(EvalConfig, None, ["ci=1.5"])
    # metrics.<key> switches come from the metric registry; an unknown one names the valid keys
    with pytest.raises(
        ConfigError, match=r"metrics.rewrad: unknown key; valid keys: reward, compliance, voice"
    ):
        load_config(EvalConfig, None, ["metrics.rewrad=false"])
    with pytest.raises(ConfigError, match=r"metrics.kl: expected true/false"):
        load_config(EvalConfig, None, ["metrics.kl=maybe"])


def test_bad_prompt_file_names_line(tmp_path, run_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"promt": "typo"}\n')
    cfg = load_config(EvalConfig, None, [f"aligned={run_dir}", f"prompts={bad}", "engine=hf"])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'prompt' is missing"):
        run_eval(cfg)


def test_real_minilm_voice_similarity():
    from onbrand.embedder import load_embedder, similarities

    emb = load_embedder()
    ex = ["Thanks for asking. The Dawn lamp brightens gently over thirty minutes before your alarm."]
    s = similarities(emb, [ex[0], "Quarterly tax filings are due in April."], [None, None], ex)
    assert s[0] == pytest.approx(1.0, abs=1e-4) and s[1] < 0.4


def test_flatten_samples_pairs_sample_j_with_sample_j():
    from onbrand.engines import Generation
    from onbrand.eval.inputs import PromptSet
    from onbrand.eval.runner import flatten_samples

    ps = PromptSet(
        ["a", "b"], [[{"role": "user", "content": "x"}], [{"role": "user", "content": "y"}]], ["c1", None]
    )
    gen = lambda tag: [Generation(f"{tag}{i}", None, [f"{tag}{i}s0", f"{tag}{i}s1"], [[1], [2, 3]], ["stop", "length"])  # noqa: E731
                       for i in range(2)]  # fmt: skip
    ps2, chats, base, al = flatten_samples(ps, ps.prompts, gen("b"), gen("a"))
    assert ps2.ids == ["a#0", "a#1", "b#0", "b#1"] and ps2.channels == ["c1", "c1", None, None]
    assert [g.text for g in base] == ["b0s0", "b0s1", "b1s0", "b1s1"] and [g.text for g in al][1] == "a0s1"
    assert base[1].token_ids == [[2, 3]] and base[1].finish_reasons == ["length"] and len(chats) == 4


def test_merged_checkpoint_matches_adapter(
    report, tmp_path, eval_tiny_dir, eval_lora_dir, prompts_file, repo_root
):
    """A merged checkpoint is served as its own model and must give the adapter's answers."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rep, out = report
    merged = tmp_path / "merged"
    base = AutoModelForCausalLM.from_pretrained(eval_tiny_dir, dtype=torch.float32)
    PeftModel.from_pretrained(base, str(eval_lora_dir)).merge_and_unload().save_pretrained(merged)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (eval_tiny_dir / name).exists():
            shutil.copy(eval_tiny_dir / name, merged / name)
    cfg = load_config(EvalConfig, None, [f"aligned={merged}", f"base_model={eval_tiny_dir}", f"prompts={prompts_file}",
                      f"out_dir={tmp_path / 'rep'}", "engine=hf", "sampling.max_new_tokens=12", "bootstrap=100",
                      "ppl_max_tokens=300", "ppl_window=64", "metrics.voice=false", "metrics.implicit=false",
                      f"brand={repo_root / 'configs/brands/aurora.yaml'}"])  # fmt: skip
    rep2 = run_eval(cfg, scorer=LengthScorer())
    assert rep2["inputs"]["aligned"]["kind"] == "merged"
    rows = lambda d: [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["aligned"] for r in rows(tmp_path / "rep")] == [r["aligned"] for r in rows(out)]
    ppl_a, ppl_b = (
        rep["metrics"]["perplexity"]["aligned"]["ppl"]["value"],
        rep2["metrics"]["perplexity"]["aligned"]["ppl"]["value"],
    )
    assert ppl_b == pytest.approx(ppl_a, rel=1e-4)
