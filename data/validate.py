"""Streaming import with validation that is never silent.

``iter_file(path)`` reads one file line by line (JSONL; CSV/TSV through the ``csv`` module; either
may be gzip-compressed; Parquet in record batches; a ``.json`` file holding one JSON array, as
Label Studio and Argilla export, one element at a time), converts each row
from its source format to a canonical record, and yields either the record or a
:class:`Quarantined` entry naming file, line, field and reason. A tool export row (a task with
several annotators' verdicts) gives one record per verdict; verdicts without a preference
(cancelled, draft, ...) are counted as skipped. ``ImportStats`` keeps the counts (read = accepted +
quarantined + skipped, duplicates included as reason ``duplicate``). Memory stays bounded: one row
at a time plus a 16-byte digest per accepted record for exact dedup.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onbrand.data.formats import JSON_FORMATS, MULTI_FORMATS, detect_format
from onbrand.data.formats.judgements import Judgement
from onbrand.data.records import DEFAULT_MAX_CHARS, REASONS, RecordError, canonicalize

CSV_SUFFIXES = (".csv", ".tsv")
RAW_KEEP = 2000  # characters of the bad row kept in the quarantine file
ARRAY_CHUNK = 1 << 20  # bytes read at a time from a JSON array file


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
    # Tool verdicts without a preference (cancelled, draft, ...): counted, not quarantined.
    skipped: Counter = field(default_factory=Counter)
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
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "formats": dict(sorted(self.formats.items())),
            "files": self.files,
        }

    def summary(self) -> str:
        q = ", ".join(f"{k} {v}" for k, v in sorted(self.quarantined.items())) or "none"
        fmts = ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items()))
        skipped = ""
        if self.skipped:
            by = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            skipped = f", skipped {sum(self.skipped.values())} ({by})"
        return (
            f"read {self.read}, accepted {self.accepted}, quarantined {sum(self.quarantined.values())} "
            f"({q}), duplicates {self.duplicates}{skipped}; formats: {fmts or 'none'}"
        )


def _raw(text: Any) -> str:
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
    return s[:RAW_KEEP]


def resolve_format(obj: Any, fmt: str) -> str:
    """The row's format: ``fmt``, or the detected one for ``auto``. Raises RecordError."""
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
    if name not in JSON_FORMATS:
        raise ValueError(f"format {name!r} is not a JSON row format")
    return name


def convert_row(obj: Any, fmt: str, source: dict[str, Any], max_chars: int) -> tuple[dict[str, Any], str]:
    """One parsed JSON/CSV row -> (canonical record, format name). Raises RecordError.

    Rows of the tool-export formats hold several verdicts: :func:`convert_judgements` reads them.
    """
    name = resolve_format(obj, fmt)
    if name in MULTI_FORMATS:
        raise ValueError(f"format {name!r} rows hold several judgements: read them with convert_judgements")
    try:
        shaped = JSON_FORMATS[name].convert(obj)
    except KeyError as e:
        raise RecordError("missing_field", str(e.args[0]), f"is required for format {name}") from None
    return canonicalize(shaped, source=source, max_chars=max_chars), name


def convert_judgements(
    obj: dict[str, Any],
    name: str,
    source: dict[str, Any],
    max_chars: int,
    options: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any] | Judgement]:
    """One tool-export row -> a canonical record per verdict, or the :class:`Judgement` itself when
    it is an error (``.error``) or a skip (``.skip``). ``source`` gains ``annotation`` (1-based)."""
    try:
        judgements = JSON_FORMATS[name].convert_many(obj, options)
    except RecordError as e:
        judgements = [Judgement(0, error=e)]
    for j in judgements:
        if j.record is not None and j.error is None:
            src = {**source, "annotation": j.index} if j.index else dict(source)
            try:
                yield canonicalize(j.record, source=src, max_chars=max_chars)
                continue
            except RecordError as e:
                j.error = e
        yield j


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


class _Chars:
    """Text of a binary stream decoded on demand, with the line number of the read position."""

    _WS = re.compile(r"[ \t\r\n]*")
    _BAD = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of invalid UTF-8 bytes

    def __init__(self, f: io.BufferedIOBase):
        self.f = f
        # Bad bytes become lone surrogates, so only the element holding them is lost (see value()).
        self.dec = codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False

    def fill(self) -> bool:
        """Read more (at least as much as is unread, so re-parsing stays linear); False at EOF."""
        if self.eof:
            return False
        raw = self.f.read(max(ARRAY_CHUNK, len(self.buf) - self.pos))
        self.eof = not raw
        self.buf = self.buf[self.pos :] + self.dec.decode(raw, final=self.eof)
        self.pos = 0
        return True

    def advance(self, end: int) -> None:
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file)."""
        while True:
            self.advance(self._WS.match(self.buf, self.pos).end())
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def value(self, dec: json.JSONDecoder, cap: int) -> tuple[Any, str, str]:
        """(next JSON value, "", "") or (None, reason, message) when it is bad or over ``cap``."""
        while True:
            try:
                obj, end = dec.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:
                    bad = self._BAD.search(self.buf, self.pos, end)
                    self.advance(end)
                    return (None, "invalid_utf8", "bytes are not valid UTF-8") if bad else (obj, "", "")
            except json.JSONDecodeError as e:
                if self.eof:
                    at = self.line + self.buf.count("\n", self.pos, e.pos)
                    return None, "invalid_json", f"{e.msg} at line {at}"
            if len(self.buf) - self.pos > cap:
                return None, "too_large", f"an element over {cap} characters"
            self.fill()


def _json_array_rows(
    path: Path, display: str, max_chars: int
) -> Iterator[tuple[int, Any, Quarantined | None]]:
    """A file holding one JSON array (Label Studio's and Argilla's exports), one element at a time;
    "line" = the line the element starts on. An element with invalid UTF-8 is quarantined alone; a
    syntax error or an element over the cap cannot be skipped past: it is one quarantine entry, and
    the rest of the file is not read."""
    cap = max_chars * 64 + (1 << 20)  # characters: one task carries several verdicts and metadata
    dec, n = json.JSONDecoder(), 0
    with _open_binary(path) as f:
        r = _Chars(f)

        def bad(reason: str, msg: str, line: int) -> tuple[int, None, Quarantined]:
            return line, None, Quarantined(display, line, reason, "", msg + "; the rest is not read")

        r.peek()
        r.advance(r.pos + 1)  # the "[" (the caller checked it)
        nxt = r.peek()
        while nxt and nxt != "]":
            n, start = n + 1, r.line
            obj, reason, msg = r.value(dec, cap)
            if reason == "invalid_utf8":  # the element was parsed: the next one can be read
                yield start, None, Quarantined(display, start, reason, "", f"array item {n}: {msg}")
            elif reason:
                yield bad(reason, f"array item {n}: {msg}", start)
                return
            else:
                yield start, obj, None
            nxt = r.peek()
            if nxt == ",":
                r.advance(r.pos + 1)
                nxt = r.peek()
            elif nxt != "]":
                yield bad("invalid_json", f"expected ',' or ']' after array item {n}", r.line)
                return
        if not nxt:
            yield bad("invalid_json", "the array is not closed", r.line)


def _is_json_array(path: Path) -> bool:
    """A ``.json`` file whose first non-blank character is ``[`` (else it is read as JSONL)."""
    with _open_binary(path) as f:
        head = f.read(4096).decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    return head.startswith("[")


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


def _rows(path: Path, fmt: str, display: str, max_chars: int):
    suffixes = [x.lower() for x in path.suffixes[-2:]]
    is_csv = fmt == "csv" or (fmt == "auto" and any(x in CSV_SUFFIXES for x in suffixes))
    if ".parquet" in suffixes:
        return _parquet_rows(path, display, max_chars), is_csv
    if is_csv:
        return _csv_rows(path, display, max_chars), is_csv
    if ".json" in suffixes and _is_json_array(path):
        return _json_array_rows(path, display, max_chars), is_csv
    return _jsonl_rows(path, display, max_chars), is_csv


def _tally(stats: ImportStats, per_file: dict[str, int], outcome: Any, name: str) -> Any:
    """Count one outcome (record, Quarantined or skipped Judgement); what to yield, or None."""
    stats.read += 1
    per_file["read"] += 1
    if isinstance(outcome, Quarantined):
        stats.quarantined[outcome.reason] += 1
        per_file["quarantined"] += 1
        return outcome
    if isinstance(outcome, Judgement):
        stats.skipped[outcome.skip] += 1
        per_file["skipped"] = per_file.get("skipped", 0) + 1
        return None
    stats.accepted += 1
    per_file["accepted"] += 1
    stats.formats[name] += 1
    return outcome


def _judged(
    obj: dict[str, Any], name: str, source: dict[str, Any], max_chars: int, options: Mapping[str, Any] | None
) -> Iterator[dict[str, Any] | Quarantined | Judgement]:
    """A tool-export row's verdicts; errors become Quarantined entries naming item and annotation."""
    for j in convert_judgements(obj, name, source, max_chars, options):
        if isinstance(j, Judgement) and j.error is not None:
            e = j.error
            where = f"item {source['item']}" + (f", annotation {j.index}" if j.index else "")
            yield Quarantined(
                source["file"], source["line"], e.reason, e.field, f"{where}: {e.message}", _raw(obj)
            )
        else:
            yield j


def iter_file(
    path: str | Path,
    fmt: str = "auto",
    max_chars: int = DEFAULT_MAX_CHARS,
    stats: ImportStats | None = None,
    display: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any] | Quarantined]:
    """Stream one file: yields canonical records and Quarantined entries, updating ``stats``.

    ``options``: the tool formats' field mapping (e.g. ``ls_prompt_field``, ``argilla_question``).
    """
    path = Path(path)
    display = display or str(path)
    stats = stats if stats is not None else ImportStats()
    per_file = stats.files.setdefault(display, {"read": 0, "accepted": 0, "quarantined": 0})
    rows, is_csv = _rows(path, fmt, display, max_chars)
    for item, (line, obj, problem) in enumerate(rows, start=1):
        source = {"file": display, "line": line}
        outcomes: Iterable[Any] = [problem]
        name = "csv" if is_csv else fmt
        if problem is None:
            try:
                name = "csv" if is_csv else resolve_format(obj, fmt)
                if name in MULTI_FORMATS:
                    outcomes = _judged(obj, name, {**source, "item": item}, max_chars, options)
                else:
                    outcomes = [convert_row(obj, "standard" if is_csv else name, source, max_chars)[0]]
            except RecordError as e:
                outcomes = [Quarantined(display, line, e.reason, e.field, e.message, _raw(obj))]
        for outcome in outcomes:
            out = _tally(stats, per_file, outcome, name)
            if out is not None:
                yield out


def import_files(
    paths: Iterable[str | Path],
    fmt: str = "auto",
    max_chars: int = DEFAULT_MAX_CHARS,
    stats: ImportStats | None = None,
    brand: str | None = None,
    dedup: bool = True,
    seen: set[bytes] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any] | Quarantined]:
    """Stream several files; exact duplicates (same content id) become ``duplicate`` entries.

    ``brand`` fills records that name none. ``seen`` may be shared between calls (e.g. the fixed
    test files first, then the train files) so a duplicate across them is caught too.
    """
    stats = stats if stats is not None else ImportStats()
    seen = seen if seen is not None else set()
    for path in paths:
        display = str(path)
        for item in iter_file(path, fmt, max_chars, stats, display, options):
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
