"""Tests for edge_asd.audio.sources: WavSource, SoundDeviceSource with a fake PortAudio, and
real capture from a virtual PulseAudio microphone (integration)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from edge_asd.audio import sources
from edge_asd.audio.files import AudioFileError, write_wav
from edge_asd.audio.sources import (
    AudioDeviceError,
    AudioSource,
    EndOfStream,
    SoundDeviceSource,
    SourceStats,
    WavSource,
    find_input_device,
)
from edge_asd.constants import SAMPLE_RATE_HZ
from tests.pulse_fixture import VirtualMic  # the virtual_mic fixture comes from conftest.py

BLOCK = 1600
READ_TIMEOUT_S = 5.0
TONE_HZ = 1_000.0
QUIET_SECONDS = 0.5


def _const_wav(path: Path, value: float, frames: int, rate: int = SAMPLE_RATE_HZ) -> Path:
    write_wav(path, np.full(frames, value), rate)
    return path


def _drain(source: AudioSource, limit: int = 10_000) -> list[np.ndarray]:
    blocks: list[np.ndarray] = []
    for _ in range(limit):
        try:
            block = source.read(READ_TIMEOUT_S)
        except EndOfStream:
            return blocks
        assert block is not None
        blocks.append(block)
    raise AssertionError("source never ended")


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1 / rate)[np.argmax(spectrum)])


# ------------------------------------------------------------------ WavSource
def test_wav_source_block_sizes_and_end(tmp_path: Path) -> None:
    path = _const_wav(tmp_path / "a.wav", 0.5, 4000)
    with WavSource(path, block_frames=BLOCK) as source:
        assert isinstance(source, AudioSource)
        assert source.sample_rate == SAMPLE_RATE_HZ and source.channels == 1
        blocks = _drain(source)
        assert [b.shape for b in blocks] == [(1600, 1), (1600, 1), (800, 1)]
        assert blocks[0].dtype == np.float32
        np.testing.assert_allclose(np.concatenate(blocks), 0.5, atol=1e-4)
        assert source.stats() == SourceStats(4000, 0, 0)
        with pytest.raises(EndOfStream):
            source.read(0.0)


def test_wav_source_directory_sorted_and_blocks_stay_in_one_file(tmp_path: Path) -> None:
    _const_wav(tmp_path / "b.wav", 0.2, 1000)
    _const_wav(tmp_path / "a.wav", 0.1, 1000)
    _const_wav(tmp_path / "c.wav", 0.3, 1000)
    (tmp_path / "notes.txt").write_text("not audio")
    with WavSource(tmp_path, block_frames=600) as source:
        assert [p.name for p in source.files] == ["a.wav", "b.wav", "c.wav"]
        blocks = _drain(source)
    assert [b.shape[0] for b in blocks] == [600, 400] * 3
    levels = [round(float(b.mean()), 2) for b in blocks]
    assert levels == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]


def test_wav_source_resamples_and_selects_channel(tmp_path: Path) -> None:
    rate = 48_000
    stereo = np.stack([np.zeros(rate), np.full(rate, -0.25)], axis=1)
    path = tmp_path / "stereo48k.wav"
    write_wav(path, stereo, rate)
    with WavSource(path, channels=(1,)) as source:
        audio = np.concatenate(_drain(source))
    assert audio.shape == (SAMPLE_RATE_HZ, 1)
    np.testing.assert_allclose(audio[200:-200], -0.25, atol=1e-3)


def test_wav_source_loop_restarts(tmp_path: Path) -> None:
    path = _const_wav(tmp_path / "a.wav", 0.5, 1000)
    with WavSource(path, block_frames=BLOCK, loop=True) as source:
        shapes = [source.read(READ_TIMEOUT_S).shape[0] for _ in range(5)]  # type: ignore[union-attr]
        assert shapes == [1000] * 5
        assert source.stats().frames_delivered == 5000


def test_wav_source_decodes_a_looped_single_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_asd.audio import sources

    path = _const_wav(tmp_path / "a.wav", 0.5, 1000)
    loads: list[object] = []
    real = sources.read_wav_channels

    def counting(*args: object, **kwargs: object) -> object:
        loads.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sources, "read_wav_channels", counting)
    with WavSource(path, block_frames=BLOCK, loop=True) as source:
        blocks = [source.read(READ_TIMEOUT_S) for _ in range(5)]  # five passes
    assert len(loads) == 1
    assert all(b is not None and b.shape[0] == 1000 for b in blocks)
    np.testing.assert_allclose(np.concatenate(blocks)[200:-200], 0.5, atol=1e-3)  # type: ignore[arg-type]


def test_wav_source_skips_unreadable_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _const_wav(tmp_path / "a.wav", 0.1, 500)
    (tmp_path / "b.wav").write_bytes(b"garbage")
    _const_wav(tmp_path / "c.wav", 0.3, 500)
    with caplog.at_level(logging.ERROR), WavSource(tmp_path) as source:
        blocks = _drain(source)
    assert len(blocks) == 2
    assert "b.wav" in caplog.text


def test_wav_source_all_unreadable_with_loop_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"garbage")
    with (
        WavSource(tmp_path, loop=True) as source,
        pytest.raises(AudioFileError, match="no readable"),
    ):
        source.read(READ_TIMEOUT_S)


def test_wav_source_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match=r"missing\.wav: file does not exist"):
        WavSource(tmp_path / "missing.wav")
    with pytest.raises(AudioFileError, match=r"no \.wav files"):
        WavSource(tmp_path)
    with pytest.raises(RuntimeError, match="before start"):
        WavSource(_const_wav(tmp_path / "a.wav", 0.1, 10)).read(0.0)


def test_wav_source_realtime_is_paced(tmp_path: Path) -> None:
    path = _const_wav(tmp_path / "a.wav", 0.1, 4800)  # 0.3 s
    with WavSource(path, realtime=True, block_frames=BLOCK) as source:
        assert source.read(0.0) is None  # the first 0.1 s block is not due yet
        t0 = time.monotonic()
        blocks = _drain(source)
        elapsed = time.monotonic() - t0
    assert sum(b.shape[0] for b in blocks) == 4800
    # A lower bound only: sleeping can overshoot on a busy machine but never undershoot.
    assert elapsed >= 0.25


# -------------------------------------------------- SoundDeviceSource, fake PortAudio
class _Flags:
    def __init__(self, overflow: bool) -> None:
        self.input_overflow = overflow


class _FakeStream:
    """Calls the callback from its own thread with a multi-channel tone, like PortAudio."""

    hang_on_abort = False

    def __init__(
        self,
        *,
        device: int,
        channels: int,
        samplerate: int,
        blocksize: int,
        dtype: str,
        callback: Any,
    ) -> None:
        assert dtype == "float32"
        self.channels, self.rate, self.callback = channels, samplerate, callback
        self.block = blocksize or 441
        self.active = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-portaudio", daemon=True)
        self.blocks_sent = 0

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set() and self.blocks_sent < 200:
            t = (n + np.arange(self.block)) / self.rate
            data = np.stack(
                [
                    (c + 1) * 0.1 * np.sin(2 * np.pi * TONE_HZ * (c + 1) * t)
                    for c in range(self.channels)
                ],
                axis=1,
            ).astype(np.float32)
            self.callback(data, self.block, None, _Flags(self.blocks_sent == 3))
            self.blocks_sent += 1
            n += self.block
            self._stop.wait(0.001)
        self.active = False

    def start(self) -> None:
        self.active = True
        self._thread.start()

    def abort(self) -> None:
        if self.hang_on_abort:
            threading.Event().wait()  # like PortAudio on a pipe source whose writer vanished
        self._stop.set()
        self._thread.join(5.0)

    def close(self) -> None:
        pass


class _FakeSounddevice:
    class PortAudioError(Exception):
        pass

    devices: ClassVar[list[dict[str, Any]]] = [
        {
            "index": 0,
            "name": "HDA Intel PCH: ALC (hw:0,0)",
            "max_input_channels": 2,
            "default_samplerate": 44100.0,
        },
        {"index": 1, "name": "Speakers", "max_input_channels": 0, "default_samplerate": 48000.0},
        {
            "index": 2,
            "name": "USB Mic Array",
            "max_input_channels": 4,
            "default_samplerate": 48000.0,
        },
    ]

    def __init__(self) -> None:
        self.streams: list[_FakeStream] = []
        self.visible = list(self.devices)
        self.plugged_later: list[dict[str, Any]] = []
        self.rescans = 0

    def query_devices(self) -> list[dict[str, Any]]:
        return self.visible

    def _terminate(self) -> None:
        self.visible = []

    def _initialize(self) -> None:
        self.rescans += 1
        self.visible = self.devices + self.plugged_later

    def InputStream(self, **kwargs: Any) -> _FakeStream:  # noqa: N802 - mirrors sounddevice
        stream = _FakeStream(**kwargs)
        self.streams.append(stream)
        return stream


@pytest.fixture
def fake_sd(monkeypatch: pytest.MonkeyPatch) -> _FakeSounddevice:
    fake = _FakeSounddevice()
    monkeypatch.setattr(sources, "_import_sounddevice", lambda: fake)
    monkeypatch.setattr(_FakeStream, "hang_on_abort", False)
    monkeypatch.setattr(sources, "_PORTAUDIO", sources._PortAudioState())
    return fake


def _capture(source: SoundDeviceSource, frames: int) -> np.ndarray:
    got: list[np.ndarray] = []
    total = 0
    deadline = time.monotonic() + 10.0
    while total < frames and time.monotonic() < deadline:
        block = source.read(0.5)
        if block is not None:
            got.append(block)
            total += block.shape[0]
    assert total >= frames, "capture delivered too little"
    return np.concatenate(got)


def test_fake_device_delivers_16k_selected_channel(fake_sd: _FakeSounddevice) -> None:
    with SoundDeviceSource("hda intel", channels=(1,)) as source:
        assert source.device_rate_hz == 44_100
        assert fake_sd.streams[0].channels == 2
        audio = _capture(source, SAMPLE_RATE_HZ // 2)
        stats = source.stats()
    assert audio.shape[1] == 1 and audio.dtype == np.float32
    # Channel 1 of the fake carries 2 kHz at amplitude 0.2.
    assert _dominant_hz(audio[200:, 0], SAMPLE_RATE_HZ) == pytest.approx(2 * TONE_HZ, abs=5)
    assert np.max(np.abs(audio[200:, 0])) == pytest.approx(0.2, abs=0.01)
    assert stats.frames_delivered == audio.shape[0]
    assert stats.overruns == 1
    assert stats.overwritten_frames == 0


def test_fake_device_non_contiguous_channels(fake_sd: _FakeSounddevice) -> None:
    with SoundDeviceSource(2, channels=(0, 3)) as source:
        assert fake_sd.streams[0].channels == 4
        audio = _capture(source, 8000)
    assert audio.shape[1] == 2
    assert _dominant_hz(audio[200:, 0], SAMPLE_RATE_HZ) == pytest.approx(TONE_HZ, abs=5)
    assert _dominant_hz(audio[200:, 1], SAMPLE_RATE_HZ) == pytest.approx(4 * TONE_HZ, abs=5)


def test_missing_device_names_it_and_lists_inputs(fake_sd: _FakeSounddevice) -> None:
    source = SoundDeviceSource("Focusrite")
    with pytest.raises(AudioDeviceError) as info:
        source.start()
    message = str(info.value)
    assert "'Focusrite' not found" in message
    assert "USB Mic Array" in message and "HDA Intel" in message
    assert "Speakers" not in message  # output-only devices are not offered


LATE_MIC = {
    "index": 3,
    "name": "Late USB Mic",
    "max_input_channels": 1,
    "default_samplerate": 16000.0,
}


def test_device_plugged_in_after_init_is_found_by_rescan(fake_sd: _FakeSounddevice) -> None:
    fake_sd.plugged_later = [LATE_MIC]
    with SoundDeviceSource("late usb") as source:
        assert fake_sd.rescans == 1
        assert source.device_rate_hz == 16_000
        assert "Late USB Mic" in source.description


def test_no_rescan_while_another_stream_is_open(fake_sd: _FakeSounddevice) -> None:
    fake_sd.plugged_later = [LATE_MIC]
    with SoundDeviceSource("USB Mic Array"):
        with pytest.raises(AudioDeviceError, match="'late usb' not found"):
            SoundDeviceSource("late usb").start()
        assert fake_sd.rescans == 0
    with SoundDeviceSource("late usb"):  # the first stream is closed: now it may rescan
        assert fake_sd.rescans == 1


def test_device_selection_rules() -> None:
    devices = _FakeSounddevice.devices
    assert find_input_device("usb mic", devices)["index"] == 2
    assert find_input_device(0, devices)["index"] == 0
    assert find_input_device("2", devices)["index"] == 2
    with pytest.raises(AudioDeviceError, match="input device 1 not found"):
        find_input_device(1, devices)  # exists, but has no inputs
    with pytest.raises(AudioDeviceError, match="ambiguous"):
        find_input_device("a", devices)


def test_too_many_channels_rejected(fake_sd: _FakeSounddevice) -> None:
    with pytest.raises(AudioDeviceError, match="has 2 input channel"):
        SoundDeviceSource("HDA", channels=(2,)).start()


def test_read_before_start_and_timeout(fake_sd: _FakeSounddevice) -> None:
    source = SoundDeviceSource("USB")
    with pytest.raises(AudioDeviceError, match="before start"):
        source.read(0.0)
    source.start()
    try:
        fake_sd.streams[0].abort()  # device goes quiet and inactive
        source.read(0.1)  # drain what was captured
        with pytest.raises(AudioDeviceError, match="stream stopped"):
            while source.read(0.1) is not None:
                pass
        assert source.seconds_since_last_block() >= 0.0
    finally:
        source.stop()


def test_stop_is_bounded_when_portaudio_hangs(
    fake_sd: _FakeSounddevice, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sources, "STREAM_STOP_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(_FakeStream, "hang_on_abort", True)
    source = SoundDeviceSource("USB")
    source.start()
    with caplog.at_level(logging.WARNING):
        source.stop()  # would never return without the helper thread
    assert "did not stop" in caplog.text
    source.stop()  # idempotent


# ------------------------------------------------------------------ real capture (PulseAudio)
@pytest.mark.integration
def test_real_capture_from_virtual_mic(virtual_mic: VirtualMic) -> None:
    t = np.arange(SAMPLE_RATE_HZ * 10) / SAMPLE_RATE_HZ
    virtual_mic.play(0.5 * np.sin(2 * np.pi * TONE_HZ * t))
    source = SoundDeviceSource(virtual_mic.device)
    source.start()
    try:
        audio = _capture(source, round(1.5 * SAMPLE_RATE_HZ))
        stats = source.stats()
        since = source.seconds_since_last_block()
    finally:
        source.stop()
    assert audio.dtype == np.float32 and audio.shape[1] == 1
    steady = audio[SAMPLE_RATE_HZ // 2 :, 0]
    assert _dominant_hz(steady, SAMPLE_RATE_HZ) == pytest.approx(TONE_HZ, abs=10)
    assert np.max(np.abs(steady)) == pytest.approx(0.5, abs=0.1)
    assert stats.frames_delivered == audio.shape[0]
    assert stats.overwritten_frames == 0
    assert 0.0 <= since < READ_TIMEOUT_S


@pytest.mark.integration
def test_real_missing_device_is_named(virtual_mic: VirtualMic) -> None:
    with pytest.raises(AudioDeviceError, match=r"'no-such-mic' not found.*pulse"):
        SoundDeviceSource("no-such-mic").start()


@pytest.mark.integration
def test_real_stop_is_bounded_after_the_writer_goes_away(virtual_mic: VirtualMic) -> None:
    source = SoundDeviceSource(virtual_mic.device)
    source.start()
    try:
        assert _capture(source, 1600).shape[0] >= 1600
        virtual_mic.stop_feeding()
        # Without a writer the callbacks stop while the stream stays "active": the silence
        # watchdog (seconds_since_last_block) is what notices.
        deadline = time.monotonic() + READ_TIMEOUT_S
        while source.seconds_since_last_block() < QUIET_SECONDS and time.monotonic() < deadline:
            source.read(0.1)
        assert source.seconds_since_last_block() >= QUIET_SECONDS
        assert source.active
    finally:
        t0 = time.monotonic()
        source.stop()
        elapsed = time.monotonic() - t0
    # Not a speed check: stop() must give up on a hung PortAudio instead of hanging the daemon.
    assert elapsed < 2 * sources.STREAM_STOP_TIMEOUT_SECONDS + 1.0


def test_virtual_mic_feed_order_without_a_server() -> None:
    """The feeder's queue/provider logic: queued audio in order, provider replaces, then silence."""
    mic = VirtualMic()
    try:
        mic.play(np.full(3, 0.5))
        mic.play(np.full(2, -0.5))
        chunk = mic._next_chunk(7)
        np.testing.assert_array_equal(chunk, [16384] * 3 + [-16384] * 2 + [0, 0])
        assert mic.idle
        calls = iter([np.full(4, 1.0), None])
        mic.play(np.full(10, 0.25))
        mic.set_source(lambda n: next(calls))  # drops the queued 0.25s
        np.testing.assert_array_equal(mic._next_chunk(6), [32767] * 4 + [0, 0])
        assert mic.idle and mic.audio_frames_fed == 9
    finally:
        mic.stop()


@pytest.mark.integration
def test_real_capture_follows_a_source_swap(virtual_mic: VirtualMic) -> None:
    low, high = TONE_HZ, 3 * TONE_HZ
    phase = {"n": 0}

    def tone(freq: float) -> Callable[[int], np.ndarray]:
        def provide(frames: int) -> np.ndarray:
            n = phase["n"] + np.arange(frames)
            phase["n"] += frames
            return 0.4 * np.sin(2 * np.pi * freq * n / SAMPLE_RATE_HZ)

        return provide

    virtual_mic.set_source(tone(low))
    with SoundDeviceSource(virtual_mic.device) as source:
        before = _capture(source, SAMPLE_RATE_HZ)
        virtual_mic.set_source(tone(high))
        after = _capture(source, round(1.5 * SAMPLE_RATE_HZ))
    assert _dominant_hz(before[SAMPLE_RATE_HZ // 4 :, 0], SAMPLE_RATE_HZ) == pytest.approx(
        low, abs=10
    )
    # Skip what was already buffered in PulseAudio/PortAudio when the source changed.
    assert _dominant_hz(after[SAMPLE_RATE_HZ // 2 :, 0], SAMPLE_RATE_HZ) == pytest.approx(
        high, abs=10
    )
