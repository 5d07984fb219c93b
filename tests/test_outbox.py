"""Durable SQLite outbox: order, ack, bounds, crash recovery, seq, I/O errors, threads."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_asd.mqtt.outbox import Outbox, OutboxError

DAY_SECONDS = 86_400.0


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FailingConnection:
    """Wraps a sqlite3 connection; every write raises like a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: Any) -> Any:
        if not sql.lstrip().upper().startswith(("SELECT", "ROLLBACK")):
            raise sqlite3.OperationalError("database or disk is full")
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


def test_wal_mode_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        box.put("t", b"x", 1)
        assert box._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        synchronous_full = 2
        assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous_full


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


def test_bound_by_age_drops_old_and_counts(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "o.sqlite"
    with Outbox(path, max_age_seconds=7 * DAY_SECONDS, clock=clock) as box:
        box.put("t", payload(0), 1)
        box.put("t", payload(1), 1)
        clock.now += 6 * DAY_SECONDS
        box.put("t", payload(2), 1)
        clock.now += 2 * DAY_SECONDS  # the first two are now 8 days old
        box.put("t", payload(3), 1)
        assert [m.payload for m in box.pending(10)] == [payload(2), payload(3)]
        assert box.discarded == 2
        assert box.depth() == 2
    with Outbox(path, max_age_seconds=7 * DAY_SECONDS, clock=clock) as box:
        assert box.discarded == 2


def test_seq_is_monotonic_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        first = [box.next_seq() for _ in range(3)]
    assert first == [1, 2, 3]
    crashed = Outbox(path)  # never closed
    assert crashed.next_seq() == 4
    with Outbox(path) as box:
        assert box.next_seq() == 5
    crashed.close()


def test_put_on_full_disk_returns_none_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.put("t", payload(0), 1)
    real = box._conn
    box._conn = FailingConnection(real)
    with caplog.at_level(logging.ERROR, logger="edge_asd.mqtt.outbox"):
        assert box.put("t", payload(1), 1) is None
        assert box.put("t", payload(2), 1) is None
    assert box.write_errors == 2
    assert "disk is full" in caplog.text and str(path) in caplog.text
    assert box.depth() == 1
    # seq still advances in memory while the disk is full
    assert box.next_seq() == 1
    assert box.next_seq() == 2
    assert box.write_errors == 4
    # reads and a failed ack do not raise either
    assert [m.payload for m in box.pending(10)] == [payload(0)]
    assert box.ack(box.pending(1)[0].id) is False
    box._conn = real
    assert box.put("t", payload(3), 1) is not None  # recovers when the disk has room again
    assert box.depth() == 2
    box.close()


def test_put_after_close_is_counted_not_raised(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.close()
    assert box.put("t", b"x", 1) is None
    assert box.write_errors == 1


def test_unopenable_path_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    bad = blocker / "outbox.sqlite"
    with pytest.raises(OutboxError, match=str(bad)):
        Outbox(bad)


def test_corrupt_file_names_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "outbox.sqlite"
    bad.write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(OutboxError, match=str(bad)):
        Outbox(bad)


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
            for _ in range(100_000):  # bounded
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
