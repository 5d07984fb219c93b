"""Durable outbox: events are written to SQLite before they are published.

The inference thread `store`s (or `put`s), the publisher thread fetches rows with `next_unsent`
(or `pending`), `ack`s what the broker acknowledged and `quarantine`s what the broker refused.
The file survives crashes and power loss, so an event produced while the broker is away (or
just before a crash) is delivered later, with its original payload.

Durability and flash wear. WAL journal with ``synchronous=NORMAL`` as the connection default:
a commit is appended to the WAL without an fsync, so it survives a crash of the process (the
data is in the kernel's page cache) but a power cut may lose the last transactions committed
since the previous fsync. It never corrupts the file: WAL frames carry checksums and an
incomplete tail is ignored on the next open. Writes that must survive a power cut run with
``synchronous=FULL`` for that one transaction (`store(..., durable=True)`, the default, and
the sequence-number reservation); because the WAL is append-only, that fsync also makes every
earlier commit durable. The publisher passes ``durable=False`` for an event's 1 Hz ``update``
messages, so a long event costs no fsync per second; its ``start`` and ``end`` stay durable.
Acks and quarantines are not fsynced: losing one to a power cut means a duplicate delivery,
which at-least-once delivery allows anyway.

Sequence numbers never repeat, even after a power cut: a consumer that drops repeats would
otherwise drop a new event. `next_seq` records the next number in the file (one small
non-fsynced write), so a restart, or a crash of the process, continues without a gap. Against
a power cut, which can lose those non-fsynced writes, numbers are also reserved in blocks of
`SEQ_RESERVE_BLOCK` by one durable write per block; after an unclean shutdown on a different
boot (power cut, kernel crash) numbering resumes at the end of the reserved block, skipping at
most one block. `seq` is strictly increasing; it is contiguous except after such a shutdown or
a corrupt file. When the number cannot be recorded, `next_seq` raises `OutboxUnavailable` and
does not advance: handing out a number that is not on disk could repeat it after a restart.

Bounds: on every store, the oldest messages beyond ``max_messages`` and anything older than
``max_age_seconds`` are deleted and counted in `discarded`, which is persisted. Age is *not*
taken from the wall clock: a gateway without a real-time clock boots in the past and jumps
forward when NTP syncs, which would make every queued event look days old. Age is measured on
an "outbox clock": monotonic time while the outbox is open, carried across restarts by
persisting it. Time while the daemon is not running (powered off) therefore does not count;
queued events are kept rather than dropped on a guess. The wall time is stored too, for
inspection only. A wall-clock jump is logged once and counted in `clock_jumps`.

Faults never raise out of the constructor (bad bounds aside):

- A corrupt file (not a database, ``PRAGMA quick_check`` fails, including through its WAL) is
  renamed ``<name>.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm``), kept for inspection
  (the newest `MAX_CORRUPT_COPIES`), logged, counted in `recovered_corrupt`, and a fresh file
  is created. The sequence counter is salvaged from it where possible (else from the
  in-process state or a wall-clock floor).
- An outbox that cannot be opened or written (full disk, read-only or missing directory, I/O
  error) makes the outbox *degraded*: `degraded` is True, `degraded_reason` says why, `store`
  raises `OutboxUnavailable` so the publisher can send directly instead, and failures are
  counted in `write_errors`. Each later store retries the write; a closed-off file is reopened
  at most every ``reopen_interval_seconds``. The first success clears the degraded state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final

_LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES: Final = 100_000
DEFAULT_MAX_AGE_SECONDS: Final = 7 * 86_400.0
DEFAULT_MAX_QUARANTINED: Final = 1_000
"""Refused messages kept for inspection; the oldest are deleted beyond this (still counted)."""
DEFAULT_REOPEN_INTERVAL_SECONDS: Final = 30.0
"""How often a degraded outbox without an open file tries to open it again."""
FIRST_SEQ: Final = 1
SEQ_RESERVE_BLOCK: Final = 64
"""Sequence numbers reserved per durable write: one fsync per 64 events, and the largest gap
a power cut can leave in `seq`."""
CLOCK_JUMP_SECONDS: Final = 60.0
"""A wall-clock step larger than this, relative to the monotonic clock, is a clock jump."""
JOURNAL_SIZE_LIMIT_BYTES: Final = 8 * 1024 * 1024
"""The WAL file is truncated back to this size after a checkpoint, bounding its disk use."""
CORRUPT_SUFFIX: Final = ".corrupt-"
MAX_CORRUPT_COPIES: Final = 3
"""Corrupt files kept for inspection; older ones are deleted, so failing flash that corrupts
the outbox again and again cannot fill the disk with copies."""

_BOOT_ID_PATH: Final = "/proc/sys/kernel/random/boot_id"
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_META_DISCARDED: Final = "discarded"
_META_NEXT_SEQ: Final = "next_seq"
"""First sequence number not yet reserved, written durably (older files: the next number to
use, which is as valid a limit)."""
_META_SEQ_USED: Final = "seq_used"
"""Next number to hand out, written without fsync on every `next_seq`."""
_META_BOOT: Final = "boot"
"""Hash of the boot id of the process that has the file open: a crash on the same boot loses
no non-fsynced write (it is in the page cache), so `seq_used` can be trusted then."""
_SALVAGED_MAX_ID: Final = "sqlite_sequence.messages"
_META_CLEAN: Final = "clean_close"
"""1 after `close` (durable), 0 while open (written durably at open)."""
_META_AGE_CLOCK_MS: Final = "age_clock_ms"
_META_QUARANTINED: Final = "quarantined"
_META_RECOVERED_CORRUPT: Final = "recovered_corrupt"
_SCHEMA_SQL: Final = (
    """
    CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        created_ts REAL NOT NULL,
        age_ts REAL
    )
    """,
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """
    CREATE TABLE IF NOT EXISTS quarantine (
        qid INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        created_ts REAL NOT NULL,
        quarantined_ts REAL NOT NULL,
        reason TEXT NOT NULL
    )
    """,
)
_INDEX_SQL: Final = (
    "DROP INDEX IF EXISTS messages_created_ts",
    "CREATE INDEX IF NOT EXISTS messages_age_ts ON messages (age_ts)",
)


class OutboxError(Exception):
    """The outbox cannot be read; the message names the path."""


class OutboxUnavailable(OutboxError):  # noqa: N818 - reads as a state, like TimeoutError
    """The outbox cannot store (degraded: full disk, read-only, I/O error, closed).

    The publisher catches it and publishes the event directly, without durability.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _CorruptOutbox(Exception):  # noqa: N818 - internal signal, never escapes
    def __init__(self, detail: str, salvaged: dict[str, int]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.salvaged = salvaged


@dataclass(frozen=True)
class OutboxMessage:
    """One stored message, exactly as it will be published."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_ts: float
    """Epoch seconds when it was stored (wall clock, informational: it may have jumped)."""


@dataclass(frozen=True)
class QuarantinedMessage:
    """A message the broker refused, moved out of the queue by `quarantine`."""

    message_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_ts: float
    quarantined_ts: float
    reason: str


@dataclass(frozen=True)
class OutboxStatus:
    """Everything the stats message needs, read under one lock."""

    degraded: bool
    degraded_reason: str | None
    depth: int
    discarded: int
    write_errors: int
    recovered_corrupt: int
    quarantined: int
    clock_jumps: int


@dataclass
class _State:
    """Counters mirrored from the file's meta table (and kept when the file is replaced)."""

    depth: int = 0
    discarded: int = 0
    seq_limit: int = FIRST_SEQ
    next_seq: int = FIRST_SEQ
    quarantined: int = 0
    recovered_corrupt: int = 0
    age_base: float = 0.0
    age_mono0: float = 0.0
    max_id: int = 0
    """Highest message id ever used in the file (SQLite's AUTOINCREMENT counter)."""


def _is_corruption(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (int(code) & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def _as_bytes(value: object) -> bytes:
    """A payload column value; TEXT (a row written by hand or an older tool) is UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")


def _boot_id_hash(boot_id: str | None) -> int | None:
    """A 60-bit integer for the meta table, or None where no boot id is known."""
    if boot_id is None:
        try:
            boot_id = Path(_BOOT_ID_PATH).read_text(encoding="ascii").strip()
        except OSError:
            return None
    if not boot_id:
        return None
    return int(hashlib.sha256(boot_id.encode("utf-8")).hexdigest()[:15], 16)


def _wall_now() -> float:
    # Looked up at call time (not bound as a default) so tests can patch time.time.
    return time.time()


def _mono_now() -> float:
    return time.monotonic()


class Outbox:
    """SQLite (WAL) durable message queue; thread-safe (one connection behind a lock)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        max_quarantined: int = DEFAULT_MAX_QUARANTINED,
        reopen_interval_seconds: float = DEFAULT_REOPEN_INTERVAL_SECONDS,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
        boot_id: str | None = None,
    ) -> None:
        """`clock` (wall, stored for inspection) and `monotonic` (ages) are for tests, as is
        `boot_id` (default: the kernel's, from /proc)."""
        if max_messages < 1:
            raise ValueError(f"outbox max_messages must be >= 1, got {max_messages}")
        if max_age_seconds <= 0:
            raise ValueError(f"outbox max_age_seconds must be > 0, got {max_age_seconds}")
        if max_quarantined < 1:
            raise ValueError(f"outbox max_quarantined must be >= 1, got {max_quarantined}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_age_seconds = float(max_age_seconds)
        self.max_quarantined = max_quarantined
        self.reopen_interval_seconds = float(reopen_interval_seconds)
        self._wall = clock or _wall_now
        self._mono = monotonic or _mono_now
        self._boot = _boot_id_hash(boot_id)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._state = _State()
        self._next_seq = FIRST_SEQ
        self._write_errors = 0
        self._clock_jumps = 0
        self._last_clock: tuple[float, float] | None = None
        self._degraded_reason: str | None = None
        self._last_open_attempt: float | None = None
        self._closed = False
        with self._lock:
            self._try_open()
        if self._conn is not None and self._state.depth:
            _LOGGER.info("Outbox %s holds %d undelivered message(s)", self.path, self._state.depth)

    # ------------------------------------------------------------------ opening, recovery

    def _try_open(self) -> bool:
        """Open (recovering a corrupt file); on failure become degraded. Under the lock."""
        self._last_open_attempt = self._mono()
        try:
            self._conn = self._open_checked()
        except _CorruptOutbox as corrupt:
            return self._recover(corrupt.detail, corrupt.salvaged)
        except (OSError, sqlite3.Error) as exc:
            self._set_degraded(f"outbox {self.path}: cannot open: {exc}")
            return False
        # Never below a number already handed out (the file may have been replaced meanwhile).
        self._next_seq = max(self._next_seq, self._state.next_seq)
        self._clear_degraded()
        return True

    def _open_checked(self) -> sqlite3.Connection:
        """Connect, verify and initialise; raises _CorruptOutbox, OSError or sqlite3.Error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        checked = self.path.exists() and self._probe()
        # Autocommit mode; transactions are explicit BEGIN IMMEDIATE ... COMMIT.
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            if not checked:
                self._check(conn)
            try:
                self._initialise(conn)
            except sqlite3.DatabaseError as exc:
                if _is_corruption(exc):
                    raise _CorruptOutbox(str(exc), self._salvage(conn)) from exc
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _probe(self) -> bool:
        """quick_check through a read-only connection; True if it ran (and passed).

        Read-only on purpose: closing the last read-write connection checkpoints the WAL into
        the main file and deletes it, which would rewrite a corrupt file before it is kept for
        inspection. False (check not done) where a read-only open is impossible here, e.g. the
        -shm file cannot be created; the read-write connection checks then.
        """
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            probe = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error:
            return False
        try:
            self._check(probe)  # _CorruptOutbox propagates
        except sqlite3.Error:
            return False
        finally:
            probe.close()
        return True

    def _check(self, conn: sqlite3.Connection) -> None:
        """PRAGMA quick_check (every page, through the WAL: O(file size), once at open)."""
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise _CorruptOutbox(str(exc), self._salvage(conn)) from exc
            raise
        if rows != [("ok",)]:
            detail = "; ".join(str(r[0]) for r in rows[:3])
            raise _CorruptOutbox(f"quick_check: {detail}", self._salvage(conn))

    def _initialise(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode={mode})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        # Durable: clean_close=0 must be on disk before any non-fsynced seq_used write.
        with self._transaction(conn, durable=True):
            for statement in _SCHEMA_SQL:
                conn.execute(statement)
            columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(messages)")}
            if "age_ts" not in columns:  # file written before age_ts existed
                conn.execute("ALTER TABLE messages ADD COLUMN age_ts REAL")
            for statement in _INDEX_SQL:
                conn.execute(statement)
            meta = {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            age_base = meta.get(_META_AGE_CLOCK_MS, 0) / 1000.0
            # Rows without an outbox-clock time (older file) count as stored just now.
            conn.execute("UPDATE messages SET age_ts = ? WHERE age_ts IS NULL", (age_base,))
            depth = int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
            max_id = self._max_id(conn)
            self._write_meta(conn, _META_CLEAN, 0)
            if self._boot is not None:
                self._write_meta(conn, _META_BOOT, self._boot)
        seq_limit = max(meta.get(_META_NEXT_SEQ, FIRST_SEQ), FIRST_SEQ)
        used = meta.get(_META_SEQ_USED)
        same_boot = self._boot is not None and meta.get(_META_BOOT) == self._boot
        if used is not None and (meta.get(_META_CLEAN) == 1 or same_boot):
            next_seq = max(used, FIRST_SEQ)  # every write since the last fsync survived
        else:
            # A power cut may have lost the last seq_used writes: resume after the reservation.
            next_seq = seq_limit
            if used is not None and used < seq_limit:
                _LOGGER.info(
                    "Outbox %s: unclean shutdown on an earlier boot; event seq resumes at %d "
                    "(up to %d numbers skipped, none repeated)",
                    self.path,
                    seq_limit,
                    seq_limit - used,
                )
        self._state = _State(
            depth=depth,
            discarded=meta.get(_META_DISCARDED, 0),
            seq_limit=seq_limit,
            next_seq=next_seq,
            quarantined=meta.get(_META_QUARANTINED, 0),
            recovered_corrupt=meta.get(_META_RECOVERED_CORRUPT, 0),
            age_base=age_base,
            age_mono0=self._mono(),
            max_id=max_id,
        )

    @staticmethod
    def _max_id(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        return 0 if row is None else int(row[0])

    @classmethod
    def _salvage(cls, conn: sqlite3.Connection) -> dict[str, int]:
        """Counters readable from a corrupt file (the meta table may still be intact)."""
        salvaged: dict[str, int] = {}
        # Each part on its own: a corrupt file may keep one table readable and not the other.
        with suppress(sqlite3.Error, TypeError, ValueError):
            rows = conn.execute("SELECT key, value FROM meta").fetchall()
            salvaged.update((str(k), int(v)) for k, v in rows)
        with suppress(sqlite3.Error, TypeError, ValueError):
            salvaged[_SALVAGED_MAX_ID] = cls._max_id(conn)
        return salvaged

    def _corrupt_name(self) -> Path:
        # Microseconds: names sort in the order the copies were made (pruning relies on it).
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        base = self.path.with_name(f"{self.path.name}{CORRUPT_SUFFIX}{stamp}")
        candidate, n = base, 0
        while candidate.exists():
            n += 1
            candidate = base.with_name(f"{base.name}.{n}")
        return candidate

    def _move_aside(self) -> Path:
        target = self._corrupt_name()
        # The WAL and shared-memory files follow the main file's name, so sqlite3 opens the
        # kept copy with its WAL applied, as the daemon saw it.
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, target.with_name(target.name + suffix))
        os.replace(self.path, target)
        return target

    def _corrupt_copies(self) -> list[Path]:
        """Kept corrupt files (main files only), oldest first (the names sort by time)."""
        prefix = self.path.name + CORRUPT_SUFFIX
        return sorted(
            p for p in self.path.parent.glob(prefix + "*") if not p.name.endswith(("-wal", "-shm"))
        )

    def _prune_corrupt_copies(self) -> None:
        for old in self._corrupt_copies()[:-MAX_CORRUPT_COPIES]:
            for path in (old, *(old.with_name(old.name + s) for s in ("-wal", "-shm"))):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    _LOGGER.warning("Outbox: cannot delete old corrupt copy %s: %s", path, exc)

    def _recover(self, detail: str, salvaged: dict[str, int]) -> bool:
        """Move the corrupt file aside and start a fresh one. Under the lock."""
        lost_depth = self._state.depth if self._conn is not None else None
        if self._conn is not None:
            # Found while running: closing checkpoints the WAL into the kept file (its content,
            # not its exact bytes, is what can be inspected then). At open, the check runs on a
            # read-only connection and the files are kept byte for byte.
            try:
                self._conn.close()
            except sqlite3.Error:
                _LOGGER.debug("Outbox %s: close before recovery failed", self.path, exc_info=True)
            self._conn = None
        try:
            kept = self._move_aside()
        except OSError as exc:
            self._set_degraded(
                f"outbox {self.path} is corrupt ({detail}) and cannot be moved aside: {exc}"
            )
            return False
        # Never reuse a sequence number: take the highest reservation known (the corrupt file's,
        # this process's), else a wall-clock floor in milliseconds, far above any real count.
        seq_floor = max(
            salvaged.get(_META_NEXT_SEQ, FIRST_SEQ),
            salvaged.get(_META_SEQ_USED, FIRST_SEQ),
            self._state.seq_limit,
            self._next_seq,
        )
        if seq_floor == FIRST_SEQ:  # nothing known at all
            seq_floor = max(seq_floor, int(self._wall() * 1000))
        recovered = max(
            salvaged.get(_META_RECOVERED_CORRUPT, self._state.recovered_corrupt) + 1,
            len(self._corrupt_copies()),
        )
        self._prune_corrupt_copies()
        discarded = max(salvaged.get(_META_DISCARDED, 0), self._state.discarded)
        quarantined = max(salvaged.get(_META_QUARANTINED, 0), self._state.quarantined)
        age_ms = max(salvaged.get(_META_AGE_CLOCK_MS, 0), int(self._age_now() * 1000))
        # Message ids continue above the old file's: the publisher may still hold old ids as
        # in flight, and an ack for one must not delete an unrelated new row.
        id_floor = max(salvaged.get(_SALVAGED_MAX_ID, 0), self._state.max_id)
        _LOGGER.error(
            "Outbox %s is corrupt (%s): moved aside to %s for inspection%s; starting a fresh "
            "outbox (recovered corrupt files so far: %d)",
            self.path,
            detail,
            kept,
            f", with {lost_depth} undelivered message(s)" if lost_depth else "",
            recovered,
        )
        conn: sqlite3.Connection | None = None
        try:
            conn = self._open_checked()
            with self._transaction(conn, durable=True):
                for key, value in (
                    (_META_NEXT_SEQ, seq_floor),
                    (_META_SEQ_USED, seq_floor),
                    (_META_RECOVERED_CORRUPT, recovered),
                    (_META_DISCARDED, discarded),
                    (_META_QUARANTINED, quarantined),
                    (_META_AGE_CLOCK_MS, age_ms),
                ):
                    self._write_meta(conn, key, value)
                if id_floor:
                    conn.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?)",
                        (id_floor,),
                    )
        except (OSError, sqlite3.Error, _CorruptOutbox) as exc:
            if conn is not None:
                conn.close()
            # Carried in-process until a later reopen succeeds: still no repeated seq.
            self._state.recovered_corrupt = recovered
            self._state.seq_limit = max(self._state.seq_limit, seq_floor)
            self._next_seq = max(self._next_seq, seq_floor)
            self._set_degraded(f"outbox {self.path}: cannot create a fresh file: {exc}")
            return False
        self._conn = conn
        self._state = _State(
            depth=0,
            discarded=discarded,
            seq_limit=seq_floor,
            next_seq=seq_floor,
            quarantined=quarantined,
            recovered_corrupt=recovered,
            age_base=age_ms / 1000.0,
            age_mono0=self._mono(),
            max_id=id_floor,
        )
        self._next_seq = seq_floor
        self._clear_degraded()
        return True

    def _usable_conn(self) -> sqlite3.Connection:
        """The connection, reopening a lost one at most every reopen interval. Under the lock."""
        if self._closed:
            raise OutboxUnavailable(f"outbox {self.path} is closed")
        if self._conn is None:
            last = self._last_open_attempt
            due = last is None or self._mono() - last >= self.reopen_interval_seconds
            if not (due and self._try_open()) or self._conn is None:
                raise OutboxUnavailable(self._degraded_reason or f"outbox {self.path}: not open")
            if self._state.depth:
                _LOGGER.info(
                    "Outbox %s reopened with %d undelivered message(s)",
                    self.path,
                    self._state.depth,
                )
        return self._conn

    # ------------------------------------------------------------------ degraded state

    def _set_degraded(self, reason: str) -> None:
        if reason != self._degraded_reason:
            # Logged once per distinct reason, not once per failing event.
            _LOGGER.error(
                "%s; events are published without durability until it works again", reason
            )
        self._degraded_reason = reason

    def _clear_degraded(self) -> None:
        if self._degraded_reason is not None:
            _LOGGER.warning("Outbox %s works again (was: %s)", self.path, self._degraded_reason)
            self._degraded_reason = None

    def _write_failed(self, what: str, exc: sqlite3.Error) -> bool:
        """Roll back, count, degrade, or replace a corrupt file (True then). Under the lock."""
        self._rollback_quietly()
        self._write_errors += 1
        if _is_corruption(exc) and self._conn is not None:
            return self._recover(str(exc), self._salvage(self._conn))
        self._set_degraded(f"outbox {self.path}: cannot {what}: {exc}")
        return False

    def _conn_for_write(self) -> sqlite3.Connection:
        """`_usable_conn`, counting the refused write. Under the lock."""
        try:
            return self._usable_conn()
        except OutboxUnavailable:
            self._write_errors += 1
            raise

    # ------------------------------------------------------------------ helpers

    def _age_now(self) -> float:
        """Seconds on the outbox clock: monotonic while open, persisted across restarts."""
        return self._state.age_base + (self._mono() - self._state.age_mono0)

    def _note_clock(self, wall: float, mono: float) -> None:
        last = self._last_clock
        self._last_clock = (wall, mono)
        if last is None:
            return
        step = (wall - last[0]) - (mono - last[1])
        if abs(step) <= CLOCK_JUMP_SECONDS:
            return
        self._clock_jumps += 1
        log = _LOGGER.warning if self._clock_jumps == 1 else _LOGGER.debug
        log(
            "Outbox %s: wall clock jumped by %+.0f s (NTP sync after boot?); message ages use "
            "the monotonic clock, so nothing queued is dropped for it (logged once)",
            self.path,
            step,
        )

    @staticmethod
    def _write_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _rollback_quietly(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            _LOGGER.debug("Outbox %s: rollback failed", self.path, exc_info=True)

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, *, durable: bool) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back on error. ``durable`` commits with
        synchronous=FULL (an fsync of the WAL), then returns to NORMAL: the level cannot be
        changed inside a transaction, so it is set before BEGIN and reset after the rollback."""
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                _LOGGER.debug("Outbox %s: rollback failed", self.path, exc_info=True)
            raise
        finally:
            if durable:
                try:
                    conn.execute("PRAGMA synchronous=NORMAL")
                except sqlite3.Error:
                    _LOGGER.debug("Outbox %s: cannot reset synchronous", self.path, exc_info=True)

    # ------------------------------------------------------------------ writing

    def store(
        self, topic: str, payload: bytes, qos: int, retain: bool = False, *, durable: bool = True
    ) -> int:
        """Store a message and return its id; raises `OutboxUnavailable` if it cannot.

        ``durable=False`` skips the fsync (a power cut may lose it, a crash may not): for
        messages a later durable one supersedes, such as an event's ``update``.
        """
        wall = self._wall()
        with self._lock:
            conn = self._conn_for_write()
            self._note_clock(wall, self._mono())
            try:
                new_id, dropped = self._insert(conn, topic, payload, qos, retain, wall, durable)
            except sqlite3.Error as exc:
                if not self._write_failed(f"store a message for {topic}", exc):
                    raise OutboxUnavailable(self._degraded_reason or str(exc)) from exc
                # The file was corrupt and has been replaced: this message goes to the new one.
                conn = self._conn_for_write()
                try:
                    new_id, dropped = self._insert(conn, topic, payload, qos, retain, wall, durable)
                except sqlite3.Error as again:
                    self._write_failed(f"store a message for {topic}", again)
                    raise OutboxUnavailable(self._degraded_reason or str(again)) from again
            self._clear_degraded()
            self._state.max_id = max(self._state.max_id, new_id)
            self._state.depth = self._state.depth + 1 - dropped
            if dropped:
                self._state.discarded += dropped
                _LOGGER.warning(
                    "Outbox %s over its bounds (%d messages, %.0f s): discarded %d oldest",
                    self.path,
                    self.max_messages,
                    self.max_age_seconds,
                    dropped,
                )
            return new_id

    def _insert(
        self,
        conn: sqlite3.Connection,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        wall: float,
        durable: bool,
    ) -> tuple[int, int]:
        """One store transaction: (new id, rows dropped by the bounds). Under the lock."""
        age_now = self._age_now()
        with self._transaction(conn, durable=durable):
            cursor = conn.execute(
                "INSERT INTO messages (topic, payload, qos, retain, created_ts, age_ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (topic, sqlite3.Binary(payload), int(qos), int(bool(retain)), wall, age_now),
            )
            new_id = int(cursor.lastrowid or 0)
            dropped = conn.execute(
                "DELETE FROM messages WHERE age_ts < ? AND id != ?",
                (age_now - self.max_age_seconds, new_id),
            ).rowcount
            excess = self._state.depth + 1 - dropped - self.max_messages
            if excess > 0:
                dropped += conn.execute(
                    "DELETE FROM messages WHERE id IN "
                    "(SELECT id FROM messages ORDER BY id LIMIT ?)",
                    (excess,),
                ).rowcount
            if dropped:
                self._write_meta(conn, _META_DISCARDED, self._state.discarded + dropped)
            # Persisted in the same transaction: the outbox clock costs no extra write.
            self._write_meta(conn, _META_AGE_CLOCK_MS, int(age_now * 1000))
        return new_id, dropped

    def put(
        self, topic: str, payload: bytes, qos: int, retain: bool = False, *, durable: bool = True
    ) -> int | None:
        """`store`, but None instead of `OutboxUnavailable` (logged once per cause, counted)."""
        try:
            return self.store(topic, payload, qos, retain, durable=durable)
        except OutboxUnavailable:
            return None

    def ack(self, message_id: int) -> bool:
        """Delete a delivered message; False if it was not there or the delete failed."""
        with self._lock:
            try:
                conn = self._conn_for_write()
                deleted = int(
                    conn.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount
                )
            except OutboxUnavailable:
                return False
            except sqlite3.Error as exc:
                # The message stays and is sent again later: a duplicate, never a loss.
                self._write_failed(f"delete message {message_id}", exc)
                return False
            self._clear_degraded()
            self._state.depth -= deleted
            return deleted > 0

    def quarantine(self, message_id: int, reason: str) -> bool:
        """Move a message the broker refused (e.g. ACL deny) out of the queue.

        It no longer blocks or repeats; it is kept in a bounded table for inspection and
        counted in `quarantined`. False if the message was not there or the write failed.
        """
        with self._lock:
            try:
                conn = self._conn_for_write()
                with self._transaction(conn, durable=False):
                    moved = conn.execute(
                        "INSERT INTO quarantine (message_id, topic, payload, qos, retain, "
                        "created_ts, quarantined_ts, reason) "
                        "SELECT id, topic, payload, qos, retain, created_ts, ?, ? "
                        "FROM messages WHERE id = ?",
                        (self._wall(), reason, message_id),
                    ).rowcount
                    if moved:
                        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                        conn.execute(
                            "DELETE FROM quarantine WHERE qid NOT IN "
                            "(SELECT qid FROM quarantine ORDER BY qid DESC LIMIT ?)",
                            (self.max_quarantined,),
                        )
                        self._write_meta(conn, _META_QUARANTINED, self._state.quarantined + 1)
                if not moved:
                    return False
            except OutboxUnavailable:
                return False
            except sqlite3.Error as exc:
                self._write_failed(f"quarantine message {message_id}", exc)
                return False
            self._clear_degraded()
            self._state.depth -= 1
            self._state.quarantined += 1
            total = self._state.quarantined
        _LOGGER.warning(
            "Outbox %s: message %d quarantined (%s); it will not be sent again "
            "(quarantined so far: %d)",
            self.path,
            message_id,
            reason,
            total,
        )
        return True

    def next_seq(self, at_least: int = FIRST_SEQ) -> int:
        """Next event sequence number: strictly increasing across restarts and power cuts.

        `at_least`: numbers the caller handed out while the outbox could not record them
        (degraded) must not come again; the sequence continues above them.

        Raises `OutboxUnavailable` (counted in `write_errors`) and does not advance when the
        number cannot be recorded in the file: a number that is not on disk could be handed
        out again after a restart.
        """
        with self._lock:
            for _attempt in range(2):
                conn = self._conn_for_write()
                seq = max(self._next_seq, at_least)
                # A new block is reserved (durably) only when the current one is used up.
                reserve = seq >= self._state.seq_limit
                limit = seq + SEQ_RESERVE_BLOCK if reserve else self._state.seq_limit
                try:
                    with self._transaction(conn, durable=reserve):
                        self._write_meta(conn, _META_SEQ_USED, seq + 1)
                        if reserve:
                            self._write_meta(conn, _META_NEXT_SEQ, limit)
                except sqlite3.Error as exc:
                    if self._write_failed(f"record event seq {seq}", exc):
                        continue  # a corrupt file was replaced: number from the fresh one
                    raise OutboxUnavailable(self._degraded_reason or str(exc)) from exc
                self._clear_degraded()
                self._state.seq_limit = limit
                self._next_seq = seq + 1
                return seq
            raise OutboxUnavailable(self._degraded_reason or f"outbox {self.path}: no seq")

    def retry(self) -> bool:
        """While degraded, try the file again (at most every reopen interval); True if the
        outbox is usable now.

        For a caller that stores nothing for a long time (no events while the disk is full):
        a store retries by itself, but without one the outbox would stay degraded after the
        disk came back. The probe is one small durable write (the outbox clock), so space
        that returned is proven writable, not assumed.
        """
        with self._lock:
            if self._closed:
                return False
            if self._degraded_reason is None:
                return True
            last = self._last_open_attempt
            if last is not None and self._mono() - last < self.reopen_interval_seconds:
                return False
            self._last_open_attempt = self._mono()
            if self._conn is None:
                return self._try_open()
            try:
                with self._transaction(self._conn, durable=True):
                    self._write_meta(self._conn, _META_AGE_CLOCK_MS, int(self._age_now() * 1000))
            except sqlite3.Error as exc:
                # True when the file was corrupt and has been replaced by a fresh one.
                return self._write_failed("write (retry)", exc)
            self._clear_degraded()
            return True

    # ------------------------------------------------------------------ reading

    def _select(self, sql: str, params: tuple[object, ...]) -> list[OutboxMessage]:
        with self._lock:
            try:
                conn = self._usable_conn()
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                if _is_corruption(exc) and self._conn is not None:
                    self._recover(str(exc), self._salvage(self._conn))
                raise OutboxError(
                    f"outbox {self.path}: cannot read pending messages: {exc}"
                ) from exc
        return [
            OutboxMessage(
                id=int(r[0]),
                topic=str(r[1]),
                payload=_as_bytes(r[2]),
                qos=int(r[3]),
                retain=bool(r[4]),
                created_ts=float(r[5]),
            )
            for r in rows
        ]

    def pending(self, limit: int, after_id: int | None = None) -> list[OutboxMessage]:
        """Up to `limit` stored messages with id > `after_id`, oldest first.

        Raises `OutboxError` (`OutboxUnavailable` when degraded without a file).
        """
        return self._select(
            "SELECT id, topic, payload, qos, retain, created_ts FROM messages "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (-1 if after_id is None else after_id, limit),
        )

    def next_unsent(self, limit: int, in_flight: Collection[int] = ()) -> list[OutboxMessage]:
        """The oldest `limit` stored messages whose ids are not in `in_flight`, oldest first.

        For a bounded in-flight window: the publisher keeps the outbox ids it handed to the
        client and not yet acked (or quarantined), and asks for ``window - len(in_flight)``
        more. Unlike a cursor, a message that left the window without an ack is offered again.
        Raises `OutboxError` (`OutboxUnavailable` when degraded without a file).
        """
        if limit <= 0:
            return []
        excluded = set(in_flight)
        # At most len(excluded) of the oldest rows are skipped: over-fetch by that much.
        rows = self._select(
            "SELECT id, topic, payload, qos, retain, created_ts FROM messages ORDER BY id LIMIT ?",
            (limit + len(excluded),),
        )
        return [m for m in rows if m.id not in excluded][:limit]

    def quarantined_messages(self, limit: int = 100) -> list[QuarantinedMessage]:
        """The most recently quarantined messages, newest first (for inspection)."""
        with self._lock:
            try:
                rows = (
                    self._usable_conn()
                    .execute(
                        "SELECT message_id, topic, payload, qos, retain, created_ts, "
                        "quarantined_ts, reason FROM quarantine ORDER BY qid DESC LIMIT ?",
                        (limit,),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: cannot read quarantine: {exc}") from exc
        return [
            QuarantinedMessage(
                message_id=int(r[0]),
                topic=str(r[1]),
                payload=_as_bytes(r[2]),
                qos=int(r[3]),
                retain=bool(r[4]),
                created_ts=float(r[5]),
                quarantined_ts=float(r[6]),
                reason=str(r[7]),
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ counters

    def depth(self) -> int:
        """Messages stored and not yet acknowledged (last known while degraded)."""
        with self._lock:
            return self._state.depth

    @property
    def discarded(self) -> int:
        """Messages dropped by the bounds, total over the file's life."""
        with self._lock:
            return self._state.discarded

    @property
    def write_errors(self) -> int:
        """Failed writes (store, ack, quarantine, seq) since this process opened the outbox."""
        with self._lock:
            return self._write_errors

    @property
    def degraded(self) -> bool:
        """True while the outbox cannot store: `store` raises, events go out undurably."""
        with self._lock:
            return self._degraded_reason is not None or self._closed

    @property
    def degraded_reason(self) -> str | None:
        with self._lock:
            if self._closed:
                return f"outbox {self.path} is closed"
            return self._degraded_reason

    @property
    def recovered_corrupt(self) -> int:
        """Corrupt files moved aside and replaced, total (persisted in the fresh file)."""
        with self._lock:
            return self._state.recovered_corrupt

    @property
    def quarantined(self) -> int:
        """Messages quarantined, total over the file's life (the table keeps the newest)."""
        with self._lock:
            return self._state.quarantined

    @property
    def clock_jumps(self) -> int:
        """Wall-clock jumps seen since this process opened the outbox."""
        with self._lock:
            return self._clock_jumps

    def status(self) -> OutboxStatus:
        with self._lock:
            reason = f"outbox {self.path} is closed" if self._closed else self._degraded_reason
            return OutboxStatus(
                degraded=reason is not None,
                degraded_reason=reason,
                depth=self._state.depth,
                discarded=self._state.discarded,
                write_errors=self._write_errors,
                recovered_corrupt=self._state.recovered_corrupt,
                quarantined=self._state.quarantined,
                clock_jumps=self._clock_jumps,
            )

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Save the outbox clock, checkpoint and close; later stores raise, puts return None."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                with self._transaction(conn, durable=True):
                    self._write_meta(conn, _META_AGE_CLOCK_MS, int(self._age_now() * 1000))
                    self._write_meta(conn, _META_CLEAN, 1)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                _LOGGER.debug("Outbox %s: clean close not recorded", self.path, exc_info=True)
            conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
