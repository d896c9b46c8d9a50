"""SFT and reward-model recipes on the tiny model; the CLI entry; RewardScorer."""

from __future__ import annotations

import json

import pytest

from onbrand.training import reward_model as reward
from onbrand.training.tracking import read_metrics


def common(tiny_model_dir, toy_snapshot, toy_brand, out):
    return [
        f"model={tiny_model_dir}", f"data.snapshot={toy_snapshot}", f"data.brand={toy_brand}", f"out_dir={out}",
        "train.max_length=96", "train.tracking.wandb=disabled", "train.threads=1", "lora.layers=0",
        "train.precision=fp32", "train.batch_size=4", "train.warmup_ratio=0.0", "train.scheduler=constant",
        "lora.r=4", "lora.alpha=8",
    ]  # fmt: skip


def test_sft_learns_and_logs(tmp_path, tiny_model_dir, toy_snapshot, toy_brand):
    from onbrand.cli import main as cli_main

    out = tmp_path / "sft"
    args = common(tiny_model_dir, toy_snapshot, toy_brand, out) + [
        "train.epochs=3",
        "train.lr=2e-2",
        "eval_before=true",
    ]
    assert cli_main(["train", "sft", "--config", "configs/sft/demo.yaml", *args]) == 0
    rows = read_metrics(out)
    assert len(rows) == 12
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "peak_memory_mb", "completion_tokens"):
        assert all(key in r for r in rows), key
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["eval/nll"] < 0.75 * ev["eval/nll_before"]
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "sft" and run["tokenization"]["max_length"] == 96
    # lineage of the data: the exact records learned from (what the eval's judge check compares)
    assert run["data"]["split"] == "train" and run["data"]["eval_split"] == "dev"
    assert run["data"]["record_ids"] == [f"toy-{i:04d}" for i in range(16)]


def test_reward_run_records_the_judge_split(reward_run):
    """The demo reward config trains the eval's judge on the judge split, disjoint from train."""
    data = json.loads((reward_run / "run.json").read_text())["data"]
    assert data["split"] == "judge" and len(data["record_ids"]) == 16
    assert not set(data["record_ids"]) & {f"toy-{i:04d}" for i in range(16)}


def test_training_on_the_test_split_is_refused():
    from onbrand.training.common import DataSection

    with pytest.raises(ValueError, match="test split is for the final eval"):
        DataSection(train_split="test")
    with pytest.raises(ValueError, match="data.eval_split must differ"):
        DataSection(train_split="dev", eval_split="dev")
    with pytest.raises(ValueError, match="data.train_split must be one of"):
        DataSection(train_split="validation")


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model_dir, toy_snapshot, toy_brand):
    out = tmp_path_factory.mktemp("reward") / "run"
    args = common(tiny_model_dir, toy_snapshot, toy_brand, out) + ["train.epochs=4", "train.lr=1e-2"]
    assert reward.main(["--config", "configs/reward/demo.yaml", *args]) == 0
    return out


def test_reward_model_learns_toy_preferences(reward_run):
    rows = read_metrics(reward_run)
    assert all("rewards/accuracies" in r and "rewards/margins" in r for r in rows)
    assert sum(r["loss"] for r in rows[-4:]) / 4 < 0.5 * rows[0]["loss"] + 0.05
    ev = json.loads((reward_run / "eval.json").read_text())
    assert ev["eval/accuracy"] >= 0.75, ev


def test_reward_scorer_matches_training_eval(reward_run, make_records):
    scorer = reward.RewardScorer(reward_run)
    recs = make_records(4, offset=16)
    chosen = [r["prompt"] + r["chosen"] for r in recs]
    rejected = [r["prompt"] + r["rejected"] for r in recs]
    sc, sr = scorer.score(chosen), scorer.score(rejected)
    assert len(sc) == 4 and all(isinstance(x, float) for x in sc)
    assert sum(c > r for c, r in zip(sc, sr)) >= 3
    # batch composition must not change a score (packing is exact)
    alone = scorer.score(chosen[:1])
    assert abs(alone[0] - sc[0]) < 1e-4
    with pytest.raises(ValueError, match="assistant"):
        scorer.score([recs[0]["prompt"]])
