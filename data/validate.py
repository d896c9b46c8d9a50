"""Streaming import with validation that is never silent.

``iter_file(path)`` reads one file line by line (JSONL; CSV/TSV through the ``csv`` module; either
may be gzip-compressed; Parquet in record batches), converts each row
from its source format to a canonical record, and yields either the record or a
:class:`Quarantined` entry naming file, line, field and reason. ``ImportStats`` keeps the counts
(read = accepted + quarantined, duplicates included as reason ``duplicate``). Memory stays bounded:
one row at a time plus a 16-byte digest per accepted record for exact dedup.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onbrand.data.formats import JSON_FORMATS, detect_format
from onbrand.data.records import DEFAULT_MAX_CHARS, REASONS, RecordError, canonicalize

CSV_SUFFIXES = (".csv", ".tsv")
RAW_KEEP = 2000  # characters of the bad row kept in the quarantine file


@dataclass
class Quarantined:
    file: str
    line: int
    reason: str
    field: str
    message: str
    raw: str = ""
    # For reason "duplicate": the duplicate canonical record (its annotators/tags can be merged
    # into the kept one, so a second annotator's vote is not lost).
    record: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    record_id: str = ""  # the canonical record's id, when the row became one (e.g. split_leak)
    # For reason "split_leak": {"id", "split", "field", "similarity"} of the record it leaks to.
    twin: dict[str, Any] | None = None

    def __str__(self) -> str:
        where = f" {self.field}:" if self.field else ""
        return f"{self.file}:{self.line}:{where} {self.reason}: {self.message}"


@dataclass
class ImportStats:
    read: int = 0
    accepted: int = 0
    quarantined: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    files: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return self.quarantined.get("duplicate", 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "accepted": self.accepted,
            "quarantined": sum(self.quarantined.values()),
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
            "duplicates": self.duplicates,
            "formats": dict(sorted(self.formats.items())),
            "files": self.files,
        }

    def summary(self) -> str:
        q = ", ".join(f"{k} {v}" for k, v in sorted(self.quarantined.items())) or "none"
        fmts = ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items()))
        return (
            f"read {self.read}, accepted {self.accepted}, quarantined {sum(self.quarantined.values())} "
            f"({q}), duplicates {self.duplicates}; formats: {fmts or 'none'}"
        )


def _raw(text: Any) -> str:
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
    return s[:RAW_KEEP]


def convert_row(obj: Any, fmt: str, source: dict[str, Any], max_chars: int) -> tuple[dict[str, Any], str]:
    """One parsed JSON/CSV row -> (canonical record, format name). Raises RecordError."""
    if not isinstance(obj, dict):
        raise RecordError("not_object", "", f"expected a JSON object, got {type(obj).__name__}")
    name = detect_format(obj) if fmt == "auto" else fmt
    if name is None and all(k in obj for k in ("prompt", "chosen", "rejected")):
        name = "trl"  # the canonical shape with wrong-typed values: let validation name the field
    if name is None:
        keys = ", ".join(sorted(map(str, obj))[:8]) or "no keys"
        if "chosen" not in obj or "rejected" not in obj:
            missing = next(k for k in ("prompt", "chosen", "rejected") if k not in obj)
            raise RecordError("missing_field", missing, f"is required (row has: {keys})")
        nulls = [k for k in ("chosen", "rejected") if obj[k] is None]
        if nulls:
            raise RecordError("null_field", nulls[0], "is null")
        raise RecordError("unknown_format", "", f"row matches no supported format (keys: {keys})")
    if name in ("trl", "standard", "canonical", "hh-rlhf", "ultrafeedback"):
        try:
            shaped = JSON_FORMATS[name].convert(obj)
        except KeyError as e:
            raise RecordError("missing_field", str(e.args[0]), f"is required for format {name}") from None
    else:
        raise ValueError(f"format {name!r} is not a JSON row format")
    return canonicalize(shaped, source=source, max_chars=max_chars), name


def _jsonl_rows(path: Path, display: str, max_chars: int) -> Iterator[tuple[int, Any, Quarantined | None]]:
    """Yield (line number, parsed object or None, problem or None), one line at a time."""
    cap = max_chars * 4 + 4096  # bytes: UTF-8 is at most 4 bytes a character, plus JSON syntax
    with _open_binary(path) as f:
        for n, raw in enumerate(f, start=1):
            if len(raw) > cap:
                yield n, None, Quarantined(display, n, "too_large", "", f"line of {len(raw)} bytes > cap", "")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                msg = f"invalid UTF-8 at byte {e.start}"
                yield (
                    n,
                    None,
                    Quarantined(display, n, "invalid_utf8", "", msg, _raw(raw.decode("utf-8", "replace"))),
                )
                continue
            if not text.strip():
                yield n, None, Quarantined(display, n, "blank_line", "", "empty line", "")
                continue
            try:
                yield n, json.loads(text), None
            except json.JSONDecodeError as e:
                yield (
                    n,
                    None,
                    Quarantined(display, n, "invalid_json", "", f"{e.msg} at column {e.colno}", _raw(text)),
                )


def _open_binary(path: Path):
    """Plain or gzip-compressed (``.gz``), read as a binary stream either way."""
    import gzip

    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _parquet_rows(path: Path, display: str, max_chars: int) -> Iterator[tuple[int, Any, Quarantined | None]]:
    """Parquet (e.g. a Hub dataset's files), streamed in record batches; "line" = 1-based row number."""
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=512):
        for row in batch.to_pylist():
            n += 1
            yield n, row, None


def _decoded_lines(f: io.BufferedReader, bad: set[int]) -> Iterator[str]:
    for n, raw in enumerate(f, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(n)
            yield raw.decode("utf-8", "replace")


def _csv_rows(path: Path, display: str, max_chars: int) -> Iterator[tuple[int, Any, Quarantined | None]]:
    """CSV with a header row (prompt, chosen, rejected [, system, channel, brand, annotators,
    reason_tags, created_at]); list cells are ';'-separated. Quoted multi-line cells are fine."""
    csv.field_size_limit(max(max_chars * 4, 131072))
    bad: set[int] = set()
    with _open_binary(path) as f:
        reader = csv.reader(
            _decoded_lines(f, bad), delimiter="\t" if ".tsv" in [x.lower() for x in path.suffixes] else ","
        )
        header: list[str] | None = None
        last = 0
        for row in reader:
            start, last = last + 1, reader.line_num
            if header is None:
                header = [h.strip().lstrip("\ufeff") for h in row]
                continue
            if any(n in bad for n in range(start, last + 1)):
                yield (
                    start,
                    None,
                    Quarantined(display, start, "invalid_utf8", "", "invalid UTF-8 bytes", _raw(row)),
                )
            elif not row or not any(c.strip() for c in row):
                yield start, None, Quarantined(display, start, "blank_line", "", "empty row", "")
            elif len(row) != len(header):
                msg = f"{len(row)} cells, header has {len(header)}"
                yield start, None, Quarantined(display, start, "wrong_type", "", msg, _raw(row))
            else:
                yield start, _csv_object(dict(zip(header, row))), None


def _csv_object(cells: dict[str, str]) -> dict[str, Any]:
    obj: dict[str, Any] = {k: v for k, v in cells.items() if k not in ("system", "annotators", "reason_tags")}
    for k in ("annotators", "reason_tags"):
        if cells.get(k, "").strip():
            obj[k] = [x.strip() for x in cells[k].split(";") if x.strip()]
    for k in ("brand", "channel", "created_at"):
        if k in obj and not obj[k].strip():
            del obj[k]  # an empty optional cell means "not given"
    if cells.get("system", "").strip() and isinstance(obj.get("prompt"), str):
        obj["prompt"] = [
            {"role": "system", "content": cells["system"]},
            {"role": "user", "content": obj["prompt"]},
        ]
        for k in ("chosen", "rejected"):
            if isinstance(obj.get(k), str):
                obj[k] = [{"role": "assistant", "content": obj[k]}]
    return obj


def iter_file(
    path: str | Path,
    fmt: str = "auto",
    max_chars: int = DEFAULT_MAX_CHARS,
    stats: ImportStats | None = None,
    display: str | None = None,
) -> Iterator[dict[str, Any] | Quarantined]:
    """Stream one file: yields canonical records and Quarantined entries, updating ``stats``."""
    path = Path(path)
    display = display or str(path)
    stats = stats if stats is not None else ImportStats()
    per_file = stats.files.setdefault(display, {"read": 0, "accepted": 0, "quarantined": 0})
    suffixes = [x.lower() for x in path.suffixes[-2:]]
    is_csv = fmt == "csv" or (fmt == "auto" and any(x in CSV_SUFFIXES for x in suffixes))
    if ".parquet" in suffixes:
        rows = _parquet_rows(path, display, max_chars)
    elif is_csv:
        rows = _csv_rows(path, display, max_chars)
    else:
        rows = _jsonl_rows(path, display, max_chars)
    for line, obj, problem in rows:
        stats.read += 1
        per_file["read"] += 1
        if problem is None:
            try:
                rec, name = convert_row(
                    obj, "standard" if is_csv else fmt, {"file": display, "line": line}, max_chars
                )
                stats.formats["csv" if is_csv else name] += 1
            except RecordError as e:
                problem = Quarantined(display, line, e.reason, e.field, e.message, _raw(obj))
        if problem is not None:
            stats.quarantined[problem.reason] += 1
            per_file["quarantined"] += 1
            yield problem
        else:
            stats.accepted += 1
            per_file["accepted"] += 1
            yield rec


def import_files(
    paths: Iterable[str | Path],
    fmt: str = "auto",
    max_chars: int = DEFAULT_MAX_CHARS,
    stats: ImportStats | None = None,
    brand: str | None = None,
    dedup: bool = True,
    seen: set[bytes] | None = None,
) -> Iterator[dict[str, Any] | Quarantined]:
    """Stream several files; exact duplicates (same content id) become ``duplicate`` entries.

    ``brand`` fills records that name none. ``seen`` may be shared between calls (e.g. the fixed
    test files first, then the train files) so a duplicate across them is caught too.
    """
    stats = stats if stats is not None else ImportStats()
    seen = seen if seen is not None else set()
    for path in paths:
        display = str(path)
        for item in iter_file(path, fmt, max_chars, stats, display):
            if isinstance(item, Quarantined):
                yield item
                continue
            if brand and not item.get("brand"):
                item["brand"] = brand
            key = bytes.fromhex(item["id"])[:16]
            if dedup and key in seen:
                stats.accepted -= 1
                stats.files[display]["accepted"] -= 1
                stats.files[display]["quarantined"] += 1
                stats.quarantined["duplicate"] += 1
                src = item["source"]
                yield Quarantined(
                    display,
                    src["line"],
                    "duplicate",
                    "",
                    f"same content as an earlier record ({item['id'][:12]})",
                    item["id"],
                    record=item,
                )
                continue
            seen.add(key)
            yield item


def quarantine_line(q: Quarantined) -> str:
    d = asdict(q)
    d.pop("record", None)
    for key in ("record_id", "twin"):
        if not d[key]:
            d.pop(key)
    d["reason_text"] = REASONS.get(q.reason, "")
    return json.dumps(d, ensure_ascii=False) + "\n"
