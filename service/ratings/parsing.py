"""Parsing rating rows from CSV text (``user,item,rating[,timestamp]``) and MovieLens files, with errors that
name the line: ``line 7: rating 'x' is not an integer between 1 and 5``."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from service.errors import ApiError
from service.ratings.loader import StagedRow

_ID = re.compile(r"^[^/\x00-\x1f\x7f]{1,255}$")
HEADER = ("user", "item", "rating")


def line_error(line: int, message: str) -> ApiError:
    return ApiError(422, f"line {line}: {message}", details=[{"loc": ["body", "line", line], "msg": message}])


def parse_timestamp(raw: str) -> float:
    """Unix seconds (int or float) or ISO 8601 (naive = UTC) -> unix seconds."""
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        value = datetime.fromisoformat(raw)  # ValueError if not ISO either
        seconds = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if not -62135596800.0 < seconds < 253402300799.0:  # years 1..9999
        raise ValueError("timestamp out of range")
    return seconds


def parse_fields(line: int, fields: list[str], scale: int) -> StagedRow:
    if len(fields) not in (3, 4):
        raise ValueError(f"expected 3 or 4 fields (user,item,rating[,timestamp]), got {len(fields)}")
    user, item, rating = fields[0].strip(), fields[1].strip(), fields[2].strip()
    if not _ID.match(user):
        raise ValueError(f"user id {user!r} is empty, too long or has a slash or control character")
    if not _ID.match(item):
        raise ValueError(f"item id {item!r} is empty, too long or has a slash or control character")
    try:
        value = int(rating)
    except ValueError:
        value = -1
    if not 1 <= value <= scale:
        raise ValueError(f"rating {rating!r} is not an integer between 1 and {scale}")
    rated_at = None
    if len(fields) == 4 and fields[3].strip():
        try:
            rated_at = parse_timestamp(fields[3])
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"timestamp {fields[3]!r} is neither unix seconds nor ISO 8601") from exc
    return (line, user, item, value, rated_at)


class CsvRowParser:
    """Feed bytes chunks as they arrive; yields parsed rows; raises ApiError naming the failing line."""

    def __init__(self, scale: int):
        self.scale = scale
        self.line = 0
        self._tail = b""

    def _parse_line(self, raw: bytes) -> StagedRow | None:
        self.line += 1
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise line_error(self.line, "not valid UTF-8") from exc
        decoded = decoded.rstrip("\r")
        if self.line == 1:
            decoded = decoded.lstrip("\ufeff")
        if not decoded.strip():
            return None
        try:
            fields = next(csv.reader([decoded]))
        except csv.Error as exc:
            raise line_error(self.line, f"malformed CSV: {exc}") from exc
        if self.line == 1 and tuple(f.strip().lower() for f in fields[:3]) == HEADER:
            return None
        try:
            return parse_fields(self.line, fields, self.scale)
        except ValueError as exc:
            raise line_error(self.line, str(exc)) from exc

    def feed(self, chunk: bytes) -> list[StagedRow]:
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        return [row for row in map(self._parse_line, lines) if row is not None]

    def finish(self) -> list[StagedRow]:
        tail, self._tail = self._tail, b""
        if not tail:
            return []
        row = self._parse_line(tail)
        return [row] if row is not None else []


def iter_file_rows(path: str, *, fmt: str, scale: int, skip_header: bool = False) -> Iterator[StagedRow]:
    """Rows of a ratings file. ``fmt``: ``movielens`` (``u::i::r::t``, ML-1M/10M), ``movielens-100k``
    (tab-separated ``u i r t``, ML-100K ``u.data``), ``csv`` (``user,item,rating[,timestamp]``, ML-20M/25M's
    ``ratings.csv`` works: its header is skipped and half stars are rejected unless the scale allows)."""
    with open(path, "rb") as handle:
        if fmt == "csv":
            parser = CsvRowParser(scale)
            while chunk := handle.read(1 << 20):
                yield from parser.feed(chunk)
            yield from parser.finish()
            return
        sep = "::" if fmt == "movielens" else "\t"
        for line_number, raw in enumerate(handle, start=1):
            if skip_header and line_number == 1:
                continue
            decoded = raw.decode("utf-8", errors="strict").rstrip("\r\n")
            if not decoded:
                continue
            try:
                yield parse_fields(line_number, decoded.split(sep), scale)
            except ValueError as exc:
                raise line_error(line_number, str(exc)) from exc


def rows_from_json(rows: Iterable[dict], scale: int) -> list[StagedRow]:
    """Validated JSON batch rows -> staged rows; numbered from 0 like the JSON array."""
    out: list[StagedRow] = []
    for position, row in enumerate(rows):
        if not 1 <= row["rating"] <= scale:
            message = f"rating {row['rating']} is not between 1 and {scale}"
            raise ApiError(422, f"ratings[{position}]: {message}",
                           details=[{"loc": ["body", "ratings", position, "rating"], "msg": message}])
        stamp = row.get("timestamp")
        out.append((position, row["user"], row["item"], row["rating"], stamp.timestamp() if stamp else None))
    return out
