"""Audio sources: WAV files and live PortAudio devices, both delivering 16 kHz float32 blocks.

The PortAudio callback only copies the selected channels into a preallocated `RingBuffer`
and records overflow flags; resampling happens in the reader's thread. Stopping a stream runs
in a helper thread with a bounded join, because PortAudio's stop can block forever (for example
on a PulseAudio pipe source whose writer went away) and shutdown must never hang on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

from edge_asd.audio.files import AudioFileError, read_wav_channels
from edge_asd.audio.resampler import StreamResampler
from edge_asd.audio.ring_buffer import RingBuffer
from edge_asd.constants import SAMPLE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

DEFAULT_WAV_BLOCK_FRAMES: Final = 1600
"""WavSource block: 0.1 s at 16 kHz."""

STREAM_STOP_TIMEOUT_SECONDS: Final = 2.0
"""How long stop() waits for PortAudio abort/close before abandoning the helper thread."""

DEFAULT_RING_SECONDS: Final = 10.0
"""Capture ring length: how far the reader may fall behind before audio is overwritten."""

MIN_READ_SECONDS: Final = 0.1
"""read() waits (within its timeout) for this much audio before resampling: 10 ms callback
blocks would cost several times the CPU per second of audio, and 0.1 s is far below the hop."""

SCRATCH_FRAMES: Final = 8192
"""Initial callback scratch for non-contiguous channel selections (grown if PortAudio asks)."""


class EndOfStream(Exception):  # noqa: N818 - name fixed by docs/architecture.md
    """A finite source (files) has delivered everything."""


class AudioDeviceError(Exception):
    """A capture device is missing, cannot be opened, or failed; the message names it."""


@dataclass(frozen=True)
class SourceStats:
    """Counters of one source since start()."""

    frames_delivered: int
    """16 kHz frames returned by read()."""
    overruns: int
    """PortAudio callbacks flagged input_overflow (audio lost before it reached us)."""
    overwritten_frames: int
    """Device-rate frames overwritten in the ring because the reader fell behind."""


@runtime_checkable
class AudioSource(Protocol):
    """Delivers float32 [frames, channels] blocks at SAMPLE_RATE_HZ."""

    @property
    def description(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def channels(self) -> int: ...

    def start(self) -> None: ...

    def read(self, timeout_seconds: float) -> npt.NDArray[np.float32] | None:
        """Next block, None if none within the timeout; raises EndOfStream, AudioDeviceError."""
        ...

    def stop(self) -> None: ...

    def stats(self) -> SourceStats: ...


class _ContextSource:
    """Context-manager support shared by the concrete sources."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wav_files(paths: Path | str | Sequence[Path | str]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
            if not found:
                raise AudioFileError(path, "directory contains no .wav files")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise AudioFileError(path, "file does not exist")
    if not files:
        raise AudioFileError(Path("."), "no WAV files given")
    return files


class WavSource(_ContextSource):
    """WAV files (or directories of them, sorted) as a source, in real time or flat out.

    Blocks are `block_frames` at 16 kHz; the last block of each file may be shorter, so no
    block mixes two files. A file that cannot be read is logged and skipped.
    """

    def __init__(
        self,
        paths: Path | str | Sequence[Path | str],
        *,
        channels: Sequence[int] = (0,),
        realtime: bool = False,
        block_frames: int = DEFAULT_WAV_BLOCK_FRAMES,
        loop: bool = False,
    ) -> None:
        if block_frames <= 0:
            raise ValueError(f"WavSource block_frames must be positive, got {block_frames}")
        if not channels:
            raise ValueError("WavSource needs at least one channel")
        self.files = _wav_files(paths)
        self._channel_list = tuple(int(c) for c in channels)
        self.realtime = realtime
        self.block_frames = int(block_frames)
        self.loop = loop
        self._file_index = 0
        self._current: npt.NDArray[np.float32] | None = None
        self._position = 0
        self._frames_delivered = 0
        self._good_in_pass = 0
        self._started = False
        self._t0 = 0.0
        self._single_file_audio: npt.NDArray[np.float32] | None = None
        """One looped file is decoded once: re-reading it every pass cost a decode and, in a
        long-running daemon on `wav:`, steps of tens of MB in RSS at each pass (the decoding
        intermediates land in malloc arenas that are not given back)."""

    @property
    def description(self) -> str:
        first = self.files[0]
        more = f" (+{len(self.files) - 1} more)" if len(self.files) > 1 else ""
        return f"wav:{first}{more}"

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE_HZ

    @property
    def channels(self) -> int:
        return len(self._channel_list)

    def start(self) -> None:
        self._started = True
        self._t0 = time.monotonic()

    def stop(self) -> None:
        self._started = False

    def stats(self) -> SourceStats:
        return SourceStats(self._frames_delivered, 0, 0)

    def _next_file(self) -> npt.NDArray[np.float32]:
        """Load the next readable file, or raise EndOfStream."""
        if self._single_file_audio is not None:
            return self._single_file_audio
        while True:
            if self._file_index >= len(self.files):
                if not self.loop:
                    raise EndOfStream(self.description)
                if self._good_in_pass == 0:
                    raise AudioFileError(self.files[0], "no readable WAV file in this source")
                self._file_index = 0
                self._good_in_pass = 0
            path = self.files[self._file_index]
            self._file_index += 1
            try:
                audio = read_wav_channels(path, channels=self._channel_list)
            except AudioFileError as exc:
                _LOGGER.error("skipping %s", exc)
                continue
            self._good_in_pass += 1
            if self.loop and len(self.files) == 1:
                self._single_file_audio = audio
            return audio

    def read(self, timeout_seconds: float) -> npt.NDArray[np.float32] | None:
        if not self._started:
            raise RuntimeError(f"{self.description}: read() before start()")
        if self._current is None or self._position >= self._current.shape[0]:
            self._current = self._next_file()
            self._position = 0
        block = self._current[self._position : self._position + self.block_frames]
        if self.realtime:
            # Deliver a block when its last sample would have been captured live.
            due = self._t0 + (self._frames_delivered + block.shape[0]) / SAMPLE_RATE_HZ
            wait = due - time.monotonic()
            if wait > timeout_seconds:
                time.sleep(max(0.0, timeout_seconds))
                return None
            if wait > 0:
                time.sleep(wait)
        self._position += block.shape[0]
        self._frames_delivered += block.shape[0]
        return block.copy()


def _describe_inputs(devices: Sequence[dict[str, Any]]) -> str:
    inputs = [
        f"{d['index']}: '{d['name']}' ({d['max_input_channels']} ch, "
        f"{d['default_samplerate']:.0f} Hz)"
        for d in devices
        if d["max_input_channels"] > 0
    ]
    return "; ".join(inputs) if inputs else "none"


def find_input_device(device: str | int, devices: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pick an input device by index, exact name, or unique case-insensitive name substring."""
    inputs = [d for d in devices if d["max_input_channels"] > 0]
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        index = int(device)
        for d in inputs:
            if d["index"] == index:
                return d
        raise AudioDeviceError(
            f"audio input device {index} not found; available input devices: "
            f"{_describe_inputs(devices)}"
        )
    exact = [d for d in inputs if d["name"] == device]
    if exact:
        return exact[0]
    needle = device.lower()
    partial = [d for d in inputs if needle in d["name"].lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(f"'{d['name']}'" for d in partial)
        raise AudioDeviceError(f"audio input device '{device}' is ambiguous, matches {names}")
    raise AudioDeviceError(
        f"audio input device '{device}' not found; available input devices: "
        f"{_describe_inputs(devices)}"
    )


def _import_sounddevice() -> Any:
    """sounddevice, PortAudio initialised (its device list enumerated) and ALSA's probe
    plugins released (`release_alsa_plugins`)."""
    already = "sounddevice" in sys.modules
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio shared library is missing
        raise AudioDeviceError(f"PortAudio is not available: {exc}") from exc
    if not already:
        release_alsa_plugins()
    return sounddevice


def init_portaudio() -> None:
    """Initialise PortAudio now, if it is installed (errors surface when a stream is opened).

    The daemon calls this before it loads its model: enumeration briefly maps every ALSA
    plugin library (`release_alsa_plugins`), and that transient then peaks below the loaded
    daemon's steady memory instead of on top of it."""
    with contextlib.suppress(AudioDeviceError):
        _import_sounddevice()


_ALSA_LIBRARY: Final = "libasound.so.2"


def release_alsa_plugins() -> bool:
    """Unload the ALSA plugin libraries PortAudio's enumeration loaded; True if it ran.

    PortAudio opens every PCM the ALSA configuration defines while it lists devices, and with
    Debian's libasound2-plugins that loads the a52 encoder (libavcodec and its codec
    libraries), jack, speex and others: 10-14 MB of a daemon whose target is 100 MB, for
    devices it never opens. alsa-lib keeps those libraries loaded until its global
    configuration is freed; freeing it (the call PortAudio's own termination makes) unloads
    them, and the next stream open re-reads the configuration and loads only its own plugin.
    Only call it while no other thread is inside ALSA (after enumeration, under the PortAudio
    lock or before capture starts)."""
    if sys.platform != "linux":
        return False
    try:
        # RTLD_NOLOAD: only the copy PortAudio already loaded; never load ALSA for this.
        alsa = ctypes.CDLL(_ALSA_LIBRARY, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:  # ALSA not loaded: another host API, or no PortAudio
        return False
    free_global = getattr(alsa, "snd_config_update_free_global", None)
    if free_global is None:
        return False
    free_global.restype = ctypes.c_int
    return int(free_global()) == 0


def _query_devices(sd: Any) -> list[dict[str, Any]]:
    try:
        return [dict(d) for d in sd.query_devices()]
    except sd.PortAudioError as exc:
        raise AudioDeviceError(f"cannot list audio devices: {exc}") from exc


# PortAudio enumerates devices once, at initialisation; a USB microphone plugged in later is
# invisible until it is re-initialised, which is only safe while no stream of ours is open.
class _PortAudioState:
    """Process-wide PortAudio bookkeeping: a lock for open/rescan and the open-stream count."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open_streams = 0
        self.stale = False
        """A stream failed since the last enumeration: its device may be gone, or back under
        another index (a re-plugged USB microphone), and the cached list may map its old
        index to nothing or to another device. Re-enumerate before the next open."""
        self.abandoned = 0
        """Streams whose stop was abandoned and has not returned yet."""
        self.abandoned_since: float | None = None
        """Monotonic time since which some abandoned stream blocks device rescans."""


_PORTAUDIO = _PortAudioState()


def rescans_blocked_seconds() -> float:
    """How long abandoned streams (a stop that never returned) have kept PortAudio from
    re-enumerating devices; 0 when none does. Only a restart of the process recovers from a
    stop that never returns, and the daemon uses this to decide when to ask for one."""
    with _PORTAUDIO.lock:
        since = _PORTAUDIO.abandoned_since
    return 0.0 if since is None else time.monotonic() - since


def _find_with_rescan(sd: Any, device: str | int) -> dict[str, Any]:
    """find_input_device, re-enumerating PortAudio once if the device is missing and it is safe.

    Call with _PORTAUDIO.lock held.
    """
    terminate = getattr(sd, "_terminate", None)
    initialize = getattr(sd, "_initialize", None)
    can_rescan = not _PORTAUDIO.open_streams and terminate is not None and initialize is not None
    if _PORTAUDIO.stale and can_rescan:
        _LOGGER.info("re-enumerating PortAudio devices after a stream failure")
    else:
        try:
            return find_input_device(device, _query_devices(sd))
        except AudioDeviceError:
            if not can_rescan:
                raise
        _LOGGER.info("audio input device %r not found; re-enumerating PortAudio devices", device)
    assert terminate is not None and initialize is not None  # for mypy: can_rescan
    _PORTAUDIO.stale = False
    # A failed earlier re-initialisation leaves PortAudio terminated; terminating again then
    # fails harmlessly, and initialising is what matters.
    with contextlib.suppress(sd.PortAudioError):
        terminate()
    try:
        initialize()
    except sd.PortAudioError as exc:
        raise AudioDeviceError(
            f"cannot re-initialise PortAudio to look for {device!r}: {exc}"
        ) from exc
    release_alsa_plugins()  # safe: the PortAudio lock is held and no stream of ours is open
    return find_input_device(device, _query_devices(sd))


def _channel_slice(selected: Sequence[int]) -> slice | None:
    """The selection as a slice (a view in the callback, no copy), if it is evenly spaced."""
    if len(selected) == 1:
        return slice(selected[0], selected[0] + 1)
    step = selected[1] - selected[0]
    if step <= 0 or any(b - a != step for a, b in itertools.pairwise(selected)):
        return None
    return slice(selected[0], selected[-1] + 1, step)


def _stream_closed() -> None:
    # Called when a stream's close returns: an abandoned (hung) one stays counted until then,
    # since PortAudio must not be re-initialised under it.
    with _PORTAUDIO.lock:
        _PORTAUDIO.open_streams = max(0, _PORTAUDIO.open_streams - 1)


class SoundDeviceSource(_ContextSource):
    """Live capture from a PortAudio input device (name substring or index), resampled to 16 kHz."""

    def __init__(
        self,
        device: str | int,
        *,
        channels: Sequence[int] = (0,),
        block_frames: int = 0,
        ring_seconds: float = DEFAULT_RING_SECONDS,
        samplerate: int | None = None,
        block_seconds: float | None = None,
    ) -> None:
        """`block_frames` at the device rate (0: PortAudio's choice), or `block_seconds`."""
        if not channels or min(channels) < 0:
            raise ValueError(f"SoundDeviceSource {device!r}: invalid channels {channels!r}")
        if ring_seconds <= 0:
            raise ValueError(f"SoundDeviceSource {device!r}: ring_seconds must be > 0")
        self.device = device
        self._channel_list = tuple(int(c) for c in channels)
        self.block_frames = int(block_frames)
        self.block_seconds = block_seconds
        self.ring_seconds = float(ring_seconds)
        self._requested_rate = samplerate
        self._stream: Any = None
        self._ring: RingBuffer | None = None
        self._resampler: StreamResampler | None = None
        self._device_name = str(device)
        self.device_rate_hz = 0
        """Rate the device is opened at, Hz (known after start())."""
        self._slice = _channel_slice(self._channel_list)
        self._index = np.asarray(self._channel_list, dtype=np.intp)
        self._scratch = np.zeros((SCRATCH_FRAMES, len(self._channel_list)), dtype=np.float32)
        self._overruns = 0
        self._frames_delivered = 0
        self._last_block_time = 0.0
        self._started_time = 0.0
        self._stopping = False

    @property
    def description(self) -> str:
        return f"sounddevice:{self._device_name} ch{list(self._channel_list)}"

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE_HZ

    @property
    def channels(self) -> int:
        return len(self._channel_list)

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # Runs on PortAudio's thread: copy, count, timestamp; nothing that can block or log.
        if status.input_overflow:
            self._overruns += 1
        ring = self._ring
        if ring is None:
            return
        if self._slice is not None:
            ring.write(indata[:, self._slice])
        else:
            if frames > self._scratch.shape[0]:
                self._scratch = np.zeros((frames, self._index.shape[0]), dtype=np.float32)
            out = self._scratch[:frames]
            np.take(indata, self._index, axis=1, out=out)
            ring.write(out)
        self._last_block_time = time.monotonic()

    def start(self) -> None:
        """Open and start the device stream; AudioDeviceError names the device if it fails."""
        if self._stream is not None:
            return
        sd = _import_sounddevice()
        with _PORTAUDIO.lock:
            self._open(sd)

    def _open(self, sd: Any) -> None:
        info = _find_with_rescan(sd, self.device)
        self._device_name = f"{info['name']} (#{info['index']})"
        needed = max(self._channel_list) + 1
        if needed > info["max_input_channels"]:
            raise AudioDeviceError(
                f"audio input device {self._device_name} has {info['max_input_channels']} "
                f"input channel(s), channel {needed - 1} was selected"
            )
        rate = int(self._requested_rate or self._preferred_rate(sd, info, needed))
        self.device_rate_hz = rate
        self._ring = RingBuffer(max(1, round(self.ring_seconds * rate)), len(self._channel_list))
        self._resampler = StreamResampler(rate, SAMPLE_RATE_HZ)
        self._overruns = 0
        self._frames_delivered = 0
        self._stopping = False
        self._started_time = time.monotonic()
        self._last_block_time = 0.0
        stream = None
        try:
            stream = sd.InputStream(
                device=info["index"],
                channels=needed,
                samplerate=rate,
                blocksize=(
                    round(self.block_seconds * rate) if self.block_seconds else self.block_frames
                ),
                dtype="float32",
                callback=self._callback,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            _PORTAUDIO.stale = True  # the device list may be out of date (we hold the lock)
            self._ring = None
            if stream is not None:
                with contextlib.suppress(sd.PortAudioError):
                    stream.close()
            raise AudioDeviceError(
                f"cannot open audio input device {self._device_name} at {rate} Hz "
                f"with {needed} channel(s): {exc}"
            ) from exc
        self._stream = stream
        _PORTAUDIO.open_streams += 1
        _LOGGER.info(
            "capturing from %s at %d Hz, channels %s, resampling to %d Hz",
            self._device_name,
            rate,
            list(self._channel_list),
            SAMPLE_RATE_HZ,
        )

    @staticmethod
    def _preferred_rate(sd: Any, info: dict[str, Any], channels: int) -> int:
        """16 kHz when the device (or the sound server behind it) accepts it, else its default.

        Capturing at 16 kHz lets PulseAudio or the hardware do the rate conversion in C, which
        costs far less CPU than our polyphase resampler on a 44.1 kHz stream.
        """
        try:
            sd.check_input_settings(
                device=info["index"], channels=channels, samplerate=SAMPLE_RATE_HZ, dtype="float32"
            )
        except Exception:  # noqa: BLE001 - any refusal means: use the device's own rate
            return round(info["default_samplerate"])
        return SAMPLE_RATE_HZ

    def read(self, timeout_seconds: float) -> npt.NDArray[np.float32] | None:
        """Next 16 kHz block [frames, channels], or None if none within the timeout."""
        ring, resampler, stream = self._ring, self._resampler, self._stream
        if ring is None or resampler is None or stream is None:
            raise AudioDeviceError(f"{self.description}: read() before start() or after stop()")
        deadline = time.monotonic() + max(0.0, timeout_seconds)
        min_frames = round(MIN_READ_SECONDS * self.device_rate_hz)
        while True:
            remaining = deadline - time.monotonic()
            if ring.wait(max(0.0, remaining)):
                # Gather a reasonable block first: resampling tiny callback-sized blocks
                # costs several times more CPU per second of audio.
                missing = min_frames - ring.available_frames
                if missing > 0:
                    time.sleep(
                        max(0.0, min(missing / self.device_rate_hz, deadline - time.monotonic()))
                    )
                out = resampler.process(ring.read())
                if out.shape[0]:
                    self._frames_delivered += out.shape[0]
                    return out
            elif not stream.active and not self._stopping:
                with _PORTAUDIO.lock:
                    _PORTAUDIO.stale = True
                raise AudioDeviceError(f"audio input device {self._device_name} stream stopped")
            if time.monotonic() >= deadline:
                return None

    def seconds_since_last_block(self) -> float:
        """Seconds since the callback last delivered audio (since start() if it never did)."""
        last = self._last_block_time or self._started_time
        return time.monotonic() - last if last else 0.0

    @property
    def active(self) -> bool:
        """Whether PortAudio reports the stream as running."""
        return bool(self._stream is not None and self._stream.active)

    def stats(self) -> SourceStats:
        ring = self._ring
        return SourceStats(
            frames_delivered=self._frames_delivered,
            overruns=self._overruns,
            overwritten_frames=ring.overwritten_frames if ring is not None else 0,
        )

    def stop(self) -> None:
        """Abort and close the stream; never waits longer than STREAM_STOP_TIMEOUT_SECONDS."""
        stream = self._stream
        if stream is None:
            return
        self._stopping = True
        self._stream = None

        name = self._device_name
        abandoned = threading.Event()

        def _close() -> None:
            try:
                stream.abort()
                stream.close()
            except Exception:  # shutdown path: report, never raise into the daemon's teardown
                _LOGGER.exception("error closing audio input device %s", name)
            # Counted closed only now, however late: an abandoned stream that finally stops
            # (its device went away for good, unblocking PortAudio) gives device rescans back;
            # until then PortAudio must not be re-initialised under it.
            _stream_closed()
            with _PORTAUDIO.lock:
                late = abandoned.is_set()
                if late:
                    _PORTAUDIO.abandoned -= 1
                    if _PORTAUDIO.abandoned == 0:
                        _PORTAUDIO.abandoned_since = None
            if late:
                _LOGGER.warning(
                    "abandoned stream of audio input device %s stopped at last; device "
                    "rescans are possible again",
                    name,
                )

        closer = threading.Thread(target=_close, name="audio-stream-close", daemon=True)
        closer.start()
        closer.join(STREAM_STOP_TIMEOUT_SECONDS)
        with _PORTAUDIO.lock:
            # Under the lock: the closer counts itself out under it too, so a stop that returns
            # right now is either not abandoned or abandoned and counted out, never half.
            stuck = closer.is_alive()
            if stuck:
                abandoned.set()
                _PORTAUDIO.abandoned += 1
                if _PORTAUDIO.abandoned_since is None:
                    _PORTAUDIO.abandoned_since = time.monotonic()
        if stuck:
            _LOGGER.warning(
                "audio input device %s did not stop within %.1f s; abandoning its stream "
                "(no device rescans until it stops)",
                name,
                STREAM_STOP_TIMEOUT_SECONDS,
            )
        else:
            _LOGGER.info("stopped capture from %s", name)
