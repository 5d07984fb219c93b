"""A virtual microphone for integration tests: a private PulseAudio server with a pipe source.

`VirtualMic` starts `pulseaudio` (works as root without --system when XDG_RUNTIME_DIR and HOME
point at a private directory), loads `module-pipe-source` as the default source, and feeds the
FIFO in real time from audio the test supplies; when that runs out it feeds silence until
`stop()`, because PortAudio's stop() can block forever on a pipe source nobody writes to.
PortAudio opens it as the device named `pulse` (the ALSA pulse plugin, from libasound2-plugins).

Use `mic.env` for a subprocess (a daemon under test) and the `virtual_mic` fixture for tests in
this process (it sets the environment and re-enumerates PortAudio devices).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pytest

from edge_asd.constants import SAMPLE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

PORTAUDIO_DEVICE: Final = "pulse"
"""PortAudio (ALSA) device name that reaches the PulseAudio server named by PULSE_SERVER."""

SOURCE_NAME: Final = "edgeasd_mic"
FEED_CHUNK_SECONDS: Final = 0.02
"""Feeder granularity: the FIFO is never more than one chunk ahead of real time."""
MAX_LAG_SECONDS: Final = 0.5
"""Further behind than this (a stalled machine), the feeder resyncs instead of bursting."""
START_TIMEOUT_SECONDS: Final = 10.0
STOP_TIMEOUT_SECONDS: Final = 5.0
WRITE_SELECT_SECONDS: Final = 0.2
POLL_SECONDS: Final = 0.05
PCM16_MAX: Final = 32_767

AudioProvider = Callable[[int], "npt.NDArray[np.generic] | None"]
"""Called with a frame count; returns up to that many samples, or None/empty when exhausted."""


def _to_int16(samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
    data = np.asarray(samples)
    if data.ndim != 1:
        raise ValueError(f"VirtualMic plays mono audio [n], got shape {data.shape}")
    if data.dtype == np.int16:
        return data.copy()
    return np.round(np.clip(data.astype(np.float64), -1.0, 1.0) * PCM16_MAX).astype(np.int16)


def refresh_portaudio() -> None:
    """Re-enumerate PortAudio devices in this process (its device list is fixed at init)."""
    sd = sys.modules.get("sounddevice")
    if sd is None:
        return
    sd._terminate()
    sd._initialize()


class VirtualMic:
    """Private PulseAudio server whose default source is a FIFO fed in real time."""

    def __init__(self, base_dir: Path | None = None, *, rate: int = SAMPLE_RATE_HZ) -> None:
        # Unix socket paths are limited to ~107 bytes, so use a short private dir by default.
        self._own_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="edgeasd-pa-")) if base_dir is None else base_dir
        )
        self.rate = rate
        self.runtime_dir = self.base_dir / "run"
        self.fifo_path = self.base_dir / "mic.fifo"
        self.socket_path = self.runtime_dir / "native"
        self.log_path = self.base_dir / "pulseaudio.log"
        self.device = PORTAUDIO_DEVICE
        self.frames_fed = 0
        """Frames written to the FIFO, silence included."""
        self.audio_frames_fed = 0
        """Frames of supplied (non-filler) audio written."""
        self._lock = threading.Lock()
        self._queue: collections.deque[npt.NDArray[np.int16]] = collections.deque()
        self._provider: AudioProvider | None = None
        self._stop = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._feeder: threading.Thread | None = None
        self._fd: int | None = None
        self._log_file: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment variables a client process needs to reach this server."""
        return {
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PULSE_SERVER": f"unix:{self.socket_path}",
            "PULSE_RUNTIME_PATH": str(self.runtime_dir),
        }

    # ----------------------------------------------------------------- audio to feed
    def play(self, samples: npt.ArrayLike, *, replace: bool = False) -> None:
        """Queue mono audio (float in [-1, 1] or int16) after what is already queued."""
        pcm = _to_int16(samples)
        with self._lock:
            if replace:
                self._queue.clear()
                self._provider = None
            self._queue.append(pcm)

    def set_source(self, provider: AudioProvider | None) -> None:
        """Feed from `provider(n_frames)` from now on (queued audio is dropped)."""
        with self._lock:
            self._queue.clear()
            self._provider = provider

    def clear(self) -> None:
        """Drop queued audio and the provider: silence from the next chunk on."""
        self.set_source(None)

    @property
    def idle(self) -> bool:
        """True when only filler silence is being fed."""
        with self._lock:
            return not self._queue and self._provider is None

    def wait_idle(self, timeout_seconds: float) -> bool:
        """Wait until all supplied audio has been fed; False on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.idle:
                return True
            time.sleep(POLL_SECONDS)
        return self.idle

    def _next_chunk(self, frames: int) -> npt.NDArray[np.int16]:
        chunk = np.zeros(frames, dtype=np.int16)
        filled = 0
        with self._lock:
            while filled < frames:
                if self._provider is not None:
                    got = self._provider(frames - filled)
                    if got is None or len(got) == 0:
                        self._provider = None
                        continue
                    pcm = _to_int16(got)[: frames - filled]
                    chunk[filled : filled + pcm.shape[0]] = pcm
                    filled += pcm.shape[0]
                elif self._queue:
                    head = self._queue[0]
                    take = min(frames - filled, head.shape[0])
                    chunk[filled : filled + take] = head[:take]
                    filled += take
                    if take == head.shape[0]:
                        self._queue.popleft()
                    else:
                        self._queue[0] = head[take:]
                else:
                    break
        self.audio_frames_fed += filled
        return chunk

    # ----------------------------------------------------------------- server lifecycle
    def start(self, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """Start the server and the feeder; raises RuntimeError (with the log) on failure."""
        binary = shutil.which("pulseaudio")
        if binary is None:
            raise RuntimeError("pulseaudio is not installed (apt-get install pulseaudio)")
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.chmod(0o700)
        config = self.base_dir / "default.pa"
        config.write_text(
            f"load-module module-native-protocol-unix socket={self.socket_path} auth-anonymous=1\n"
            f"load-module module-pipe-source source_name={SOURCE_NAME} file={self.fifo_path} "
            f"format=s16le rate={self.rate} channels=1\n"
            f"set-default-source {SOURCE_NAME}\n"
        )
        env = dict(os.environ)
        env.update(self.env)
        env["HOME"] = str(self.base_dir)  # keeps the cookie and state out of the real home
        self._log_file = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._process = subprocess.Popen(
            [
                binary,
                "--daemonize=no",
                "--system=false",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
                "-n",
                "-F",
                str(config),
                "--log-target=stderr",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
        )
        deadline = time.monotonic() + timeout_seconds
        while not (self.socket_path.exists() and self.fifo_path.exists()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self.log_path.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"pulseaudio did not start in {self.base_dir}:\n{log}")
            time.sleep(POLL_SECONDS)
        # pulseaudio holds the FIFO open read-write, so a non-blocking open for writing succeeds.
        self._fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK)
        self._stop.clear()
        self._feeder = threading.Thread(target=self._feed, name="virtual-mic-feeder", daemon=True)
        self._feeder.start()

    def _write_all(self, data: bytes) -> bool:
        """Write to the FIFO; False if stopping or the server went away."""
        assert self._fd is not None
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                select.select([], [self._fd], [], WRITE_SELECT_SECONDS)
                continue
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    return False
                raise
            view = view[written:]
        return not view

    def _feed(self) -> None:
        chunk_frames = max(1, round(FEED_CHUNK_SECONDS * self.rate))
        t0 = time.monotonic()
        fed_since_t0 = 0
        while not self._stop.is_set():
            due = t0 + fed_since_t0 / self.rate
            now = time.monotonic()
            if due > now:
                self._stop.wait(due - now)
                continue
            if now - due > MAX_LAG_SECONDS:
                t0, fed_since_t0 = now, 0
            if not self._write_all(self._next_chunk(chunk_frames).tobytes()):
                return
            fed_since_t0 += chunk_frames
            self.frames_fed += chunk_frames

    def stop_feeding(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop writing to the FIFO but keep the server: a microphone whose writer went away."""
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout_seconds)
            self._feeder = None

    def stop(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop feeding and the server (stop the consumer first); bounded."""
        self.stop_feeding(timeout_seconds)
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(timeout_seconds)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout_seconds)
            self._process = None
        for fd in (self._fd, self._log_file):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._log_file = None
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> VirtualMic:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_virtual_mic(monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualMic]:
    """A started VirtualMic with this process's environment and PortAudio pointed at it."""
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio is not installed")
    mic = VirtualMic()
    mic.start()
    try:
        for key, value in mic.env.items():
            monkeypatch.setenv(key, value)
        refresh_portaudio()
        yield mic
    finally:
        mic.stop()
        refresh_portaudio()


@pytest.fixture
def virtual_mic(monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualMic]:
    """Fixture form of `running_virtual_mic`, for conftest.py to import."""
    with running_virtual_mic(monkeypatch) as mic:
        yield mic
