"""Durable SQLite outbox: order, ack, bounds, crash recovery, seq, I/O errors, threads.

Faults are caused, not described: corrupt files are written byte for byte, a full disk is a
connection whose writes raise SQLite's own error, a missing directory is a path under a file
(tests run as root, which ignores permission bits), and clock jumps patch time.time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_asd.mqtt import outbox as outbox_module
from edge_asd.mqtt.outbox import (
    CORRUPT_SUFFIX,
    MAX_CORRUPT_COPIES,
    SEQ_RESERVE_BLOCK,
    Outbox,
    OutboxError,
    OutboxUnavailable,
)

DAY_SECONDS = 86_400.0


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FailingConnection:
    """Wraps a sqlite3 connection; every write raises `error` (default: a full disk)."""

    def __init__(self, conn: sqlite3.Connection, error: sqlite3.Error | None = None) -> None:
        self._conn = conn
        self._error = error or sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, *args: Any) -> Any:
        if not sql.lstrip().upper().startswith(("SELECT", "ROLLBACK")):
            raise self._error
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def payload(i: int) -> bytes:
    return f'{{"n":{i}}}'.encode()


def test_put_pending_ack_in_order(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as box:
        ids = [box.put(f"t/{i}", payload(i), 1, retain=False) for i in range(5)]
        assert all(i is not None for i in ids)
        assert ids == sorted(ids)  # type: ignore[type-var]
        assert box.depth() == 5
        pending = box.pending(10)
        assert [m.payload for m in pending] == [payload(i) for i in range(5)]
        assert [m.topic for m in pending] == [f"t/{i}" for i in range(5)]
        assert pending[0].qos == 1 and pending[0].retain is False
        assert box.pending(2, after_id=pending[1].id) == pending[2:4]
        assert box.ack(pending[0].id) is True
        assert box.ack(pending[0].id) is False  # already gone
        assert box.depth() == 4
        assert [m.id for m in box.pending(10)] == [m.id for m in pending[1:]]


def test_retain_and_binary_payload_preserved(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        raw = bytes(range(256))
        box.put("t", raw, 0, retain=True)
        (message,) = box.pending(1)
        assert message.payload == raw and message.retain is True and message.qos == 0


def test_crash_recovery_pending_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    for i in range(3):
        box.put("t", payload(i), 1)
    box.ack(box.pending(1)[0].id)
    # No close(): simulate a crash; a second connection must see every committed row.
    reopened = Outbox(path)
    assert reopened.depth() == 2
    assert [m.payload for m in reopened.pending(10)] == [payload(1), payload(2)]
    reopened.close()
    box.close()


def test_ids_keep_increasing_after_everything_was_acked(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        first = box.put("t", b"a", 1)
        assert first is not None
        box.ack(first)
    with Outbox(path) as box:
        second = box.put("t", b"b", 1)
        assert second is not None and second > first


def test_bound_by_count_drops_oldest_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, max_messages=3) as box:
        for i in range(5):
            box.put("t", payload(i), 1)
        assert box.depth() == 3
        assert [m.payload for m in box.pending(10)] == [payload(2), payload(3), payload(4)]
        assert box.discarded == 2
    with Outbox(path, max_messages=3) as box:
        assert box.discarded == 2  # persisted
        box.put("t", payload(5), 1)
        assert box.discarded == 3


def test_invalid_bounds_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        Outbox(tmp_path / "o.sqlite", max_messages=0)
    with pytest.raises(ValueError, match="max_age_seconds"):
        Outbox(tmp_path / "o.sqlite", max_age_seconds=0)


def test_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "edge-asd" / "outbox.sqlite"
    with Outbox(path) as box:
        assert box.put("t", b"x", 1) is not None
    assert path.exists()


def test_concurrent_put_and_drain(tmp_path: Path) -> None:
    """One thread puts, another reads in order and acks, as the daemon does."""
    total = 300
    drained: list[bytes] = []
    with Outbox(tmp_path / "o.sqlite") as box:
        done = threading.Event()

        def producer() -> None:
            for i in range(total):
                assert box.put("t", payload(i), 1) is not None
            done.set()

        def consumer() -> None:
            last = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # bounded
                batch = box.pending(16, after_id=last)
                for message in batch:
                    drained.append(message.payload)
                    box.ack(message.id)
                    last = message.id
                if done.is_set() and not batch and box.depth() == 0:
                    return

        threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert drained == [payload(i) for i in range(total)]
        assert box.depth() == 0


# ---------------------------------------------------------------------- durability settings


def test_wal_mode_and_normal_sync(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        box.put("t", b"x", 1)
        assert box._conn is not None
        assert box._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        synchronous_normal = 1
        assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous_normal


def test_only_durable_writes_pay_for_an_fsync(tmp_path: Path) -> None:
    """start/end (durable) commit with synchronous=FULL; updates and acks do not."""
    with Outbox(tmp_path / "o.sqlite") as box:
        box.next_seq()  # the first reservation is durable too; not what is measured here
        assert box._conn is not None
        statements: list[str] = []
        box._conn.set_trace_callback(statements.append)

        def fsyncing(action: Any) -> bool:
            statements.clear()
            action()
            return "PRAGMA synchronous=FULL" in statements

        assert fsyncing(lambda: box.store("t", b"start", 1))
        assert not fsyncing(lambda: box.store("t", b"update", 1, durable=False))
        assert not fsyncing(lambda: box.ack(box.pending(1)[0].id))
        assert not fsyncing(box.next_seq)  # served from the reserved block
        # Back to NORMAL after the durable one.
        assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
        box._conn.set_trace_callback(None)


# ---------------------------------------------------------------------- sequence numbers


def test_seq_continues_without_gap_after_close_or_crash(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, boot_id="boot-a") as box:
        first = [box.next_seq() for _ in range(3)]
    assert first == [1, 2, 3]
    with Outbox(path, boot_id="boot-b") as box:  # clean close, then a reboot
        assert box.next_seq() == 4
    crashed = Outbox(path, boot_id="boot-b")  # never closed: the process dies
    assert [crashed.next_seq() for _ in range(SEQ_RESERVE_BLOCK + 2)] == list(
        range(5, 5 + SEQ_RESERVE_BLOCK + 2)
    )  # crosses a reserved block
    with Outbox(path, boot_id="boot-b") as box:  # same boot: nothing written was lost
        assert box.next_seq() == 5 + SEQ_RESERVE_BLOCK + 2
    crashed.close()


def test_seq_never_repeats_after_a_power_cut(tmp_path: Path) -> None:
    """A power cut loses the writes since the last fsync: the files are put back to their
    state at the last durable write, and the machine boots again."""
    path = tmp_path / "o.sqlite"
    wal = path.with_name(path.name + "-wal")
    box = Outbox(path, boot_id="boot-a")
    issued = [box.next_seq()]  # reserves a block: a durable write
    on_disk = (path.read_bytes(), wal.read_bytes())
    issued += [box.next_seq() for _ in range(10)]  # recorded without fsync
    box.close()
    path.write_bytes(on_disk[0])
    wal.write_bytes(on_disk[1])
    with Outbox(path, boot_id="boot-b") as rebooted:
        after = rebooted.next_seq()
    assert after > max(issued), "a sequence number handed out before the power cut repeated"
    assert after - max(issued) <= SEQ_RESERVE_BLOCK


def test_seq_does_not_advance_when_it_cannot_be_persisted(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, boot_id="boot-a")
    assert [box.next_seq(), box.next_seq()] == [1, 2]
    real = box._conn
    assert real is not None
    box._conn = FailingConnection(real)  # type: ignore[assignment]
    with pytest.raises(OutboxUnavailable, match="disk is full"):
        box.next_seq()
    with pytest.raises(OutboxUnavailable):
        box.next_seq()
    assert box.write_errors == 2
    assert box.degraded
    box._conn = real
    assert box.next_seq() == 3  # the failures did not use up numbers
    assert not box.degraded
    box._conn = FailingConnection(real)  # type: ignore[assignment]
    with pytest.raises(OutboxUnavailable):
        box.next_seq()
    box._conn = real  # the process now dies without closing; a new one opens the file
    with Outbox(path, boot_id="boot-a") as restarted:
        assert restarted.next_seq() == 4  # 3 was handed out and is never handed out again
    box.close()


def test_seq_from_a_file_of_the_previous_version_continues(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('next_seq', 42)")
    conn.close()
    with Outbox(path, boot_id="boot-b") as box:
        assert box.next_seq() == 42


# ---------------------------------------------------------------------- full disk, no directory


def test_store_on_full_disk_degrades_raises_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.put("t", payload(0), 1)
    box.next_seq()
    real = box._conn
    assert real is not None
    box._conn = FailingConnection(real)  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="edge_asd.mqtt.outbox"):
        with pytest.raises(OutboxUnavailable, match="disk is full") as info:
            box.store("t", payload(1), 1)
        assert "disk is full" in info.value.reason
        assert box.put("t", payload(2), 1) is None  # the compatible form
        assert box.put("t", payload(3), 1, durable=False) is None
    assert box.write_errors == 3
    assert box.degraded and box.degraded_reason is not None
    assert "disk is full" in box.degraded_reason and str(path) in box.degraded_reason
    status = box.status()
    assert status.degraded and status.write_errors == 3 and status.depth == 1
    assert status.degraded_reason == box.degraded_reason
    # Logged once for the cause, not once per event.
    assert sum("disk is full" in r.getMessage() for r in caplog.records) == 1
    assert box.depth() == 1
    # No sequence number that is not on disk; reads and a failed ack do not raise.
    with pytest.raises(OutboxUnavailable):
        box.next_seq()
    assert [m.payload for m in box.pending(10)] == [payload(0)]
    assert box.ack(box.pending(1)[0].id) is False
    box._conn = real
    assert box.store("t", payload(4), 1) > 0  # recovers when the disk has room again
    assert not box.degraded and box.degraded_reason is None
    assert box.depth() == 2
    box.close()


def test_put_after_close_is_counted_not_raised(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.close()
    assert box.put("t", b"x", 1) is None
    with pytest.raises(OutboxUnavailable, match="closed"):
        box.store("t", b"x", 1)
    assert box.write_errors == 2
    assert box.degraded


def test_directory_that_cannot_exist_degrades_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The parent is a file (root ignores chmod, so this is how 'cannot create' is caused)."""
    mono = FakeClock(100.0)
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    path = blocker / "outbox.sqlite"
    with caplog.at_level(logging.ERROR, logger="edge_asd.mqtt.outbox"):
        box = Outbox(path, monotonic=mono, reopen_interval_seconds=30)  # does not raise
    assert box.degraded
    assert box.degraded_reason is not None and str(path) in box.degraded_reason
    assert str(path) in caplog.text
    with pytest.raises(OutboxUnavailable):
        box.store("t", b"x", 1)
    assert box.put("t", b"x", 1) is None
    with pytest.raises(OutboxUnavailable):
        box.next_seq()  # nothing reserved, nothing persisted: no number at all
    with pytest.raises(OutboxError):
        box.pending(10)
    assert box.next_unsent(0) == []
    assert box.ack(1) is False and box.quarantine(1, "x") is False
    assert box.depth() == 0
    # The operator fixes it; the outbox notices within the reopen interval, without a restart.
    blocker.unlink()
    blocker.mkdir()
    mono.now += 10
    assert box.put("t", b"x", 1) is None  # not yet due for a retry
    mono.now += 30
    assert box.store("t", b"y", 1) > 0
    assert not box.degraded
    assert box.next_seq() == 1
    assert [m.payload for m in box.pending(10)] == [b"y"]
    box.close()


def test_full_disk_at_open_degrades(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = sqlite3.connect

    def full(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        raise sqlite3.OperationalError("database or disk is full")

    mono = FakeClock(0.0)
    monkeypatch.setattr(sqlite3, "connect", full)
    box = Outbox(tmp_path / "o.sqlite", monotonic=mono, reopen_interval_seconds=5)
    assert box.degraded and "disk is full" in (box.degraded_reason or "")
    assert box.put("t", b"x", 1) is None
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    mono.now += 5
    assert box.put("t", b"x", 1) is not None
    assert not box.degraded
    box.close()


def test_retry_brings_back_an_outbox_that_stores_nothing(tmp_path: Path) -> None:
    """Without events, nothing would try the file again: `retry` does, every reopen interval,
    whether the file never opened (full disk at boot) or opened and then refused writes."""
    mono = FakeClock(0.0)
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    box = Outbox(blocker / "o.sqlite", monotonic=mono, reopen_interval_seconds=5)
    assert box.degraded and box.retry() is False  # not due yet
    blocker.unlink()
    blocker.mkdir()
    assert box.retry() is False and box.degraded
    mono.now += 5
    assert box.retry() is True and not box.degraded
    assert box.retry() is True  # nothing to do
    real = box._conn
    assert real is not None
    box._conn = FailingConnection(real)  # type: ignore[assignment]
    assert box.put("t", b"x", 1) is None
    errors = box.write_errors
    assert box.degraded
    mono.now += 5
    assert box.retry() is False and box.write_errors == errors + 1  # still full: a probe write
    box._conn = real
    assert box.retry() is False  # within the interval
    mono.now += 5
    assert box.retry() is True and not box.status().degraded
    box.close()
    assert box.retry() is False


def test_next_seq_continues_above_numbers_handed_out_while_degraded(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, boot_id="boot-a") as box:
        assert box.next_seq() == 1
        assert box.next_seq(at_least=1000) == 1000  # the caller's fallback reached 999
        assert box.next_seq() == 1001
        assert box.next_seq(at_least=5) == 1002  # never backwards
    with Outbox(path, boot_id="boot-a") as box:
        assert box.next_seq() == 1003


# ---------------------------------------------------------------------- corrupt files


def _corrupt_copies(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.parent.glob(path.name + CORRUPT_SUFFIX + "*")
        if not p.name.endswith(("-wal", "-shm"))
    )


def _quick_check(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return "; ".join(str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall())
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()


def _filled(path: Path, rows: int) -> list[int]:
    """An outbox with `rows` messages; returns the sequence numbers handed out."""
    with Outbox(path) as box:
        for i in range(rows):
            box.put("t", payload(i) * 40, 1)
        return [box.next_seq() for _ in range(3)]


def test_garbage_file_is_moved_aside_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite"
    garbage = b"this is not a sqlite database at all" * 100
    path.write_bytes(garbage)
    wall = FakeClock(1_800_000_000.0)
    with caplog.at_level(logging.ERROR, logger="edge_asd.mqtt.outbox"):
        box = Outbox(path, clock=wall)  # never raises
    (kept,) = _corrupt_copies(path)
    assert kept.read_bytes() == garbage  # kept for inspection, unchanged
    assert kept.name.startswith("outbox.sqlite.corrupt-") and kept.name.endswith("Z")
    assert sum("corrupt" in r.getMessage() for r in caplog.records) == 1
    assert str(kept) in caplog.text
    assert box.recovered_corrupt == 1 and box.status().recovered_corrupt == 1
    assert not box.degraded
    assert box.store("t", b"x", 1) > 0
    # Nothing could be read from the garbage: seq restarts above a wall-clock floor (ms),
    # far above any count the lost file can have reached, so no number repeats.
    assert box.next_seq() >= int(wall.now * 1000)
    box.close()
    with Outbox(path) as reopened:
        assert reopened.recovered_corrupt == 1  # persisted in the fresh file
        assert reopened.depth() == 1


def test_truncated_file_is_recovered_without_repeating_seq(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    issued = _filled(path, 300)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)
    assert "malformed" in _quick_check(path)  # the fault is real
    with Outbox(path) as box:
        assert box.recovered_corrupt == 1
        assert len(_corrupt_copies(path)) == 1
        assert box.depth() == 0
        assert box.next_seq() > max(issued)
        assert box.put("t", b"x", 1) is not None


def test_wal_that_fails_the_check_is_recovered(tmp_path: Path) -> None:
    """A valid main file plus a WAL whose (checksummed, so applied) frames belong to another
    version of the file: only the combination is corrupt."""
    path = tmp_path / "outbox.sqlite"
    donor = tmp_path / "donor.sqlite"
    issued = _filled(donor, 300)
    path.write_bytes(donor.read_bytes())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("DELETE FROM messages WHERE id % 2 = 0")
    other.execute("VACUUM")
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    other.close()
    assert _quick_check(path) == "ok"
    writer = sqlite3.connect(donor, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    for i in range(50):
        writer.execute(
            "INSERT INTO messages (topic, payload, qos, retain, created_ts) VALUES (?,?,?,?,?)",
            ("t", payload(i) * 40, 1, 0, 0.0),
        )
    writer.execute("DELETE FROM messages WHERE id < 20")
    wal_bytes = donor.with_name(donor.name + "-wal").read_bytes()
    path.with_name(path.name + "-wal").write_bytes(wal_bytes)
    writer.close()
    main_bytes = path.read_bytes()
    with Outbox(path) as box:
        assert box.recovered_corrupt == 1
        (kept,) = _corrupt_copies(path)
        # Kept exactly as found: the check did not checkpoint the WAL into the main file.
        assert kept.read_bytes() == main_bytes
        assert kept.with_name(kept.name + "-wal").read_bytes() == wal_bytes
        assert box.next_seq() > max(issued)  # the counter was salvaged from the meta table
        assert box.store("t", b"x", 1) > 300  # so were the message ids
        assert box.depth() == 1


def test_corruption_found_while_running_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    old_id = box.store("t", payload(0), 1)
    seqs = [box.next_seq() for _ in range(2)]
    real = box._conn
    assert real is not None
    box._conn = FailingConnection(  # type: ignore[assignment]
        real, sqlite3.DatabaseError("database disk image is malformed")
    )
    # The store that hit the corruption lands in the fresh file.
    new_id = box.store("t", payload(1), 1)
    # Ids continue above the old file's: an ack for a message still in flight from the old
    # file cannot delete this one.
    assert new_id > old_id
    assert box.ack(old_id) is False
    assert box.recovered_corrupt == 1
    assert len(_corrupt_copies(path)) == 1
    assert [m.payload for m in box.pending(10)] == [payload(1)]
    assert box.next_seq() > max(seqs)
    box.close()


def test_repeated_recoveries_keep_the_newest_copies_only(tmp_path: Path) -> None:
    """Failing flash corrupting the file again and again must not fill the disk."""
    path = tmp_path / "outbox.sqlite"
    for n in range(MAX_CORRUPT_COPIES + 2):
        path.write_bytes(f"garbage {n} ".encode() * 500)
        path.with_name(path.name + "-wal").write_bytes(b"wal garbage")
        Outbox(path).close()
    kept = _corrupt_copies(path)
    assert len(kept) == MAX_CORRUPT_COPIES
    assert kept[-1].read_bytes().startswith(f"garbage {MAX_CORRUPT_COPIES + 1} ".encode())
    assert len(list(tmp_path.glob("*.corrupt-*-wal"))) == MAX_CORRUPT_COPIES
    with Outbox(path) as box:
        # Garbage holds no counter to salvage; the kept copies still bound it from below.
        assert box.recovered_corrupt >= MAX_CORRUPT_COPIES


def test_old_schema_is_migrated(tmp_path: Path) -> None:
    """A file written before age_ts and the quarantine table existed."""
    path = tmp_path / "o.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
        "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, "
        "created_ts REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX messages_created_ts ON messages (created_ts)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('next_seq', 42), ('discarded', 7)")
    conn.execute(
        "INSERT INTO messages (topic, payload, qos, retain, created_ts) VALUES ('t', 'a', 1, 0, 0)"
    )
    conn.close()
    with Outbox(path, max_age_seconds=60) as box:
        assert box.next_seq() == 42
        assert box.discarded == 7
        box.put("t", b"b", 1)  # the old row has no age yet: it counts as young, it stays
        assert [m.payload for m in box.pending(10)] == [b"a", b"b"]


# ---------------------------------------------------------------------- ageing and clocks


def test_bound_by_age_uses_running_time(tmp_path: Path) -> None:
    mono = FakeClock(1000.0)
    path = tmp_path / "o.sqlite"
    with Outbox(path, max_age_seconds=7 * DAY_SECONDS, monotonic=mono) as box:
        box.put("t", payload(0), 1)
        box.put("t", payload(1), 1)
        mono.now += 6 * DAY_SECONDS
        box.put("t", payload(2), 1)
        mono.now += 2 * DAY_SECONDS  # the first two have now waited 8 days
        box.put("t", payload(3), 1)
        assert [m.payload for m in box.pending(10)] == [payload(2), payload(3)]
        assert box.discarded == 2
        assert box.depth() == 2
    with Outbox(path, max_age_seconds=7 * DAY_SECONDS, monotonic=mono) as box:
        assert box.discarded == 2


def test_age_survives_a_restart_with_a_new_monotonic_clock(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    first_boot = FakeClock(50_000.0)
    with Outbox(path, max_age_seconds=DAY_SECONDS, monotonic=first_boot) as box:
        box.put("t", payload(0), 1)
        first_boot.now += 0.6 * DAY_SECONDS
        box.put("t", payload(1), 1)
    second_boot = FakeClock(3.0)  # monotonic restarts near zero after a reboot
    with Outbox(path, max_age_seconds=DAY_SECONDS, monotonic=second_boot) as box:
        box.put("t", payload(2), 1)
        assert box.depth() == 3  # the powered-off time did not count
        second_boot.now += 0.5 * DAY_SECONDS  # message 0 has now run 1.1 days
        box.put("t", payload(3), 1)
        assert [m.payload for m in box.pending(10)] == [payload(1), payload(2), payload(3)]


@pytest.mark.parametrize("jump", [DAY_SECONDS, -DAY_SECONDS])
def test_wall_clock_jump_drops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, jump: float
) -> None:
    """NTP stepping the clock on a gateway without an RTC, as the daemon sees it."""
    real_time = time.time
    offset = [0.0]
    monkeypatch.setattr(outbox_module.time, "time", lambda: real_time() + offset[0])
    path = tmp_path / "o.sqlite"
    with caplog.at_level(logging.WARNING, logger="edge_asd.mqtt.outbox"):
        with Outbox(path, max_age_seconds=3600) as box:
            box.put("t", payload(0), 1)
            offset[0] = jump
            box.put("t", payload(1), 1)
            offset[0] = 2 * jump
            box.put("t", payload(2), 1)
            assert box.depth() == 3 and box.discarded == 0
            assert box.clock_jumps == 2
        with Outbox(path, max_age_seconds=3600) as box:
            offset[0] = 3 * jump
            box.put("t", payload(3), 1)
            assert [m.payload for m in box.pending(10)] == [payload(i) for i in range(4)]
            assert box.discarded == 0
    jumps_logged = [r for r in caplog.records if "clock jumped" in r.getMessage()]
    assert len(jumps_logged) == 1  # per process: once, not on every message


# ---------------------------------------------------------------------- quarantine, in-flight


def test_quarantine_unblocks_the_queue_and_keeps_the_message(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    wall = FakeClock(1_800_000_000.0)
    with Outbox(path, clock=wall) as box:
        ids = [box.store(f"t/{i}", payload(i), 1) for i in range(5)]
        assert box.quarantine(ids[1], "not authorised (ACL)") is True
        assert box.quarantine(ids[1], "again") is False  # no longer in the queue
        assert box.quarantine(10_000, "unknown") is False
        assert [m.id for m in box.next_unsent(10)] == [ids[0], *ids[2:]]
        assert [m.id for m in box.pending(10)] == [ids[0], *ids[2:]]
        assert box.depth() == 4
        assert box.quarantined == 1 and box.status().quarantined == 1
        (kept,) = box.quarantined_messages()
        assert kept.message_id == ids[1] and kept.payload == payload(1)
        assert kept.topic == "t/1" and kept.reason == "not authorised (ACL)"
        assert kept.quarantined_ts == wall.now
    with Outbox(path) as box:
        assert box.quarantined == 1  # persisted
        assert box.depth() == 4


def test_quarantine_table_is_bounded(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_quarantined=2) as box:
        ids = [box.store("t", payload(i), 1) for i in range(4)]
        for message_id in ids[:3]:
            assert box.quarantine(message_id, f"refused {message_id}")
        assert box.quarantined == 3  # counted in full
        assert [q.message_id for q in box.quarantined_messages()] == [ids[2], ids[1]]
        assert [m.id for m in box.next_unsent(10)] == [ids[3]]


def test_quarantine_failure_is_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    message_id = box.store("t", b"x", 1)
    real = box._conn
    assert real is not None
    box._conn = FailingConnection(real)  # type: ignore[assignment]
    assert box.quarantine(message_id, "refused") is False
    assert box.write_errors == 1 and box.quarantined == 0
    box._conn = real
    assert box.depth() == 1
    box.close()


def test_next_unsent_skips_in_flight_rows_in_order(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        ids = [box.store("t", payload(i), 1) for i in range(6)]
        assert [m.id for m in box.next_unsent(2)] == ids[:2]
        assert [m.id for m in box.next_unsent(2, in_flight={ids[0], ids[1]})] == ids[2:4]
        in_flight = set(ids[:4])
        box.ack(ids[0])
        in_flight.discard(ids[0])
        assert [m.id for m in box.next_unsent(10, in_flight=in_flight)] == ids[4:]
        # ids[2] left the window without an ack (e.g. a reconnect): offered again, first.
        in_flight.discard(ids[2])
        assert [m.id for m in box.next_unsent(1, in_flight=in_flight)] == [ids[2]]
        assert box.next_unsent(0, in_flight=in_flight) == []
        # Non-contiguous in-flight ids do not hide rows behind them.
        assert [m.id for m in box.next_unsent(3, in_flight={ids[1], ids[4]})] == [
            ids[2],
            ids[3],
            ids[5],
        ]
