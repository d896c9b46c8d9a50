"""Token ids of a snapshot split, computed once and shared by every recipe that reads them.

SFT, DPO and the reward model tokenise the same records with the same call
(:func:`onbrand.training.batching.tokenize_pair`), so a pipeline used to run the tokenizer over the
dev split three times and over train twice. The first stage now tokenises and writes
``$ONBRAND_CACHE/tokens/<key>/``; the next ones load it.

The key is a sha256 over everything that decides the ids (:func:`cache_key`): the snapshot id and
the split file's hash, the selected rows, the tokenizer's files (or its vocabulary), the chat
template, the system prompt, ``max_length`` (completions are cut to fit it) and the version of the
tokenisation code (the source of the functions that produce the ids, plus the transformers,
tokenizers and jinja2 versions). Any difference is another key, so a stage tokenising differently
never reads another's ids.

An entry holds ``pairs.safetensors`` (``tokens`` int32: every pair's prompt, chosen and rejected
ids back to back; ``lengths`` int32 (N, 3); the record ids in the metadata) and ``meta.json`` (the
key, the pair count and the sha256 of ``pairs.safetensors``). Both are written to a temporary file
and renamed into place, pairs first, so a reader never sees half a file and concurrent writers (who
write the same bytes) are safe. A file whose checksum or shape does not match is reported and
rebuilt. The reference log-probs (``ref_cache``) and the synthetic flag / weight are not part of
an entry: they depend on the model and on the config, and are filled in after loading.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file, sha256_json
from onbrand.lineage import tokenizer_record
from onbrand.models import cache_root
from onbrand.stats.text import common_prefix
from onbrand.training import batching
from onbrand.training.batching import TokenizedPair

FORMAT = "onbrand-tokens-v1"
ENV = "ONBRAND_TOKEN_CACHE"  # unset: $ONBRAND_CACHE/tokens; "off": no cache; else a directory
PAIRS, META = "pairs.safetensors", "meta.json"
# Files that define a tokenizer (weights and model config do not change token ids).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
                   "tokenizer.model", "spiece.model")  # fmt: skip
# The functions whose code decides the ids: their source is part of the key.
_CODE = (batching.tokenize_pair, batching._ids, common_prefix, batching.with_system)


@dataclass
class CacheStats:
    """What this process did: ``passes`` tokeniser passes over ``tokenised_pairs`` pairs, ``hits``
    entries loaded, ``rebuilt`` corrupt entries replaced."""

    hits: int = 0
    passes: int = 0
    tokenised_pairs: int = 0
    rebuilt: int = 0

    def reset(self) -> None:
        self.hits = self.passes = self.tokenised_pairs = self.rebuilt = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


STATS = CacheStats()


def default_dir() -> Path | None:
    """``$ONBRAND_TOKEN_CACHE`` (``off`` disables the cache) or ``$ONBRAND_CACHE/tokens``."""
    env = os.environ.get(ENV, "").strip()
    if env.lower() in {"off", "0", "false", "no"}:
        return None
    return Path(env) if env else cache_root() / "tokens"


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, memoised per (path, mtime, size): a stage hashes the tokenizer per split."""
    return sha256_file(path)


def tokenizer_identity(tok) -> dict[str, Any]:
    """Content hashes of the tokenizer's files; the vocabulary's hash when it has no directory."""
    path = Path(str(getattr(tok, "name_or_path", "") or ""))
    files = {}
    if path.is_dir():
        for name in TOKENIZER_FILES:
            if (path / name).is_file():
                st = (path / name).stat()
                files[name] = _file_sha256(str(path / name), st.st_mtime_ns, st.st_size)
    ident: dict[str, Any] = {"class": type(tok).__name__, "len": len(tok), "files": files}
    if not files:
        ident["name_or_path"] = str(path)
        ident["vocab_sha256"] = sha256_json(sorted(tok.get_vocab().items()))
    return ident


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The tokenisation code's version: its source hash and the libraries that run the template."""
    try:
        source = "\n".join(inspect.getsource(f) for f in _CODE)
    except OSError:  # no source files (zipped install): the package version stands in
        source = metadata.version("onbrand")
    versions = {}
    for name in ("transformers", "tokenizers", "jinja2"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"format": FORMAT, "source_sha256": sha256_bytes(source.encode()), **versions}


def cache_key(
    *,
    snapshot_id: str | None,
    split: str,
    split_file: str | Path,
    rows: list[int],
    tok,
    system_prompt: str | None,
    max_length: int,
) -> dict[str, Any]:
    """Everything that decides the ids of ``rows`` (indices into ``split_file``) as a JSON dict."""
    return {
        "snapshot_id": snapshot_id,
        "split": split,
        "split_sha256": sha256_file(split_file),
        "rows": {"n": len(rows), "sha256": sha256_json(rows)},
        "tokenizer": tokenizer_identity(tok),
        # chat template, system prompt and max_length hashes (the record run.json holds)
        "tokenization": tokenizer_record(tok, system_prompt, max_length),
        "code": dict(code_version()),
    }


def key_hash(key: dict[str, Any]) -> str:
    return sha256_json(key)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"tokens: {msg}", file=sys.stderr)


@contextlib.contextmanager
def _locked(entry: Path, shared: bool):
    """An flock on ``.locks/<entry>.lock`` in the cache root: writers exclusive, readers shared, so a reader
    never sees a new pairs file with the old meta.json (two files cannot be replaced atomically)."""
    locks = entry.parent / ".locks"  # beside the entries, not among them
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{entry.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def save(entry: Path, key: dict[str, Any], pairs: list[TokenizedPair], seconds: float) -> None:
    """Write ``pairs`` as ``entry``/pairs.safetensors, then meta.json (with its checksum), under the
    entry's lock; a concurrent writer that finished first leaves a valid entry, which is kept."""
    with _locked(entry, shared=False):
        if _read(entry, key) is not None:
            return
        _write(entry, key, pairs, seconds)


def _write(entry: Path, key: dict[str, Any], pairs: list[TokenizedPair], seconds: float) -> None:
    import numpy as np
    from safetensors.numpy import save as st_save

    flat = [t for p in pairs for part in (p.prompt, p.chosen, p.rejected) for t in part]
    lengths = [(len(p.prompt), len(p.chosen), len(p.rejected)) for p in pairs]
    blob = st_save(
        {
            "tokens": np.asarray(flat, dtype=np.int32),
            "lengths": np.asarray(lengths, dtype=np.int32).reshape(len(pairs), 3),
        },
        metadata={"format": FORMAT, "ids": json.dumps([p.id for p in pairs])},
    )
    atomic_write_bytes(entry / PAIRS, blob)
    meta = {
        "key": key,
        "pairs": len(pairs),
        "sha256": sha256_bytes(blob),
        "tokenise_seconds": round(seconds, 4),
    }
    atomic_write_text(entry / META, json.dumps(meta, indent=1, sort_keys=True))


def _decode(blob: bytes, n: int) -> list[TokenizedPair]:
    """The pairs of a checksummed ``pairs.safetensors``; ValueError when its shapes disagree."""
    from safetensors.numpy import load as st_load

    tensors = st_load(blob)
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])  # the safetensors header
    ids = json.loads(header.get("__metadata__", {}).get("ids", "[]"))
    tokens, lengths = tensors["tokens"], tensors["lengths"]
    if tokens.dtype.name != "int32" or lengths.shape != (n, 3) or len(ids) != n:
        raise ValueError(f"{len(ids)} ids and lengths {lengths.shape} for {n} pairs")
    if int(lengths.sum()) != len(tokens):
        raise ValueError(f"lengths sum to {int(lengths.sum())}, {len(tokens)} tokens stored")
    flat, out, pos = tokens.tolist(), [], 0
    for pid, sizes in zip(ids, lengths.tolist()):
        parts = []
        for k in sizes:
            parts.append(flat[pos : pos + k])
            pos += k
        out.append(TokenizedPair(id=pid, prompt=parts[0], chosen=parts[1], rejected=parts[2]))
    return out


def load(entry: Path, key: dict[str, Any], quiet: bool = False) -> list[TokenizedPair] | None:
    """The cached pairs of ``key``; None when absent, and None with a log line when the entry is
    partial, foreign or corrupt (the caller rebuilds it)."""
    meta_path, pairs_path = entry / META, entry / PAIRS
    if not meta_path.exists() and not pairs_path.exists():
        return None
    try:
        with _locked(entry, shared=True):
            return _read(entry, key, strict=True)
    except Exception as e:  # noqa: BLE001 - any unreadable entry is rebuilt, never trusted
        STATS.rebuilt += 1
        _log(f"cache {entry.name[:12]} is corrupt or partial ({type(e).__name__}: {e}); re-tokenising", quiet)
        return None


def _read(entry: Path, key: dict[str, Any], strict: bool = False) -> list[TokenizedPair] | None:
    """The entry's pairs; a bad entry raises when ``strict``, else gives None."""
    try:
        meta = json.loads((entry / META).read_text())
        blob = (entry / PAIRS).read_bytes()
        if meta.get("key") != key:
            raise ValueError("stored key differs")
        if sha256_bytes(blob) != meta.get("sha256"):
            raise ValueError(f"checksum mismatch ({len(blob)} bytes)")
        return _decode(blob, int(meta["pairs"]))
    except Exception:
        if strict:
            raise
        return None


def get_or_tokenize(
    key: dict[str, Any],
    tokenize: Callable[[], list[TokenizedPair]],
    what: str,
    cache_dir: Path | None | str = "default",
    quiet: bool = False,
) -> tuple[list[TokenizedPair], dict[str, Any]]:
    """The pairs of ``key``: loaded from the cache, else ``tokenize()``-d and written to it.

    Returns ``(pairs, info)`` with info ``{"key": sha256, "hit": bool}``. ``cache_dir``: the cache
    root (``"default"``: :func:`default_dir`; None: no cache). ``what`` names the split in the log.
    """
    root = default_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
    h = key_hash(key)
    entry = root / h if root is not None else None
    if entry is not None:
        got = load(entry, key, quiet)
        if got is not None:
            STATS.hits += 1
            _log(f"cache hit {h[:12]} ({len(got)} pairs) for {what}", quiet)
            return got, {"key": h, "hit": True}
    t0 = time.perf_counter()
    pairs = tokenize()
    seconds = time.perf_counter() - t0
    STATS.passes += 1
    STATS.tokenised_pairs += len(pairs)
    if entry is None:
        _log(f"tokenised {len(pairs)} pairs in {seconds:.2f} s (cache off) for {what}", quiet)
        return pairs, {"key": h, "hit": False}
    save(entry, key, pairs, seconds)
    _log(f"tokenised {len(pairs)} pairs in {seconds:.2f} s, cached {h[:12]} for {what}", quiet)
    return pairs, {"key": h, "hit": False}
