"""Checkpoints: a run stopped mid-way and resumed ends where an uninterrupted run ends; NaN stops."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from onbrand.training import dpo, sft
from onbrand.training.loop import TrainingDiverged
from onbrand.training.tracking import read_metrics


def args_for(base, out, *extra, recipe="dpo"):
    more = [f"ref_cache_dir={out.parent / 'cache'}"] if recipe == "dpo" else []
    return more + [
        f"model={base['model']}", f"data.snapshot={base['snap']}", f"data.brand={base['brand']}", f"out_dir={out}",
        "init_from=null", "lora.layers=0", "lora.r=4", "lora.alpha=8",
        "lora.dropout=0.1", "train.max_length=96", "train.tracking.wandb=disabled", "train.threads=1",
        "train.precision=fp32", "train.batch_size=4", "train.max_steps=6", "train.lr=5e-3", *extra,
    ]  # fmt: skip


@pytest.fixture
def base(tiny_model_dir, toy_snapshot, toy_brand):
    return {"model": tiny_model_dir, "snap": toy_snapshot, "brand": toy_brand}


def test_resume_equals_uninterrupted(base, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert dpo.main(["--config", "configs/dpo/demo.yaml", *args_for(base, full)]) == 0
    # "killed" after step 3 (checkpoint saved), then the same command again resumes
    assert dpo.main(["--config", "configs/dpo/demo.yaml", *args_for(base, cut, "train.stop_after=3")]) == 0
    assert not (cut / "adapter").exists() and (cut / "checkpoints" / "step-3" / "state.json").exists()
    assert dpo.main(["--config", "configs/dpo/demo.yaml", *args_for(base, cut)]) == 0
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(cut / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    la = [r["loss"] for r in read_metrics(full)]
    lb = [r["loss"] for r in read_metrics(cut)]
    assert [r["step"] for r in read_metrics(cut)] == list(range(1, 7))
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-5
    # the update really moved the weights (so equality above is not trivial)
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 1e-3


def test_changed_config_never_resumes_another_configs_checkpoint(base, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = ["--config", "configs/dpo/demo.yaml"]
    assert dpo.main([*cfg, *args_for(base, out, "train.stop_after=3")]) == 0
    capsys.readouterr()
    # same out_dir, another beta: the step-3 checkpoint is not this run's
    assert dpo.main([*cfg, *args_for(base, out, "dpo.beta=0.3", "train.stop_after=2")]) == 0
    err = capsys.readouterr().err
    assert "not resuming" in err and "resuming from" not in err
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-2", "step-3"}
    # the same beta again resumes from ITS checkpoint (step 2), not the newer step 3 of the old config
    assert dpo.main([*cfg, *args_for(base, out, "dpo.beta=0.3")]) == 0
    assert f"resuming from {out / 'checkpoints' / 'step-2'}" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 7))


def test_nan_loss_stops_with_step_and_checkpoint(base, tmp_path, monkeypatch):
    real = sft.make_step_fn
    calls = {"n": 0}

    def poisoned(tok, cfg, device):
        inner = real(tok, cfg, device)

        def step_fn(model, pairs):
            loss, m = inner(model, pairs)
            calls["n"] += 1
            return (loss * float("nan") if calls["n"] == 3 else loss), m

        return step_fn

    monkeypatch.setattr(sft, "make_step_fn", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"at step 3; last good checkpoint: .*step-2"):
        sft.main(
            ["--config", "configs/sft/demo.yaml", *args_for(base, out, "train.save_every=1", recipe="sft")]
        )
