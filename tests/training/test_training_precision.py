"""``train.precision: auto`` picks bf16 only where the hardware has it natively."""

from __future__ import annotations

import pytest
import torch

from onbrand.training import loop
from onbrand.training.loop import TrainConfig, autocast, resolve_precision


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu_flags(monkeypatch, native, expected):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    # Explicit choices are never changed.
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, torch.device("cpu")) == p


def test_auto_autocast_matches_the_resolved_precision(monkeypatch):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    with autocast("auto", torch.device("cpu")):
        assert (x @ w).dtype == torch.float32
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    with autocast("auto", torch.device("cpu")):
        assert (x @ w).dtype == torch.bfloat16


def test_config_accepts_auto():
    assert TrainConfig(precision="auto").precision == "auto"
