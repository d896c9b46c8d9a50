"""Synthetic pairs in training: data.synthetic include|exclude, data.synthetic_weight, and a weight of 0
giving the loss of the human pairs alone (DPO, reward model, SFT; tiny model, float32: packing the
pairs into other rows moves log-probs by float32 rounding only, hence the 2e-5 relative tolerance)."""

from __future__ import annotations

import json

import pytest
import torch

SYS = "You are the assistant of Toy Lamps."


def _snapshot(root, make_records):
    """train: 6 human + 3 synthetic pairs; dev: 3 human + 1 synthetic (only a hand-made snapshot has one)."""
    from datasets import Dataset

    from onbrand.data.records import SCHEMA_VERSION
    from onbrand.data.snapshot import features

    root.mkdir(parents=True, exist_ok=True)
    splits = {"train": make_records(9), "dev": make_records(4, offset=50)}
    for split, rows in splits.items():
        synthetic = {6, 7, 8} if split == "train" else {3}
        rows = [{**r, "origin": "synthetic" if i in synthetic else None} for i, r in enumerate(rows)]
        Dataset.from_list(rows, features=features(origin=True)).to_parquet(str(root / f"{split}.parquet"))
    manifest = {"snapshot_id": "synthetic-toy", "schema_version": SCHEMA_VERSION, "counts": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_include_exclude_and_weights(tmp_path, tokenizer, make_records):
    from onbrand.training.common import DataSection, load_pairs, synthetic_note

    snap = _snapshot(tmp_path / "snap", make_records)
    data = DataSection(snapshot=str(snap), brand=None, synthetic_weight=0.25)
    stats: dict = {}
    train, dev, _ = load_pairs(data, tokenizer, SYS, 96, stats=stats)
    assert [p.weight for p in train] == [1.0] * 6 + [0.25] * 3 and sum(p.synthetic for p in train) == 3
    assert len(dev) == 3 and not any(p.synthetic for p in dev)  # held-out: human judgements only
    assert stats == {
        "train": {"synthetic": 3, "synthetic_dropped": 0},
        "dev": {"synthetic": 0, "synthetic_dropped": 1},
    }
    assert "train: 3 synthetic pairs (weight 0.25)" in synthetic_note(data, stats)
    data = DataSection(snapshot=str(snap), brand=None, synthetic="exclude", max_train_pairs=5)
    stats = {}
    train, _, _ = load_pairs(data, tokenizer, SYS, 96, stats=stats)
    assert len(train) == 5 and not any(p.synthetic for p in train)
    data = DataSection(snapshot=str(snap), brand=None, synthetic="exclude")
    stats = {}
    train, _, _ = load_pairs(data, tokenizer, SYS, 96, stats=stats)
    assert len(train) == 6 and stats["train"] == {"synthetic": 0, "synthetic_dropped": 3}
    assert "3 synthetic pairs dropped (data.synthetic=exclude)" in synthetic_note(data, stats)
    with pytest.raises(ValueError, match="synthetic_weight"):
        DataSection(synthetic_weight=1.5)
    with pytest.raises(ValueError, match="synthetic"):
        from onbrand.config import load_config

        load_config(DataSection, None, ["synthetic=maybe"])


def _pairs(tokenizer, make_records, weight: float):
    """(all 6 pairs with 2 synthetic of ``weight``, the 4 human ones); distinct reference log-probs."""
    from onbrand.training.batching import tokenize_pair

    pairs = [tokenize_pair(tokenizer, r, SYS, 96) for r in make_records(6)]
    for i, p in enumerate(pairs):
        p.ref_chosen, p.ref_rejected = -30.0 - 3 * i, -28.0 + 2 * i  # non-trivial DPO margins
        if i in (1, 4):  # synthetic: a reference that makes their DPO loss ~0, far from the others'
            p.synthetic, p.weight = True, weight
            p.ref_chosen, p.ref_rejected = -400.0, -20.0
    return pairs, [p for p in pairs if not p.synthetic]


def _loss(make_step, model, pairs, train, micro: int) -> torch.Tensor:
    """The loop's step loss: begin_step on the (1-rank) global batch, micro-batches weighted by size."""
    step = make_step(train)
    if hasattr(step, "begin_step"):
        step.begin_step(pairs, 1, lambda v: v)
    chunks = [pairs[i : i + micro] for i in range(0, len(pairs), micro)]
    with torch.no_grad():
        return sum(step(model, c)[0] * (len(c) / len(pairs)) for c in chunks)


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from onbrand.training.common import PackedModel
    from onbrand.training.lora import LoRAConfig, build_policy

    torch.manual_seed(0)
    lora = LoRAConfig(r=4, alpha=8)
    causal = PackedModel(build_policy(str(tiny_model_dir), lora, pad_token_id=2)).eval()
    score = build_policy(str(tiny_model_dir), lora, task="reward", pad_token_id=2)
    with torch.no_grad():  # a wider random head than the default init: scores (and losses) that differ
        for name, p in score.named_parameters():
            if "score" in name:
                p.normal_(0.0, 3.0)
    return causal, PackedModel(score, mode="score").eval()


@pytest.mark.parametrize("recipe", ["dpo", "dpo_nll", "reward", "sft"])
def test_weight_zero_equals_the_human_pairs_alone(recipe, models, tokenizer, make_records):
    from onbrand.training import dpo, reward_model, sft

    dev = torch.device("cpu")
    if recipe.startswith("dpo"):
        cfg = dpo.DPOConfig()
        cfg.dpo.beta, cfg.dpo.nll_weight = 0.5, (1.0 if recipe == "dpo_nll" else 0.0)
        model = models[0]
        make = lambda train: dpo.make_step_fn(model, tokenizer, cfg, dev, train)  # noqa: E731
    elif recipe == "reward":
        cfg, model = reward_model.RewardConfig(), models[1]
        make = lambda train: reward_model.make_step_fn(tokenizer, cfg, dev, train)  # noqa: E731
    else:
        cfg, model = sft.SFTConfig(), models[0]
        make = lambda train: sft.make_step_fn(tokenizer, cfg, dev)  # noqa: E731
    cfg.train.max_length = 96
    mixed, human = _pairs(tokenizer, make_records, 0.0)
    if recipe == "sft":
        sft.sft_only(mixed)
    # SFT's loss is a per-micro-batch token mean (as before): compare it on one micro-batch.
    micros = [6] if recipe == "sft" else [6, 4, 1]
    alone = _loss(make, model, human, None, len(human))
    assert alone.item() > 0.01 and abs(alone.item() - 0.6931) > 1e-3  # a non-trivial loss
    for micro in micros:
        got = _loss(make, model, mixed, mixed, micro)
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=2e-5)

    def weighted(w: float) -> list:
        pairs = _pairs(tokenizer, make_records, w)[0]
        return sft.sft_only(pairs) if recipe == "sft" else pairs

    full = _loss(make, model, weighted(1.0), None, 6)  # weight 1 everywhere: the plain mean over all six
    # ... and ignoring the weights would fail that comparison by far
    assert abs(full.item() - alone.item()) > 10 * (1e-5 + 2e-5 * abs(alone.item()))
    if recipe != "dpo_nll":  # a weighted mean of two groups moves monotonically with the weight
        half = _loss(make, model, weighted(0.5), mixed, 6)
        lo, hi = sorted([full.item(), alone.item()])
        assert lo + 1e-6 < half.item() < hi - 1e-6


def test_recipe_logs_and_records_the_synthetic_pairs(
    tmp_path, tiny_model_dir, toy_brand, make_records, capsys
):
    from onbrand.training import reward_model

    snap = _snapshot(tmp_path / "snap", make_records)
    out = tmp_path / "rm"
    args = [
        f"model={tiny_model_dir}", f"data.snapshot={snap}", f"data.brand={toy_brand}", f"out_dir={out}",
        "data.train_split=train", "data.synthetic=exclude", "train.max_length=96", "train.tracking.wandb=disabled",
        "train.threads=1", "lora.layers=0", "train.batch_size=3", "train.max_steps=1", "lora.r=4", "lora.alpha=8",
    ]  # fmt: skip
    assert reward_model.main(["--config", "configs/reward/demo.yaml", *args]) == 0
    assert "train: 3 synthetic pairs dropped (data.synthetic=exclude)" in capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["train_pairs"] == 6 and run["eval_pairs"] == 3
    assert run["data"]["synthetic"] == {
        "mode": "exclude", "weight": 1.0,
        "train": {"synthetic": 0, "synthetic_dropped": 3}, "dev": {"synthetic": 0, "synthetic_dropped": 1},
    }  # fmt: skip
