"""Fixtures for training tests: a tiny snapshot in the documented format and a tiny brand card.

Built here (not from the demo data) so these tests do not move when the demo data changes. The
toy task is learnable: chosen answers are polite and name the product, rejected ones are curt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BRAND_YAML = """\
id: toy
name: Toy Lamps
description: Toy Lamps makes small lamps.
voice: [warm, brief]
do: [Answer politely]
dont: [Be curt]
"""

PRODUCTS = [
    "Dawn",
    "Halo",
    "Drift",
    "Glow",
    "Beam",
    "Spark",
    "Ember",
    "Nova",
    "Lumen",
    "Orbit",
    "Flare",
    "Shine",
]


def toy_records(n: int, offset: int = 0) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        name = PRODUCTS[i % len(PRODUCTS)]
        q = f"Question {i}: is the {name} lamp dimmable?"
        out.append(
            {
                "id": f"toy-{i:04d}",
                "prompt": [{"role": "user", "content": q}],
                "chosen": [
                    {"role": "assistant", "content": f"Yes, the {name} lamp dims smoothly. Thank you!"}
                ],
                "rejected": [{"role": "assistant", "content": "no" if i % 2 else "whatever, read the box"}],
                "brand": "toy",
                "channel": "product_question",
                "created_at": "2026-12-01T00:00:00+00:00",
                "annotators": ["a1"],
                "reason_tags": ["tone"],
                "source": {"file": "toy.jsonl", "line": i + 1},
            }
        )
    return out


def write_snapshot(out: Path, n_train: int = 16, n_test: int = 8) -> Path:
    from datasets import Dataset

    from onbrand.artifacts import sha256_json
    from onbrand.data.records import SCHEMA_VERSION
    from onbrand.data.snapshot import features

    out.mkdir(parents=True, exist_ok=True)
    # dev is what the recipes' held-out metrics read; test stays for the final eval only
    splits = {
        "train": toy_records(n_train),
        "dev": toy_records(n_test, offset=n_train),
        "test": toy_records(n_test, offset=n_train + n_test),
        "judge": toy_records(n_train, offset=n_train + 2 * n_test),  # the reward model's (eval judge's)
    }
    for split, rows in splits.items():
        Dataset.from_list(rows, features=features()).to_parquet(str(out / f"{split}.parquet"))
    manifest = {
        "snapshot_id": sha256_json(splits),
        "schema_version": SCHEMA_VERSION,
        "counts": {k: {"pairs": len(v)} for k, v in splits.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def toy_snapshot(tmp_path_factory) -> Path:
    return write_snapshot(tmp_path_factory.mktemp("toy-snapshot"))


@pytest.fixture(scope="session")
def toy_brand(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy-brand") / "toy.yaml"
    path.write_text(BRAND_YAML)
    return path


@pytest.fixture
def base_args(tiny_model_dir, toy_snapshot, toy_brand, tmp_path):
    """Overrides that point a recipe at the tiny model, the toy data and a fresh out_dir."""
    return [
        f"model={tiny_model_dir}",
        f"data.snapshot={toy_snapshot}",
        f"data.brand={toy_brand}",
        f"ref_cache_dir={tmp_path / 'refcache'}",
        "train.max_length=96",
        "train.tracking.wandb=disabled",
        "train.threads=1",
    ]


@pytest.fixture(scope="session")
def make_records():
    """``make_records(n, offset)``: toy canonical records (as in the toy snapshot)."""
    return toy_records
