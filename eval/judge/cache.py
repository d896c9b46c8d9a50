"""Verdict cache: a re-run of the same judge on the same prompts and answers costs nothing.

One SQLite file (stdlib ``sqlite3``, WAL): ``key -> (text, prompt_tokens, completion_tokens)``.
The key is :func:`verdict_key`: the judge's identity, the exact messages (which hold the rubric,
the prompt and both answers in their order), the answer format, the decoding settings and
``RUBRIC_VERSION``. Only parseable answers are stored, so a judge that failed (timeout, 500,
garbage) is asked again on the next run.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from onbrand.artifacts import sha256_json
from onbrand.eval.judge.rubric import RUBRIC_VERSION
from onbrand.models import cache_root


def verdict_key(identity: dict[str, Any], messages: list[dict[str, str]], output: str, max_tokens: int,
                temperature: float) -> str:  # fmt: skip
    return sha256_json(
        {
            "rubric_version": RUBRIC_VERSION,
            "judge": identity,
            "messages": messages,
            "output": output,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }  # fmt: skip
    )


def default_path() -> Path:
    return cache_root() / "judge" / "cache.sqlite"


class VerdictCache:
    """``get_many(keys) -> {key: row}`` and ``put(key, text, prompt_tokens, completion_tokens)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
        )
        self.db.commit()

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        uniq = list(dict.fromkeys(keys))
        for i in range(0, len(uniq), 500):  # SQLite's bound-parameter limit
            chunk = uniq[i : i + 500]
            marks = ",".join("?" * len(chunk))
            q = f"SELECT key, text, prompt_tokens, completion_tokens FROM verdicts WHERE key IN ({marks})"
            for key, text, pt, ct in self.db.execute(q, chunk):
                out[key] = {"text": text, "prompt_tokens": pt or 0, "completion_tokens": ct or 0}
        return out

    def put(self, key: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?)",
            (key, text, int(prompt_tokens), int(completion_tokens), time.time()),
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()
