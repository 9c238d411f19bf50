"""Bulk rating loads inside the caller's transaction: rows are staged in a temporary table (PostgreSQL: COPY;
SQLite: executemany), then applied by one ``INSERT ... ON CONFLICT`` (the last row wins for a (user, item)
given twice). Missing users and items are created, or reported with the line that named them.
The JSON batch, the CSV upload and ``rbmrec import`` all go through here, so they behave alike."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from sqlalchemy import text
from sqlalchemy.engine import Connection

from service.errors import ApiError

# (line or row number, user external id, item external id, rating value, rated_at as unix seconds or None)
StagedRow = tuple[int, str, str, int, float | None]


@dataclass
class LoadResult:
    rows: int
    ratings_written: int
    users_created: int
    items_created: int


# The ratings table's foreign keys and secondary indexes as migrations/versions/0001_initial.py creates them.
_DROP_RATINGS_EXTRAS = ("ALTER TABLE ratings DROP CONSTRAINT fk_ratings_user_id_users, "
                        "DROP CONSTRAINT fk_ratings_item_id_items; "
                        "DROP INDEX ix_ratings_item_id; DROP INDEX ix_ratings_ingested_at")
_CREATE_RATINGS_EXTRAS = (
    "SET LOCAL maintenance_work_mem = '256MB'",
    "CREATE INDEX ix_ratings_item_id ON ratings (item_id)",
    "CREATE INDEX ix_ratings_ingested_at ON ratings (ingested_at)",
    "ALTER TABLE ratings ADD CONSTRAINT fk_ratings_user_id_users FOREIGN KEY (user_id) REFERENCES users (id) "
    "ON DELETE CASCADE",
    "ALTER TABLE ratings ADD CONSTRAINT fk_ratings_item_id_items FOREIGN KEY (item_id) REFERENCES items (id) "
    "ON DELETE CASCADE",
)


def _sqlite_time(value: datetime | float) -> str:
    # The text form SQLAlchemy's SQLite DateTime reads back (naive UTC).
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, tz=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class RatingLoader:
    """``add(rows)`` any number of times, then ``apply()`` once; all inside ``connection``'s transaction."""

    def __init__(self, connection: Connection, *, create_missing: bool = True, row_label: str = "line",
                 exclusive: bool = False):
        self.connection = connection
        # PostgreSQL bulk mode (``rbmrec import --exclusive``): lock the ratings table, drop its foreign keys
        # and secondary indexes, insert, then rebuild them (one validating join each instead of two
        # foreign-key lookups per row). All inside the transaction; readers of ratings wait until it commits.
        self.exclusive = exclusive
        self.create_missing = create_missing
        self.row_label = row_label
        self.rows = 0
        self.postgresql = connection.dialect.name == "postgresql"
        if self.postgresql:
            connection.exec_driver_sql(
                "CREATE TEMP TABLE IF NOT EXISTS rating_staging (seq bigint, user_ext text, item_ext text, "
                "value smallint, rated_epoch double precision) ON COMMIT DROP")
            connection.exec_driver_sql("TRUNCATE rating_staging")
        else:
            connection.exec_driver_sql("DROP TABLE IF EXISTS temp.rating_staging")
            connection.exec_driver_sql(
                "CREATE TEMP TABLE rating_staging (seq INTEGER, user_ext TEXT, item_ext TEXT, value INTEGER, rated_epoch TEXT)")

    def add(self, rows: Sequence[StagedRow]) -> None:
        if not rows:
            return
        if self.postgresql:
            driver = self.connection.connection.driver_connection
            with driver.cursor() as cursor, cursor.copy(
                    "COPY rating_staging (seq, user_ext, item_ext, value, rated_epoch) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            self.connection.exec_driver_sql(
                "INSERT INTO rating_staging (seq, user_ext, item_ext, value, rated_epoch) VALUES (?, ?, ?, ?, ?)",
                [(s, u, i, v, _sqlite_time(t) if t is not None else None) for s, u, i, v, t in rows])
        self.rows += len(rows)

    def add_delimited_file(self, handle: BinaryIO, *, separator: bytes, scale: int, chunk_bytes: int = 1 << 24) -> None:
        """PostgreSQL fast path for MovieLens files (``u::i::r::t`` or tab-separated ``u i r t``): the bytes go to
        COPY as they are (separator turned into a tab), and the checks run in SQL afterwards; every error names
        the file's line. Must be the only way rows reach this loader (line number = staging ``seq``)."""
        import psycopg

        if not self.postgresql or self.rows:
            raise ValueError("add_delimited_file needs PostgreSQL and an empty loader")
        driver = self.connection.connection.driver_connection
        self.connection.exec_driver_sql("CREATE TEMP SEQUENCE IF NOT EXISTS rating_staging_seq")
        self.connection.exec_driver_sql("SELECT setval('rating_staging_seq', 1, false)")
        self.connection.exec_driver_sql("ALTER TABLE rating_staging ALTER COLUMN seq SET DEFAULT nextval('rating_staging_seq')")
        first_line, tail = 1, b""
        while True:
            block = handle.read(chunk_bytes)
            data = tail + block
            if not block:
                tail = b""
            else:
                cut = data.rfind(b"\n") + 1
                data, tail = data[:cut], data[cut:]
            if data:
                lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
                text_data = data.replace(b"\\", b"\\\\").replace(b"\r", b"").replace(separator, b"\t")
                try:
                    with driver.cursor() as cursor, cursor.copy(
                            "COPY rating_staging (user_ext, item_ext, value, rated_epoch) FROM STDIN") as copy:
                        copy.write(text_data)
                except psycopg.Error as exc:
                    context = (exc.diag.context or "") if getattr(exc, "diag", None) else ""
                    match = re.search(r"line (\d+)", context)
                    line = first_line + int(match.group(1)) - 1 if match else first_line
                    message = (exc.diag.message_primary if getattr(exc, "diag", None) else None) or str(exc)
                    raise ApiError(422, f"line {line}: {message}",
                                   details=[{"loc": ["line", line], "msg": message}]) from None
                first_line += lines
                self.rows += lines
            if not block:
                break
        bad = self.connection.execute(text(
            "SELECT seq, user_ext, item_ext, value FROM rating_staging WHERE value NOT BETWEEN 1 AND :scale "
            "OR user_ext = '' OR item_ext = '' OR user_ext ~ '[/[:cntrl:]]' OR item_ext ~ '[/[:cntrl:]]' "
            "OR length(user_ext) > 255 OR length(item_ext) > 255 ORDER BY seq LIMIT 1"), {"scale": scale}).first()
        if bad is not None:
            seq, user, item, value = bad
            message = (f"rating {value} is not an integer between 1 and {scale}" if not 1 <= value <= scale
                       else f"user id {user!r} or item id {item!r} is empty, too long or has a slash or control character")
            raise ApiError(422, f"line {seq}: {message}", details=[{"loc": ["line", seq], "msg": message}])

    def _missing(self, table: str, column: str) -> None:
        row = self.connection.exec_driver_sql(
            f"SELECT s.seq, s.{column} FROM rating_staging s LEFT JOIN {table} t ON t.external_id = s.{column} "
            f"WHERE t.id IS NULL ORDER BY s.seq LIMIT 1").first()
        if row is not None:
            what = "user" if table == "users" else "item"
            raise ApiError(404, f"{self.row_label} {row[0]}: {what} {row[1]!r} not found (create it first, "
                           f"or leave create_missing on)", details=[{"loc": [self.row_label, row[0]], "msg": f"unknown {what}"}])

    def apply(self) -> LoadResult:
        conn = self.connection
        if self.rows == 0:
            return LoadResult(0, 0, 0, 0)
        now = datetime.now(UTC)
        if self.postgresql:
            conn.exec_driver_sql("ANALYZE rating_staging")
            if self.create_missing:
                users = conn.execute(text(
                    "INSERT INTO users (external_id, created_at) SELECT DISTINCT user_ext, :now FROM rating_staging "
                    "ON CONFLICT (external_id) DO NOTHING"), {"now": now}).rowcount
                items = conn.execute(text(
                    "INSERT INTO items (external_id, created_at) SELECT DISTINCT item_ext, :now FROM rating_staging "
                    "ON CONFLICT (external_id) DO NOTHING"), {"now": now}).rowcount
            else:
                self._missing("users", "user_ext")
                self._missing("items", "item_ext")
                users = items = 0
            # The de-duplicating sort of a large load should stay in memory.
            conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
            empty = False
            if self.exclusive:
                conn.exec_driver_sql("LOCK TABLE ratings IN ACCESS EXCLUSIVE MODE")
                # Into an empty table nothing can conflict: the primary key is rebuilt afterwards as well.
                empty = not conn.exec_driver_sql("SELECT EXISTS (SELECT 1 FROM ratings)").scalar()
                conn.exec_driver_sql(_DROP_RATINGS_EXTRAS + ("; ALTER TABLE ratings DROP CONSTRAINT pk_ratings" if empty else ""))
            upsert = "" if empty else (
                " ON CONFLICT (user_id, item_id) DO UPDATE SET value = excluded.value, "
                "rated_at = excluded.rated_at, ingested_at = excluded.ingested_at")
            written = conn.execute(text(
                "INSERT INTO ratings (user_id, item_id, value, rated_at, ingested_at) "
                "SELECT DISTINCT ON (u.id, i.id) u.id, i.id, s.value, coalesce(to_timestamp(s.rated_epoch), :now), :now "
                "FROM rating_staging s JOIN users u ON u.external_id = s.user_ext "
                "JOIN items i ON i.external_id = s.item_ext ORDER BY u.id, i.id, s.seq DESC" + upsert),
                {"now": now}).rowcount
            if self.exclusive:
                if empty:
                    conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
                    conn.exec_driver_sql("ALTER TABLE ratings ADD CONSTRAINT pk_ratings PRIMARY KEY (user_id, item_id)")
                for statement in _CREATE_RATINGS_EXTRAS:
                    conn.exec_driver_sql(statement)
            conn.exec_driver_sql("TRUNCATE rating_staging")
        else:
            stamp = _sqlite_time(now)
            if self.create_missing:
                users = conn.execute(text(
                    "INSERT OR IGNORE INTO users (external_id, created_at) "
                    "SELECT DISTINCT user_ext, :now FROM rating_staging"), {"now": stamp}).rowcount
                items = conn.execute(text(
                    "INSERT OR IGNORE INTO items (external_id, created_at) "
                    "SELECT DISTINCT item_ext, :now FROM rating_staging"), {"now": stamp}).rowcount
            else:
                self._missing("users", "user_ext")
                self._missing("items", "item_ext")
                users = items = 0
            written = conn.execute(text(
                "INSERT INTO ratings (user_id, item_id, value, rated_at, ingested_at) "
                "SELECT u.id, i.id, s.value, coalesce(s.rated_epoch, :now), :now "
                "FROM rating_staging s JOIN users u ON u.external_id = s.user_ext "
                "JOIN items i ON i.external_id = s.item_ext "
                "WHERE s.seq IN (SELECT max(seq) FROM rating_staging GROUP BY user_ext, item_ext) "
                "ON CONFLICT (user_id, item_id) DO UPDATE SET value = excluded.value, "
                "rated_at = excluded.rated_at, ingested_at = excluded.ingested_at"), {"now": stamp}).rowcount
            conn.exec_driver_sql("DROP TABLE IF EXISTS temp.rating_staging")
        return LoadResult(rows=self.rows, ratings_written=max(written, 0), users_created=max(users, 0),
                          items_created=max(items, 0))


def load_rows(connection: Connection, rows: Iterable[StagedRow], *, create_missing: bool = True,
              row_label: str = "row", chunk: int = 10_000, exclusive: bool = False) -> LoadResult:
    loader = RatingLoader(connection, create_missing=create_missing, row_label=row_label, exclusive=exclusive)
    buffer: list[StagedRow] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= chunk:
            loader.add(buffer)
            buffer = []
    loader.add(buffer)
    return loader.apply()
