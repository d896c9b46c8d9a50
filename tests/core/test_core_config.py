"""Typed configs: defaults <- YAML <- key=value; unknown keys and bad values fail clearly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from onbrand.config import (
    CONFIG_KINDS,
    FOREIGN_CONFIG_DIRS,
    ConfigError,
    check_range,
    dump_yaml,
    load_config,
    parse_overrides,
    resolve_kind,
)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Inner:
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"

    def __post_init__(self):
        check_range("beta", self.beta, 0, None, lo_open=True)


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    out: Path | None = None


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_yaml_and_overrides(tmp_path):
    p = _write(tmp_path, "name: a\ninner:\n  beta: 0.5\n")
    cfg = load_config(Outer, p, ["inner.loss_type=ipo", "steps=3", "tags=[a, b]", "out=/tmp/o"])
    assert (cfg.name, cfg.steps, cfg.tags, cfg.inner.beta, cfg.inner.loss_type) == (
        "a",
        3,
        ["a", "b"],
        0.5,
        "ipo",
    )
    assert cfg.out == Path("/tmp/o")
    assert yaml.safe_load(dump_yaml(cfg))["inner"] == {"beta": 0.5, "loss_type": "ipo"}


def test_unknown_key_names_key_line_and_valid_keys(tmp_path):
    p = _write(tmp_path, "name: a\ninner:\n  beta: 0.5\n  betaa: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    msg = str(e.value)
    assert f"{p}:4" in msg and "inner.betaa" in msg and "valid keys: beta, loss_type" in msg


def test_bad_values_name_value_and_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r"inner.loss_type: got 'dpo'; allowed: 'sigmoid', 'ipo'"):
        load_config(Outer, _write(tmp_path, "inner: {loss_type: dpo}\n"))
    with pytest.raises(ConfigError, match=r"c.yaml:1: steps: expected an integer, got 'ten'"):
        load_config(Outer, _write(tmp_path, "steps: ten\n"))
    with pytest.raises(ConfigError, match=r"beta must be in \(0, inf\], got -0.1"):
        load_config(Outer, None, ["inner.beta=-0.1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["nonsense"])


def test_scientific_floats_and_bools(tmp_path):
    cfg = load_config(Inner, _write(tmp_path, "beta: 1e-3\n"))
    assert cfg.beta == pytest.approx(1e-3)


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:2: invalid YAML"):
        load_config(Outer, _write(tmp_path, "name: a\n  bad: [\n"))


def _kind_for(path: Path) -> str | None:
    rel = path.relative_to(REPO / "configs").as_posix()
    if rel in CONFIG_KINDS:
        return CONFIG_KINDS[rel]
    return CONFIG_KINDS.get(rel.split("/")[0])


SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(REPO / "configs").as_posix() for p in SHIPPED])
def test_every_shipped_yaml_loads(path):
    rel = path.relative_to(REPO / "configs")
    if rel.parts[0] in FOREIGN_CONFIG_DIRS:
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict) and "distributed_type" in data, f"{path}: not an accelerate config"
        return
    kind = _kind_for(path)
    assert kind is not None, f"{rel}: no dataclass registered in onbrand.config.CONFIG_KINDS"
    load_config(resolve_kind(kind), path)
