"""Token cache: a cached load equals a fresh tokenisation, any change of what decides the ids misses,
a damaged entry is rebuilt, and DPO then the reward model (then SFT) tokenise a snapshot once."""

from __future__ import annotations

import copy
import json
import shutil
import threading

import pytest

from onbrand.config import load_config
from onbrand.data.snapshot import load_snapshot
from onbrand.training import token_cache
from onbrand.training.batching import tokenize_pair
from onbrand.training.common import brand_prompt, load_pairs
from onbrand.training.dpo import DPOConfig
from onbrand.training.reward_model import RewardConfig

STATS = token_cache.STATS


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh token cache directory for the test (and zeroed stats)."""
    root = tmp_path / "tokens"
    monkeypatch.setenv(token_cache.ENV, str(root))
    STATS.reset()
    return root


def recipe_cfg(cls, config, toy_snapshot, toy_brand, *extra):
    return load_config(
        cls,
        config,
        [f"data.snapshot={toy_snapshot}", f"data.brand={toy_brand}", "train.max_length=96", *extra],
    )


def fresh(cfg, tok, system_prompt, max_length=96):
    """The recipe's pairs tokenised directly, without the cache."""
    dd, _ = load_snapshot(cfg.data.snapshot)
    return tuple(
        [tokenize_pair(tok, dd[s][i], system_prompt, max_length) for i in range(len(dd[s]))]
        for s in (cfg.data.train_split, cfg.data.eval_split)
    )


@pytest.mark.parametrize(("cls", "config"), [(DPOConfig, "configs/dpo/demo.yaml"), (RewardConfig, "configs/reward/demo.yaml")])  # fmt: skip
def test_cached_load_equals_fresh_tokenisation(
    cache, tokenizer, toy_snapshot, toy_brand, cls, config, capsys
):
    cfg = recipe_cfg(cls, config, toy_snapshot, toy_brand)
    sp = brand_prompt(cfg.data.brand)[0]
    want = fresh(cfg, tokenizer, sp)
    first, second = {}, {}
    cold = load_pairs(cfg.data, tokenizer, sp, 96, tokens=first)[:2]
    warm = load_pairs(cfg.data, tokenizer, sp, 96, tokens=second)[:2]
    assert cold == want and warm == want  # every id, every token, in order
    assert all(len(w) > 0 for w in want)
    assert [v["hit"] for v in first.values()] == [False, False]
    assert [v["hit"] for v in second.values()] == [True, True]
    assert STATS.as_dict() == {
        "hits": 2,
        "passes": 2,
        "tokenised_pairs": len(want[0]) + len(want[1]),
        "rebuilt": 0,
    }
    err = capsys.readouterr().err
    assert f"tokens: tokenised {len(want[0])} pairs in " in err
    assert f"tokens: cache hit {second[cfg.data.train_split]['key'][:12]} ({len(want[0])} pairs)" in err
    entries = sorted(p.name for p in cache.iterdir() if p.name != ".locks")
    assert entries == sorted(v["key"] for v in first.values())


def _variants(tokenizer, toy_snapshot, tmp_path):
    """(name, data overrides, tokenizer, system prompt, max_length) each changing one key part."""
    other_template = copy.deepcopy(tokenizer)
    other_template.chat_template = tokenizer.chat_template + "{# v2 #}"  # same ids, another template
    edited = tmp_path / "edited"  # a hand-edited snapshot: same manifest (snapshot_id), other rows
    shutil.copytree(toy_snapshot, edited)
    dd, _ = load_snapshot(edited)
    rows = dd["train"].to_list()
    rows[3]["chosen"] = [{"role": "assistant", "content": "Edited."}]
    from datasets import Dataset

    Dataset.from_list(rows, features=dd["train"].features).to_parquet(str(edited / "train.parquet"))
    return [
        ("system prompt", [], tokenizer, "You are Other Lamps.", 96),
        ("max_length", [], tokenizer, "You are Toy.", 80),
        ("chat template", [], other_template, "You are Toy.", 96),
        ("rows", ["data.max_train_pairs=5"], tokenizer, "You are Toy.", 96),
        ("split file", [f"data.snapshot={edited}"], tokenizer, "You are Toy.", 96),
    ]


def test_any_key_part_change_misses(cache, tokenizer, toy_snapshot, toy_brand, tmp_path):
    base = recipe_cfg(DPOConfig, "configs/dpo/demo.yaml", toy_snapshot, toy_brand)
    load_pairs(base.data, tokenizer, "You are Toy.", 96)
    for name, extra, tok, sp, max_length in _variants(tokenizer, toy_snapshot, tmp_path):
        cfg = recipe_cfg(DPOConfig, "configs/dpo/demo.yaml", toy_snapshot, toy_brand, *extra)
        info = {}
        train, _, _ = load_pairs(cfg.data, tok, sp, max_length, tokens=info)
        assert info["train"]["hit"] is False, name
        assert train == fresh(cfg, tok, sp, max_length)[0][: len(train)], name
    # the same content under another path is the same entry (content-addressed, not path-addressed)
    copy_dir = tmp_path / "copy"
    shutil.copytree(toy_snapshot, copy_dir)
    info = {}
    cfg = recipe_cfg(DPOConfig, "configs/dpo/demo.yaml", copy_dir, toy_brand)
    load_pairs(cfg.data, tokenizer, "You are Toy.", 96, tokens=info)
    assert info["train"]["hit"] and info["dev"]["hit"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_meta", "bad_meta"])
def test_damaged_entry_is_rebuilt(cache, tokenizer, toy_snapshot, toy_brand, damage, capsys):
    cfg = recipe_cfg(DPOConfig, "configs/dpo/demo.yaml", toy_snapshot, toy_brand)
    info = {}
    want = load_pairs(cfg.data, tokenizer, "You are Toy.", 96, tokens=info)[0]
    entry = cache / info["train"]["key"]
    blob = (entry / token_cache.PAIRS).read_bytes()
    if damage == "truncate":
        (entry / token_cache.PAIRS).write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":  # same size, the last stored ids changed: only the checksum tells
        (entry / token_cache.PAIRS).write_bytes(blob[:-4] + bytes(b ^ 1 for b in blob[-4:]))
    elif damage == "no_meta":  # a writer killed between the two files
        (entry / token_cache.META).unlink()
    else:
        (entry / token_cache.META).write_text("{")
    capsys.readouterr()
    again = {}
    got = load_pairs(cfg.data, tokenizer, "You are Toy.", 96, tokens=again)[0]
    assert got == want and again["train"]["hit"] is False and again["dev"]["hit"] is True
    assert STATS.rebuilt == 1 and STATS.passes == 3
    assert f"tokens: cache {info['train']['key'][:12]} is corrupt or partial" in capsys.readouterr().err
    third = {}
    assert load_pairs(cfg.data, tokenizer, "You are Toy.", 96, tokens=third)[0] == want
    assert third["train"]["hit"] is True  # the rebuilt entry is whole again


def test_concurrent_writers_leave_one_good_entry(cache, tokenizer, make_records):
    recs = make_records(12)
    want = [tokenize_pair(tokenizer, r, "You are Toy.", 96) for r in recs]
    key = {"test": "concurrent", "n": len(recs)}
    gate = threading.Barrier(4)

    def tokenize():
        gate.wait()  # all four tokenise, then write the same entry at the same time
        return [tokenize_pair(tokenizer, r, "You are Toy.", 96) for r in recs]

    results: list = [None] * 4

    def worker(k):
        results[k] = token_cache.get_or_tokenize(key, tokenize, "toy", quiet=True)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r[0] == want and r[1]["hit"] is False for r in results)
    entry = cache / token_cache.key_hash(key)
    assert sorted(p.name for p in entry.iterdir()) == [token_cache.META, token_cache.PAIRS]  # no temp files
    pairs, info = token_cache.get_or_tokenize(key, lambda: pytest.fail("must hit"), "toy", quiet=False)
    assert pairs == want and info["hit"] is True


def test_dpo_then_reward_then_sft_tokenise_once(
    cache, tiny_model_dir, toy_snapshot, toy_brand, tmp_path, capsys
):
    """DPO tokenises train and dev once; the reward model and SFT on the same snapshot read them."""
    from onbrand.training import dpo, reward_model, sft

    common = [
        f"model={tiny_model_dir}", f"data.snapshot={toy_snapshot}", f"data.brand={toy_brand}", "train.max_length=96",
        "train.tracking.wandb=disabled", "train.threads=1", "train.precision=fp32", "train.max_steps=1",
        "train.batch_size=4", "lora.layers=0", "lora.r=4", "lora.alpha=8",
    ]  # fmt: skip
    assert dpo.main(["--config", "configs/dpo/demo.yaml", *common, "init_from=null",
                     f"out_dir={tmp_path / 'dpo'}", f"ref_cache_dir={tmp_path / 'ref'}"]) == 0  # fmt: skip
    assert STATS.as_dict() == {"hits": 0, "passes": 2, "tokenised_pairs": 16 + 8, "rebuilt": 0}
    assert reward_model.main(["--config", "configs/reward/demo.yaml", *common, "data.train_split=train",
                              f"out_dir={tmp_path / 'rm'}"]) == 0  # fmt: skip
    assert STATS.passes == 2 and STATS.hits == 2
    assert sft.main(["--config", "configs/sft/demo.yaml", *common, f"out_dir={tmp_path / 'sft'}"]) == 0
    assert STATS.passes == 2 and STATS.hits == 4
    runs = {
        k: json.loads((tmp_path / k / "run.json").read_text())["token_cache"] for k in ("dpo", "rm", "sft")
    }
    assert {s: v["hit"] for s, v in runs["dpo"].items()} == {"train": False, "dev": False}
    assert runs["rm"] == {s: {**v, "hit": True} for s, v in runs["dpo"].items()} == runs["sft"]
    err = capsys.readouterr().err
    assert err.count("tokens: tokenised ") == 2 and err.count("tokens: cache hit ") == 4
