"""The guard's conversation log: one record per exchange (schema ``onbrand.conversation/1``, see
docs/production.md), appended to JSONL segments, rotated by size/age, compacted to Parquet.

Layout of ``log.dir``::

    seg-20250101T120000123456Z-4242-9f3a.jsonl     the segment being written (locked by its writer)
    seg-20250101T110000654321Z-4242-11c0.parquet   a closed, compacted segment
    seg-...jsonl.torn                              the torn last line of a crashed segment, kept aside

Durability: each record is one ``write`` of a whole line to an unbuffered file, done before the
client gets its response, so a crash of the guard process (even ``kill -9``) loses only exchanges
still in flight; fsync policy ``log.fsync``: ``always`` (each record, before the response: a power
loss loses nothing answered), ``interval`` (a background thread every ``fsync_interval_ms``: a
power loss loses at most that window) or ``never``. Closed segments are written to Parquet in
memory, then atomically (temp file, fsync, rename) and the JSONL is removed only after that, so a
crash during compaction leaves either the JSONL or the Parquet (the reader prefers the Parquet).

A writer holds an exclusive ``flock`` on its open segment; at start it compacts the segments no
live writer holds (a crashed guard's), keeping a torn last line aside (``.torn``) and reporting it.
:func:`iter_records` streams records from a directory or files (JSONL and Parquet), reports a torn
last line instead of failing on it, and fails with file:line on a corrupt complete line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from onbrand.artifacts import atomic_write_bytes
from onbrand.serve.policy import LogSection
from onbrand.serve.redact import redact_record

log = logging.getLogger("onbrand.guard.log")
SCHEMA_ID = "onbrand.conversation/1"
_MSG = pa.struct([("role", pa.string()), ("content", pa.string())])
_RULE = pa.struct(
    [("rule", pa.string()), ("kind", pa.string()), ("passed", pa.bool_()), ("detail", pa.string())]
)
ARROW_SCHEMA = pa.schema([
    ("schema", pa.string()), ("id", pa.string()), ("ts", pa.string()), ("endpoint", pa.string()),
    ("model", pa.string()), ("export_id", pa.string()), ("channel", pa.string()),
    ("messages", pa.list_(_MSG)), ("response", pa.string()), ("original_response", pa.string()),
    ("latency_ms", pa.float64()), ("upstream_ms", pa.float64()), ("stream", pa.bool_()),
    ("rules", pa.list_(_RULE)), ("action", pa.string()), ("attempts", pa.int64()), ("status", pa.int64()),
    ("redacted", pa.bool_()),
    ("usage", pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64())])),
])  # fmt: skip
FIELDS = frozenset(ARROW_SCHEMA.names)


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _segment_name() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"seg-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


# ----------------------------------------------------------------------------- reading
@dataclass
class ReadReport:
    """What a read found besides records: torn last lines of crashed segments (not records)."""

    files: int = 0
    records: int = 0
    torn: list[str] = field(default_factory=list)


def without_compacted(paths: Iterable[Path]) -> list[Path]:
    """``paths`` less each ``.jsonl`` whose ``.parquet`` twin (same directory and stem) is there too:
    compaction writes the Parquet atomically before it deletes the JSONL, so a crash in between
    leaves both, holding the same records. Every reader of a log directory applies this rule."""
    paths = list(paths)
    compacted = {p.with_suffix("") for p in paths if p.suffix == ".parquet"}
    return [p for p in paths if not (p.suffix == ".jsonl" and p.with_suffix("") in compacted)]


def segment_files(root: str | Path) -> list[Path]:
    """A log directory's segments in time order; a JSONL with a Parquet twin is skipped."""
    root = Path(root)
    return sorted(
        without_compacted([*root.glob("seg-*.parquet"), *root.glob("seg-*.jsonl")]), key=lambda p: p.stem
    )


def _iter_jsonl(path: Path, report: ReadReport) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                if not raw.endswith(b"\n"):  # the last line of a segment whose writer died mid-write
                    report.torn.append(f"{path}:{lineno}: torn last line ({len(raw)} bytes), not a record")
                    return
                raise ValueError(f"{path}:{lineno}: corrupt record (not JSON): {raw[:80]!r}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: a record must be a JSON object, got {type(rec).__name__}")
            report.records += 1
            yield rec


def iter_parquet(path: Path, report: ReadReport, batch_size: int) -> Iterator[dict[str, Any]]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet file: {e}") from None
    for batch in pf.iter_batches(batch_size=batch_size):
        rows = batch.to_pylist()
        report.records += len(rows)
        yield from rows


def iter_records(
    sources: str | Path | Iterable[str | Path], report: ReadReport | None = None, batch_size: int = 1024
) -> Iterator[dict[str, Any]]:
    """Stream records from log directories and/or ``.jsonl`` / ``.parquet`` files, in constant
    memory (Parquet in batches of ``batch_size`` rows). Torn last lines go to ``report.torn``."""
    report = report if report is not None else ReadReport()
    if isinstance(sources, (str, Path)):
        sources = [sources]
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise FileNotFoundError(f"{src}: no such log file or directory")
        for path in segment_files(src) if src.is_dir() else [src]:
            report.files += 1
            if path.suffix == ".parquet":
                yield from iter_parquet(path, report, batch_size)
            else:
                yield from _iter_jsonl(path, report)


# ----------------------------------------------------------------------------- compaction
def compact_segment(path: Path) -> Path | None:
    """A closed JSONL segment -> ``<stem>.parquet`` (atomically), then the JSONL is removed. A torn
    last line is kept aside in ``<name>.torn``. Returns the Parquet path (None: segment empty)."""
    report = ReadReport()
    records = list(_iter_jsonl(path, report))
    if report.torn:
        tail = path.read_bytes().rsplit(b"\n", 1)[-1]
        atomic_write_bytes(path.with_name(path.name + ".torn"), tail)
        log.warning("%s (kept in %s.torn)", report.torn[0], path.name)
    out = path.with_suffix(".parquet")
    if records:
        table = pa.Table.from_pylist(records, schema=ARROW_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        atomic_write_bytes(out, sink.getvalue().to_pybytes())
    path.unlink()
    return out if records else None


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path``; None when a live writer holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def recover(root: str | Path) -> list[Path]:
    """Compact the JSONL segments that no live writer holds (a crashed or stopped guard's)."""
    done = []
    for path in sorted(Path(root).glob("seg-*.jsonl")):
        fd = _try_lock(path)
        if fd is None:
            continue
        try:
            if path.with_suffix(".parquet").exists():  # crashed between the rename and the unlink
                path.unlink()
            else:
                out = compact_segment(path)
                done += [out] if out else []
        except ValueError as e:  # a corrupt line in the middle: leave the segment for a person
            log.error("not compacting %s: %s", path, e)
        finally:
            os.close(fd)
    for tmp in Path(root).glob(".seg-*.tmp"):  # an interrupted atomic write
        tmp.unlink(missing_ok=True)
    return done


# ----------------------------------------------------------------------------- writing
class ConvLog:
    """Appends records to the current segment; rotates, fsyncs and compacts per ``LogSection``.

    ``append`` is called from the guard's event loop (one thread); a background thread fsyncs
    (policy ``interval``), rotates a segment that got too old while idle and compacts closed ones.
    """

    def __init__(self, cfg: LogSection):
        self.cfg = cfg
        self.root = Path(cfg.dir)
        self.max_bytes = int(cfg.segment_max_mb * 1024 * 1024)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened = 0.0
        self._dirty = False
        self._closed_q: queue.Queue[Path | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.records = 0

    # -- lifecycle
    def open(self) -> ConvLog:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.cfg.compact:
            recovered = recover(self.root)
            if recovered:
                log.info("compacted %d segment(s) left by an earlier guard", len(recovered))
        with self._lock:
            self._new_segment()
        self._thread = threading.Thread(target=self._background, name="onbrand-convlog", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the background thread, close the open segment and compact every closed one."""
        self._stop.set()
        if self._thread is not None:
            self._closed_q.put(None)
            self._thread.join()
        with self._lock:
            closed = self._close_segment()
        if closed is not None:
            self._closed_q.put(closed)
        self._drain_compaction()

    def __enter__(self) -> ConvLog:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the write path
    def append(self, record: dict[str, Any]) -> None:
        """Redact (when configured), then write the record as one line and flush it to the OS."""
        extra, missing = set(record) - FIELDS, FIELDS - set(record)
        if extra or missing:
            raise ValueError(f"conversation record: unknown keys {sorted(extra)}, missing {sorted(missing)}")
        if self.cfg.redact:
            redact_record(record)
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise RuntimeError("the conversation log is closed")
            if self._size and (
                self._size + len(data) > self.max_bytes
                or time.monotonic() - self._opened > self.cfg.segment_max_s
            ):
                self._rotate()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(data)
            self._dirty = True
            self.records += 1
            if self.cfg.fsync == "always":
                os.fsync(self._fd)
                self._dirty = False

    # -- segments (called with the lock held)
    def _new_segment(self) -> None:
        self._path = self.root / f"{_segment_name()}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._size, self._opened, self._dirty = 0, time.monotonic(), False

    def _close_segment(self) -> Path | None:
        if self._fd is None:
            return None
        if self.cfg.fsync != "never":
            os.fsync(self._fd)
        os.close(self._fd)  # releases the lock: the segment is closed
        path, self._fd, self._path = self._path, None, None
        if self._size == 0:
            path.unlink(missing_ok=True)
            return None
        return path

    def _rotate(self) -> None:
        closed = self._close_segment()
        self._new_segment()
        if closed is not None:
            self._closed_q.put(closed)

    # -- background: fsync, idle rotation, compaction
    def _background(self) -> None:
        interval = self.cfg.fsync_interval_ms / 1000 if self.cfg.fsync == "interval" else 1.0
        while not self._stop.is_set():
            try:
                item = self._closed_q.get(timeout=interval)
                if item is not None and self.cfg.compact:
                    self._compact(item)
            except queue.Empty:
                pass
            self._sync_and_age()

    def _sync_and_age(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            if self._size and time.monotonic() - self._opened > self.cfg.segment_max_s:
                self._rotate()
                return
            if self.cfg.fsync != "interval" or not self._dirty:
                return
            fd, self._dirty = os.dup(self._fd), False
        try:
            os.fsync(fd)  # outside the lock: appends go on meanwhile
        finally:
            os.close(fd)

    def _compact(self, path: Path) -> None:
        try:
            compact_segment(path)
        except (ValueError, OSError) as e:
            log.error("not compacting %s: %s", path, e)

    def _drain_compaction(self) -> None:
        while True:
            try:
                item = self._closed_q.get_nowait()
            except queue.Empty:
                return
            if item is not None and self.cfg.compact:
                self._compact(item)
