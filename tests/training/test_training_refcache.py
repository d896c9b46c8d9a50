"""Reference log-prob cache: hits on the same key, misses on any change, detects stale files."""

from __future__ import annotations

import json

import torch

from onbrand.training import dpo, ref_cache


def test_cache_key_hit_miss_and_stale(tmp_path, capsys):
    calls = []

    def compute():
        calls.append(1)
        return torch.tensor([-1.5, -2.5]), torch.tensor([-3.0, -4.0])

    key = ref_cache.cache_key(snapshot_id="s1", model="m1", tokenization={"max_length": 96}, ids=["a", "b"])
    c, r, hit = ref_cache.get_or_compute(tmp_path, key, compute)
    assert not hit and len(calls) == 1 and c.tolist() == [-1.5, -2.5]
    c, r, hit = ref_cache.get_or_compute(tmp_path, key, compute)
    assert hit and len(calls) == 1 and r.tolist() == [-3.0, -4.0]
    for change in (
        {"snapshot_id": "s2"},
        {"model": "m2"},
        {"tokenization": {"max_length": 128}},
        {"ids": ["b", "a"]},
    ):
        _, _, hit = ref_cache.get_or_compute(tmp_path, {**key, **change}, compute)
        assert not hit
    assert len(calls) == 5
    # a file under the right name but written for another key (e.g. copied by hand) is stale
    other = ref_cache.cache_key(snapshot_id="s9", model="m1", tokenization={"max_length": 96}, ids=["a", "b"])
    path = ref_cache.cache_path(tmp_path, key)
    ref_cache.get_or_compute(tmp_path, other, compute)
    ref_cache.cache_path(tmp_path, other).replace(path)
    _, _, hit = ref_cache.get_or_compute(tmp_path, key, compute)
    assert not hit and "stale" in capsys.readouterr().err and len(calls) == 7
    path.write_bytes(b"garbage")
    _, _, hit = ref_cache.get_or_compute(tmp_path, key, compute)
    assert not hit and len(calls) == 8


def test_dpo_reuses_cache_and_invalidates_on_tokenization_change(
    tiny_model_dir, toy_snapshot, toy_brand, tmp_path
):
    def run(out, *extra):
        args = [
            "--config", "configs/dpo/demo.yaml", f"model={tiny_model_dir}", f"data.snapshot={toy_snapshot}",
            f"data.brand={toy_brand}", f"out_dir={tmp_path / out}", f"ref_cache_dir={tmp_path / 'cache'}",
            "init_from=null", "lora.layers=0", "lora.r=4", "train.tracking.wandb=disabled", "train.threads=1",
            "train.precision=fp32", "train.batch_size=8", "train.max_steps=1", "train.max_length=96", *extra,
        ]  # fmt: skip
        assert dpo.main(args) == 0
        return json.loads((tmp_path / out / "run.json").read_text())["final"]["ref_cache_hits"]

    assert run("a") == {"train": False, "dev": False}
    assert run("b") == {"train": True, "dev": True}
    assert run("c", "train.max_length=80") == {"train": False, "dev": False}
    assert run("d", "train.precision=bf16") == {"train": False, "dev": False}
