"""Durable outbox: events are written to SQLite before they are published.

The inference thread `put`s, the publisher thread reads `pending` in id order and `ack`s what
the broker acknowledged. The file survives crashes and power loss, so an event produced while
the broker is away (or just before a crash) is delivered later, with its original payload.

Durability settings: WAL journal, ``synchronous=FULL``. In WAL mode ``NORMAL`` only survives
an application crash; a power cut (common on factory gateways) can roll back the last commits.
``FULL`` fsyncs the WAL on every commit; at event rates (at most a few per second) that costs
nothing noticeable. Telemetry never goes through the outbox.

Bounds: on every `put`, the oldest messages beyond ``max_messages`` and anything older than
``max_age_seconds`` are deleted and counted in `discarded`, which is persisted. Age uses the
wall clock at `put` time; a gateway that boots without a real-time clock and later jumps
forward via NTP can see early messages as old.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

_LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES: Final = 100_000
DEFAULT_MAX_AGE_SECONDS: Final = 7 * 86_400.0
FIRST_SEQ: Final = 1

_META_DISCARDED: Final = "discarded"
_META_NEXT_SEQ: Final = "next_seq"
_SCHEMA_SQL: Final = (
    """
    CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        created_ts REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS messages_created_ts ON messages (created_ts)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class OutboxError(Exception):
    """The outbox file cannot be opened or read; the message names the path."""


@dataclass(frozen=True)
class OutboxMessage:
    """One stored message, exactly as it will be published."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_ts: float
    """Epoch seconds when it was put."""


class Outbox:
    """SQLite (WAL) durable message queue; thread-safe (one connection behind a lock)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"outbox max_messages must be >= 1, got {max_messages}")
        if max_age_seconds <= 0:
            raise ValueError(f"outbox max_age_seconds must be > 0, got {max_age_seconds}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_age_seconds = float(max_age_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._write_errors = 0
        self._closed = False
        self._conn: Any = self._open()
        try:
            with self._lock:
                self._depth = int(self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
                self._discarded = self._read_meta(_META_DISCARDED, 0)
                self._next_seq = self._read_meta(_META_NEXT_SEQ, FIRST_SEQ)
        except sqlite3.Error as exc:
            self._conn.close()
            raise OutboxError(f"outbox {self.path}: cannot read: {exc}") from exc
        if self._depth:
            _LOGGER.info("Outbox %s holds %d undelivered message(s)", self.path, self._depth)

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode; transactions are explicit BEGIN IMMEDIATE ... COMMIT.
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"outbox {self.path}: cannot open: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"outbox {self.path}: cannot switch to WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            for statement in _SCHEMA_SQL:
                conn.execute(statement)
        except sqlite3.Error as exc:
            conn.close()
            raise OutboxError(
                f"outbox {self.path}: cannot initialise (not a SQLite file, or read-only?): {exc}"
            ) from exc
        except OutboxError:
            conn.close()
            raise
        return conn

    def _read_meta(self, key: str, default: int) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _write_meta(self, key: str, value: int) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            _LOGGER.debug("Outbox %s: rollback failed", self.path, exc_info=True)

    def put(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int | None:
        """Store a message; its id, or None if the write failed (logged and counted)."""
        now = self._clock()
        with self._lock:
            if self._closed:
                self._write_errors += 1
                _LOGGER.error("Outbox %s is closed; message for %s not stored", self.path, topic)
                return None
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                cursor = self._conn.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, created_ts) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (topic, sqlite3.Binary(payload), int(qos), int(bool(retain)), now),
                )
                new_id = int(cursor.lastrowid)
                dropped = self._conn.execute(
                    "DELETE FROM messages WHERE created_ts < ? AND id != ?",
                    (now - self.max_age_seconds, new_id),
                ).rowcount
                depth = self._depth + 1 - dropped
                excess = depth - self.max_messages
                if excess > 0:
                    dropped += self._conn.execute(
                        "DELETE FROM messages WHERE id IN "
                        "(SELECT id FROM messages ORDER BY id LIMIT ?)",
                        (excess,),
                    ).rowcount
                if dropped:
                    self._write_meta(_META_DISCARDED, self._discarded + dropped)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback_quietly()
                self._write_errors += 1
                _LOGGER.error(
                    "Outbox %s: cannot store message for %s (%s); it will be sent without "
                    "durability (write errors so far: %d)",
                    self.path,
                    topic,
                    exc,
                    self._write_errors,
                )
                return None
            self._depth = self._depth + 1 - dropped
            if dropped:
                self._discarded += dropped
                _LOGGER.warning(
                    "Outbox %s over its bounds (%d messages, %.0f s): discarded %d oldest",
                    self.path,
                    self.max_messages,
                    self.max_age_seconds,
                    dropped,
                )
            return new_id

    def pending(self, limit: int, after_id: int | None = None) -> list[OutboxMessage]:
        """Up to `limit` stored messages with id > `after_id`, oldest first."""
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT id, topic, payload, qos, retain, created_ts FROM messages "
                    "WHERE id > ? ORDER BY id LIMIT ?",
                    (-1 if after_id is None else after_id, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(
                    f"outbox {self.path}: cannot read pending messages: {exc}"
                ) from exc
        return [
            OutboxMessage(
                id=int(r[0]),
                topic=str(r[1]),
                payload=bytes(r[2]),
                qos=int(r[3]),
                retain=bool(r[4]),
                created_ts=float(r[5]),
            )
            for r in rows
        ]

    def ack(self, message_id: int) -> bool:
        """Delete a delivered message; False if it was not there or the delete failed."""
        with self._lock:
            try:
                deleted = int(
                    self._conn.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount
                )
            except sqlite3.Error as exc:
                self._write_errors += 1
                # The message stays and is sent again later: a duplicate, never a loss.
                _LOGGER.error("Outbox %s: cannot delete message %d: %s", self.path, message_id, exc)
                return False
            self._depth -= deleted
            return deleted > 0

    def next_seq(self) -> int:
        """Next event sequence number; persisted so it keeps increasing across restarts."""
        with self._lock:
            seq = self._next_seq
            # Advance in memory first: even if the disk fails, seq stays monotonic in-process.
            self._next_seq = seq + 1
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._write_meta(_META_NEXT_SEQ, self._next_seq)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback_quietly()
                self._write_errors += 1
                _LOGGER.error("Outbox %s: cannot persist event seq %d: %s", self.path, seq, exc)
            return seq

    def depth(self) -> int:
        """Messages stored and not yet acknowledged."""
        with self._lock:
            return self._depth

    @property
    def discarded(self) -> int:
        """Messages dropped by the bounds, total over the file's life."""
        with self._lock:
            return self._discarded

    @property
    def write_errors(self) -> int:
        """Failed writes (put, ack, seq) since this process opened the outbox."""
        with self._lock:
            return self._write_errors

    def close(self) -> None:
        """Checkpoint and close; later puts fail (counted) instead of raising."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                _LOGGER.debug("Outbox %s: checkpoint at close failed", self.path, exc_info=True)
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
