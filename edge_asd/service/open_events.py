"""Events that are open right now, kept in a small file so a restart can close them.

A daemon that dies with an event open (crash, SIGKILL, power cut) never sends its ``end``; a
consumer would show the machine anomalous for good. The daemon records each event here when it
starts (and refreshes it now and then while it lasts), removes it when it ends, and at its next
start publishes an ``end`` with ``reason: "restart"`` for every event still listed.

The file lives next to the outbox (``<outbox>.open-events.json``) and is replaced atomically
(write a temporary file, fsync, rename, fsync the directory): after a power cut it holds either
the old or the new list, never a torn one. Writes happen on event start and end, and at most
every `REFRESH_SECONDS` while an event lasts, so a long event does not wear the flash. A write
that fails is logged (once per cause) and never stops detection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

_LOGGER = logging.getLogger(__name__)

SUFFIX: Final = ".open-events.json"
REFRESH_SECONDS: Final = 30.0
"""While an event lasts, its record (last_ts, peak) is rewritten at most this often."""
_FORMAT_VERSION: Final = 1


@dataclass(frozen=True)
class OpenEvent:
    """What an ``end`` needs when the process that started the event is gone."""

    event_id: str
    machine: str
    start_ts: float
    """Wall epoch seconds."""
    last_ts: float
    """Last wall time the event was known to be open (its start or a refresh)."""
    score: float
    peak_score: float
    threshold: float
    windows_over: int
    dbfs: float
    bundle_id: str
    model: dict[str, str] = field(default_factory=dict)


def path_for(outbox_path: Path) -> Path:
    return outbox_path.with_name(outbox_path.name + SUFFIX)


def _finite_or_none(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


class OpenEventStore:
    """The open-events file; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._events: dict[str, OpenEvent] = {}
        self._written: dict[str, float] = {}
        """event_id -> last_ts of the record on disk, to rate-limit refreshes."""
        self._last_error: str | None = None

    def load(self) -> list[OpenEvent]:
        """Events a previous run left open; [] when there is no (readable) file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            _LOGGER.error("cannot read open events from %s: %s", self.path, exc)
            return []
        try:
            data = json.loads(text)
            return [OpenEvent(**item) for item in data["events"]]
        except (ValueError, KeyError, TypeError) as exc:
            _LOGGER.error("ignoring unreadable open-events file %s: %s", self.path, exc)
            return []

    def record(self, event: OpenEvent, *, force: bool = False) -> None:
        """Remember `event` as open; written now if new or `force`d, else rate-limited."""
        with self._lock:
            self._events[event.event_id] = event
            written = self._written.get(event.event_id)
            if not force and written is not None and event.last_ts - written < REFRESH_SECONDS:
                return
            self._written[event.event_id] = event.last_ts
            self._write_locked()

    def remove(self, event_id: str) -> None:
        with self._lock:
            if self._events.pop(event_id, None) is None and event_id not in self._written:
                return
            self._written.pop(event_id, None)
            self._write_locked()

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self._written.clear()
            self._write_locked()

    def _write_locked(self) -> None:
        payload = {
            "format_version": _FORMAT_VERSION,
            "events": [
                {
                    **asdict(e),
                    "score": _finite_or_none(e.score),
                    "peak_score": _finite_or_none(e.peak_score),
                    "dbfs": _finite_or_none(e.dbfs),
                }
                for e in self._events.values()
            ],
        }
        try:
            if not self._events:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                    _fsync_dir(self.path.parent)
            else:
                _write_atomic(self.path, json.dumps(payload, allow_nan=False))
        except (OSError, ValueError) as exc:
            text = f"{type(exc).__name__}: {exc}"
            if text != self._last_error:
                _LOGGER.error(
                    "cannot record open events in %s (%s); an event open at a crash will not "
                    "be closed at the next start",
                    self.path,
                    text,
                )
            self._last_error = text
            return
        self._last_error = None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
