"""Capture supervisor: one thread per audio device that keeps audio flowing for months.

It opens the device, hands 16 kHz blocks to the inference thread through a bounded queue, and
watches the stream: when the device disappears, errors or delivers nothing for
`no_audio_seconds`, it reports `no_audio`, closes the stream and reopens it with exponential
back-off. It never exits on an audio problem; only the stop event ends it. Digital silence is
audio, not a lost device: the machine pipeline reports it as `idle` (a stopped machine behind a
noise gate and a muted input read the same), instead of the state flapping between `no_audio`
and the reopened stream's first blocks.

A bug (an exception that is not an audio problem) ends the thread: it is logged, kept in
`error`, and the daemon's supervisor, which watches `is_alive()` and `heartbeat`, reports the
device's machines as faulty and exits non-zero so that systemd restarts the service.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_asd.audio.files import AudioFileError
from edge_asd.audio.sources import (
    AudioDeviceError,
    AudioSource,
    EndOfStream,
    SoundDeviceSource,
    WavSource,
)

_LOGGER = logging.getLogger(__name__)

READ_TIMEOUT_SECONDS = 0.2
"""How long one read waits; bounds how quickly the thread notices the stop event."""
REOPEN_MIN_SECONDS = 1.0
REOPEN_MAX_SECONDS = 4.0
"""Back-off cap between open attempts. Low, so that a microphone that comes back (re-plugged,
possibly under another PortAudio index) is found within seconds; an attempt on a missing
device costs one device enumeration."""

CAPTURE_BLOCK_SECONDS = 0.05
"""PortAudio callback period: long enough that callbacks (Python, via cffi) cost little CPU,
short enough to add only 50 ms to the alarm latency."""

SourceFactory = Callable[[str | int, Sequence[int]], AudioSource]

WAV_DEVICE_PREFIX = "wav:"
"""`device: "wav:/path/to/file.wav"` replays a recording in real time, looped: for trying
thresholds on a recorded incident, and for the quick start on a machine without a microphone."""


def is_wav_device(device: str | int) -> bool:
    """`wav:PATH`: a recording replayed, not a PortAudio device."""
    return isinstance(device, str) and device.startswith(WAV_DEVICE_PREFIX)


def open_source(device: str | int, channels: Sequence[int]) -> AudioSource:
    """The source for a configured device: a PortAudio device, or `wav:PATH` for a recording."""
    if isinstance(device, str) and is_wav_device(device):
        try:
            return WavSource(
                device[len(WAV_DEVICE_PREFIX) :], channels=tuple(channels), realtime=True, loop=True
            )
        except AudioFileError as exc:
            raise AudioDeviceError(str(exc)) from None
    return SoundDeviceSource(device, channels=tuple(channels), block_seconds=CAPTURE_BLOCK_SECONDS)


@dataclass(frozen=True)
class CapturedBlock:
    """Audio handed from capture to inference."""

    device_key: str
    """Which supervisor captured it (str of the configured device)."""
    samples: np.ndarray
    """float32 (frames, channels) at 16 kHz, in the order of the supervisor's channels."""
    end_ts: float
    """Time at which the last frame was read, on the supervisor's clock (the daemon's
    monotonic timeline, epoch-like seconds)."""
    discontinuity: bool
    """True when audio before this block was lost (reopen, dropped blocks)."""
    seq: int = -1
    """Per-device block number, +1 per block delivered or dropped: the consumer sees a gap
    even when the block dropped for a full queue was this device's and the drop was made by
    another device's thread (the queue is shared). -1: not numbered."""


@dataclass
class CaptureCounters:
    blocks: int = 0
    dropped_blocks: int = 0
    dropped_frames: int = 0
    reopenings: int = 0
    overruns: int = 0
    overwritten_frames: int = 0


class CaptureSupervisor(threading.Thread):
    """Reads one device and feeds `out_queue` with `CapturedBlock`s until `stop_event` is set."""

    def __init__(
        self,
        device: str | int,
        channels: Sequence[int],
        out_queue: queue.Queue[CapturedBlock],
        stop_event: threading.Event,
        *,
        no_audio_seconds: float,
        on_health: Callable[[bool, str], None],
        source_factory: SourceFactory = open_source,
        reopen_min_seconds: float = REOPEN_MIN_SECONDS,
        reopen_max_seconds: float = REOPEN_MAX_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` stamps the blocks (the daemon passes its monotonic timeline)."""
        super().__init__(name=f"capture-{device}", daemon=True)
        self.device = device
        self.device_key = str(device)
        self.channels = tuple(channels)
        self._queue = out_queue
        self._stop_event = stop_event
        self._no_audio_seconds = no_audio_seconds
        self._on_health = on_health
        self._factory = source_factory
        self._reopen_min = reopen_min_seconds
        self._reopen_max = reopen_max_seconds
        self.counters = CaptureCounters()
        self.first_attempt_done = threading.Event()
        self.healthy = False
        self.heartbeat = time.monotonic()
        """Monotonic time of the last loop iteration: proves this thread is not stuck."""
        self._closed_stats = CaptureCounters()
        self._live: AudioSource | None = None
        self._clock = clock
        self._seq = 0
        self._last_problem: str | None = None
        self.error: BaseException | None = None
        """What ended the thread if it was not the stop event (a bug, not an audio problem)."""

    # ------------------------------------------------------------------ thread body

    def run(self) -> None:
        try:
            self._supervise()
        except BaseException as exc:
            # Not an audio problem (those are retried below): a bug. Keep it for the daemon's
            # supervisor, which sees this thread dead and exits non-zero; never swallow it.
            self.error = exc
            _LOGGER.critical("capture thread for device %r crashed", self.device, exc_info=True)
        finally:
            self.first_attempt_done.set()

    def _supervise(self) -> None:
        delay = self._reopen_min
        discontinuity = True
        while not self._stop_event.is_set():
            self.heartbeat = time.monotonic()
            source = self._open()
            if source is None:
                self._wait(delay)
                delay = min(delay * 2, self._reopen_max)
                continue
            reason = self._pump(source, discontinuity)
            self._close(source)
            discontinuity = True
            if reason is None:  # stop requested
                break
            self._set_health(False, reason)
            self.counters.reopenings += 1
            self._wait(delay)
            delay = min(delay * 2, self._reopen_max)

    def _open(self) -> AudioSource | None:
        try:
            source = self._factory(self.device, self.channels)
            source.start()
        except AudioDeviceError as exc:
            self._set_health(False, f"cannot open audio device {self.device!r}: {exc}")
            self.first_attempt_done.set()
            return None
        _LOGGER.info("audio device %r open: %s", self.device, source.description)
        self._live = source
        self.first_attempt_done.set()
        return source

    def _pump(self, source: AudioSource, discontinuity: bool) -> str | None:
        """Move blocks until stop (returns None) or an audio problem (returns its reason)."""
        last_data = time.monotonic()
        got_sound = False
        while not self._stop_event.is_set():
            self.heartbeat = time.monotonic()
            try:
                block = source.read(READ_TIMEOUT_SECONDS)
            except (AudioDeviceError, AudioFileError, EndOfStream) as exc:
                return f"audio device {self.device!r} failed: {exc}"
            now = time.monotonic()
            if block is None or len(block) == 0:
                if now - last_data >= self._no_audio_seconds:
                    return f"no audio from device {self.device!r} for {self._no_audio_seconds:g} s"
                continue
            last_data = now
            if not got_sound:
                got_sound = True
                self._set_health(True, f"audio flowing from device {self.device!r}")
            self._deliver(CapturedBlock(self.device_key, block, self._clock(), discontinuity))
            discontinuity = False
        return None

    def _deliver(self, block: CapturedBlock) -> None:
        self.counters.blocks += 1
        block = CapturedBlock(
            block.device_key, block.samples, block.end_ts, block.discontinuity, self._seq
        )
        self._seq += 1
        try:
            self._queue.put_nowait(block)
            return
        except queue.Full:
            pass
        # Inference is behind: drop the oldest block rather than block the capture loop,
        # and mark the gap so the windower does not splice unrelated audio together.
        try:
            dropped = self._queue.get_nowait()
            self.counters.dropped_blocks += 1
            self.counters.dropped_frames += len(dropped.samples)
        except queue.Empty:
            pass
        marked = CapturedBlock(block.device_key, block.samples, block.end_ts, True, block.seq)
        try:
            self._queue.put_nowait(marked)
        except queue.Full:
            self.counters.dropped_blocks += 1
            self.counters.dropped_frames += len(block.samples)

    def _close(self, source: AudioSource) -> None:
        self._live = None
        try:
            stats = source.stats()
            self._closed_stats.overruns += stats.overruns
            self._closed_stats.overwritten_frames += stats.overwritten_frames
        except Exception:  # noqa: BLE001 - stats of a broken stream are best effort
            _LOGGER.debug("no stats from closed source %r", self.device)
        # SoundDeviceSource.stop() is bounded: it abandons a stream whose stop() hangs.
        source.stop()

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_event.is_set():
            self.heartbeat = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop_event.wait(min(remaining, READ_TIMEOUT_SECONDS))

    def _set_health(self, healthy: bool, message: str) -> None:
        if healthy == self.healthy and healthy:
            return
        if healthy:
            _LOGGER.info("%s", message)
            self._last_problem = None
        elif message != self._last_problem:
            # Once per change of problem: a device missing for a week must not log every retry.
            _LOGGER.warning(
                "%s; retrying every %g-%g s", message, self._reopen_min, self._reopen_max
            )
            self._last_problem = message
        self.healthy = healthy
        self._on_health(healthy, message)

    # ------------------------------------------------------------------ reporting

    def totals(self) -> CaptureCounters:
        """Counters including closed streams' overruns."""
        c = self.counters
        overruns = self._closed_stats.overruns
        overwritten = self._closed_stats.overwritten_frames
        live = self._live
        if live is not None:
            try:
                stats = live.stats()
                overruns += stats.overruns
                overwritten += stats.overwritten_frames
            except Exception:  # noqa: BLE001 - a stream being torn down has no stats
                _LOGGER.debug("no stats from stream %r being torn down", self.device)
        return CaptureCounters(
            blocks=c.blocks,
            dropped_blocks=c.dropped_blocks,
            dropped_frames=c.dropped_frames,
            reopenings=c.reopenings,
            overruns=overruns,
            overwritten_frames=overwritten,
        )
