"""Capture supervisor: device loss, silence and reopen with back-off, using fake sources."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Sequence

import numpy as np

from edge_asd.audio.capture import CapturedBlock, CaptureSupervisor
from edge_asd.audio.sources import AudioDeviceError, SourceStats

BLOCK = 1600
WAIT_SECONDS = 10.0


class FakeSource:
    """Delivers `blocks` blocks of noise (or zeros), then fails or goes quiet."""

    def __init__(self, *, blocks: int, fail_after: bool, silent: bool = False) -> None:
        self.remaining = blocks
        self.fail_after = fail_after
        self.silent = silent
        self.stopped = False

    description = "fake"
    sample_rate = 16_000
    channels = 1

    def start(self) -> None:
        pass

    def read(self, timeout_seconds: float) -> np.ndarray | None:
        if self.remaining > 0:
            self.remaining -= 1
            time.sleep(0.001)
            if self.silent:
                return np.zeros((BLOCK, 1), np.float32)
            return np.random.default_rng(0).normal(0, 0.1, (BLOCK, 1)).astype(np.float32)
        if self.fail_after:
            raise AudioDeviceError("fake device unplugged")
        time.sleep(min(timeout_seconds, 0.01))
        return None

    def stop(self) -> None:
        self.stopped = True

    def stats(self) -> SourceStats:
        return SourceStats(frames_delivered=0, overruns=1, overwritten_frames=0)


class Factory:
    """First open fails (device missing at boot), then a source that dies, then a good one."""

    def __init__(self, plan: list[FakeSource | None]) -> None:
        self.plan = plan
        self.opened: list[FakeSource] = []

    def __call__(self, device: str | int, channels: Sequence[int]) -> FakeSource:
        if not self.plan:
            return FakeSource(blocks=10**9, fail_after=False)
        item = self.plan.pop(0)
        if item is None:
            raise AudioDeviceError(f"no device {device!r}")
        self.opened.append(item)
        return item


def _run(
    factory: Factory, *, no_audio_seconds: float, until
) -> tuple[list, list, CaptureSupervisor]:
    out: queue.Queue[CapturedBlock] = queue.Queue(maxsize=1000)
    stop = threading.Event()
    health: list[tuple[bool, str]] = []
    sup = CaptureSupervisor(
        "fake-mic",
        [0],
        out,
        stop,
        no_audio_seconds=no_audio_seconds,
        on_health=lambda ok, msg: health.append((ok, msg)),
        source_factory=factory,
        reopen_min_seconds=0.05,
        reopen_max_seconds=0.2,
    )
    sup.start()
    blocks: list[CapturedBlock] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and not until(health, blocks):
        with contextlib.suppress(queue.Empty):
            blocks.append(out.get(timeout=0.1))
    stop.set()
    sup.join(WAIT_SECONDS)
    assert not sup.is_alive()
    return health, blocks, sup


def test_missing_device_then_unplug_then_recovery() -> None:
    factory = Factory([None, FakeSource(blocks=5, fail_after=True)])
    health, blocks, sup = _run(
        factory,
        no_audio_seconds=5.0,
        until=lambda h, b: sum(1 for ok, _ in h if ok) >= 2 and len(b) > 8,
    )
    flags = [ok for ok, _ in health]
    # missing at start -> no_audio, then audio, then unplugged -> no_audio, then audio again
    assert flags[:4] == [False, True, False, True]
    assert "no device 'fake-mic'" in health[0][1]
    assert "unplugged" in health[2][1]
    assert sup.totals().reopenings >= 1
    assert all(s.stopped for s in factory.opened)
    # The first block after each (re)open is marked as a discontinuity.
    assert blocks[0].discontinuity and sum(b.discontinuity for b in blocks) >= 2


def test_digital_silence_is_audio_not_a_lost_device() -> None:
    """A stopped machine behind a noise gate (or a muted input) is the pipeline's `idle`; the
    capture keeps the stream instead of flapping between no_audio and a reopened stream."""
    factory = Factory([FakeSource(blocks=10**6, fail_after=False, silent=True)])
    health, blocks, sup = _run(
        factory,
        no_audio_seconds=0.3,
        until=lambda h, b: len(b) >= 20,
    )
    assert health[0][0] is True
    assert all(ok for ok, _ in health)
    assert sup.totals().reopenings == 0
    assert len(blocks) >= 20


def test_no_data_reports_no_audio() -> None:
    factory = Factory([FakeSource(blocks=3, fail_after=False)])
    health, _blocks, _sup = _run(factory, no_audio_seconds=0.3, until=lambda h, b: len(h) >= 2)
    assert health[0][0] is True
    assert health[1][0] is False and "no audio" in health[1][1]


def test_full_queue_drops_oldest_and_counts() -> None:
    out: queue.Queue[CapturedBlock] = queue.Queue(maxsize=3)
    stop = threading.Event()
    sup = CaptureSupervisor(
        "fake",
        [0],
        out,
        stop,
        no_audio_seconds=5.0,
        on_health=lambda ok, msg: None,
        source_factory=Factory([FakeSource(blocks=20, fail_after=False)]),
    )
    sup.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while sup.counters.blocks < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    sup.join(WAIT_SECONDS)
    assert sup.counters.dropped_blocks == 17
    assert sup.counters.dropped_frames == 17 * BLOCK
    remaining = [out.get_nowait() for _ in range(out.qsize())]
    assert len(remaining) == 3 and remaining[-1].discontinuity
