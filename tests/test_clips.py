"""Event clips: pre/post-roll, background writing, retention, failures that never raise."""

from __future__ import annotations

import os
import struct
import threading
import time
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest

from edge_asd.detection.explain import Explanation
from edge_asd.service.clips import ClipRecorder
from edge_asd.service.spectrogram import (
    PNG_SIGNATURE,
    Marks,
    encode_png,
    png_size,
    spectrogram_image,
)

SR = 16_000
BLOCK = 1_600  # 0.1 s


def _recorder(directory: Path, **kwargs: object) -> ClipRecorder:
    settings: dict[str, object] = {
        "pre_seconds": 2.0,
        "post_seconds": 1.0,
        "max_total_mb": 50.0,
        "max_age_days": 7.0,
        "sample_rate": SR,
        "audio_format": "wav",
    }
    settings.update(kwargs)
    return ClipRecorder(directory, **settings)  # type: ignore[arg-type]


class _Stream:
    """Feeds a recorder 0.1 s blocks of a tone, with epoch-like times."""

    def __init__(self, recorder: ClipRecorder, machine: str = "press") -> None:
        self.recorder = recorder
        self.machine = machine
        self.time = 1_700_000_000.0
        self.count = 0

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds * SR / BLOCK)):
            t = (self.count * BLOCK + np.arange(BLOCK)) / SR
            self.count += 1
            self.time += BLOCK / SR
            self.recorder.push(self.machine, 0.1 * np.sin(2 * np.pi * 440.0 * t), self.time)


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as clip:
        assert clip.getframerate() == SR
        assert clip.getnchannels() == 1
        return clip.getnframes() / SR


def test_clip_is_pre_plus_event_plus_post(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path)
    stream = _Stream(recorder)
    stream.run(10.0)
    start = stream.time - 0.5  # the event's first window began half a second ago
    recorder.event_started("press", "e1", start)
    stream.run(3.0)
    end = stream.time
    path = recorder.event_ended("press", "e1", end, None)
    assert path == tmp_path / "e1.wav"
    assert not path.exists()  # the post-roll is still to come
    stream.run(1.5)
    _wait_for(path.exists)
    assert _wav_seconds(path) == pytest.approx(2.0 + (end - start) + 1.0, abs=1e-3)
    _wait_for((tmp_path / "e1.png").exists)
    recorder.close()
    assert recorder.stats().written == 1


def test_event_audio_splits_pre_roll_from_event(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path)
    stream = _Stream(recorder)
    stream.run(5.0)
    recorder.event_started("press", "e1", stream.time - 1.0)
    stream.run(2.0)
    audio = recorder.event_audio("press")
    assert audio is not None
    assert audio.pre.size == 2 * SR
    assert audio.event.size == 3 * SR
    assert audio.event.dtype == np.float32
    assert float(np.max(np.abs(audio.event))) == pytest.approx(0.1, abs=1e-3)
    assert recorder.event_audio("other") is None
    recorder.close()


def test_event_audio_copies_only_what_is_asked(tmp_path: Path) -> None:
    """Spans across recorded blocks come out as the int16 clip scaled to float, the event's
    head only with `max_event_seconds`, and no pre-roll with `with_pre=False` (a bundle with
    a band profile does not need it)."""
    recorder = _recorder(tmp_path)
    stream = _Stream(recorder)
    stream.run(5.0)
    recorder.event_started("press", "e1", stream.time - 1.03)
    stream.run(2.0)
    full = recorder.event_audio("press")
    head = recorder.event_audio("press", max_event_seconds=1.25)
    bare = recorder.event_audio("press", with_pre=False)
    assert full is not None and head is not None and bare is not None
    pcm = np.round(np.clip(np.concatenate([full.pre, full.event]), -1, 1) * 32768.0)
    assert full.pre.size == 2 * SR and full.event.size == round(3.03 * SR)
    # Exactly the recorded 16-bit samples: values are k / 32768.
    np.testing.assert_array_equal(pcm, np.round(pcm))
    np.testing.assert_array_equal(head.event, full.event[: round(1.25 * SR)])
    np.testing.assert_array_equal(head.pre, full.pre)
    assert bare.pre.size == 0 and bare.pre.dtype == np.float32
    np.testing.assert_array_equal(bare.event, full.event)
    recorder.close()


def test_short_history_gives_a_shorter_pre_roll(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path)
    stream = _Stream(recorder)
    stream.run(0.5)
    recorder.event_started("press", "e1", stream.time - 0.2)
    stream.run(1.0)
    end = stream.time
    recorder.event_ended("press", "e1", end, None)
    stream.run(1.0)
    _wait_for((tmp_path / "e1.wav").exists)
    assert _wav_seconds(tmp_path / "e1.wav") == pytest.approx(0.5 + 1.0 + 1.0, abs=1e-3)
    recorder.close()


def test_new_event_in_post_roll_closes_the_previous_clip(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path, post_seconds=5.0)
    stream = _Stream(recorder)
    stream.run(3.0)
    recorder.event_started("press", "e1", stream.time)
    stream.run(1.0)
    recorder.event_ended("press", "e1", stream.time, None)
    stream.run(1.0)
    recorder.event_started("press", "e2", stream.time)
    _wait_for((tmp_path / "e1.wav").exists)
    assert _wav_seconds(tmp_path / "e1.wav") == pytest.approx(2.0 + 1.0 + 1.0, abs=1e-3)
    recorder.close()  # hands e2 over with what it has
    assert (tmp_path / "e2.wav").exists()


def test_unknown_event_end_returns_none(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path)
    assert recorder.event_ended("press", "nope", 0.0, None) is None
    recorder.close()


def test_unwritable_dir_never_raises_and_counts(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    recorder = _recorder(blocker / "clips", post_seconds=0.0)
    stream = _Stream(recorder)
    stream.run(1.0)
    for n in range(3):
        recorder.event_started("press", f"e{n}", stream.time)
        stream.run(0.5)
        recorder.event_ended("press", f"e{n}", stream.time, None)
        stream.run(0.2)
    _wait_for(lambda: recorder.stats().failures >= 4)  # start-up + three clips
    # Logged once, not once per clip.
    errors = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(errors) == 1
    # While failing, a payload gets no path to a file that will not exist.
    recorder.event_started("press", "e9", stream.time)
    stream.run(0.5)
    assert recorder.event_ended("press", "e9", stream.time, None) is None
    recorder.close()
    assert recorder.stats().written == 0


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path, queue_size=1, post_seconds=0.0)
    release = threading.Event()
    entered = threading.Event()
    real_write = recorder._write_clip

    def slow_write(job):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(10.0)
        real_write(job)

    recorder._write_clip = slow_write  # type: ignore[method-assign]
    stream = _Stream(recorder)
    stream.run(1.0)
    started = time.monotonic()
    for n in range(4):
        recorder.event_started("press", f"e{n}", stream.time)
        stream.run(0.3)
        recorder.event_ended("press", f"e{n}", stream.time, None)
        stream.run(0.1)
        if n == 0:
            entered.wait(5.0)  # the writer holds e0; e1 fills the queue; e2, e3 are dropped
    assert time.monotonic() - started < 5.0  # the inference side never waited on the writer
    assert recorder.stats().dropped == 2
    release.set()
    recorder.close()
    stats = recorder.stats()
    assert stats.written == 2
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == ["e0.wav", "e1.wav"]


def _make_clip(directory: Path, event_id: str, size: int, age_days: float) -> None:
    mtime = time.time() - age_days * 86_400
    for ext in ("wav", "png"):
        path = directory / f"{event_id}.{ext}"
        path.write_bytes(b"x" * size)
        os.utime(path, (mtime, mtime))


def test_retention_deletes_old_then_oldest_over_size(tmp_path: Path) -> None:
    mb = 1024 * 1024
    _make_clip(tmp_path, "ancient", 1000, age_days=30)
    _make_clip(tmp_path, "old", mb // 2, age_days=3)
    _make_clip(tmp_path, "mid", mb // 2, age_days=2)
    _make_clip(tmp_path, "new", mb // 2, age_days=1)
    (tmp_path / "notes.txt").write_text("not a clip: never touched")
    old_other = tmp_path / "archive.mp3"
    old_other.write_bytes(b"y")
    os.utime(old_other, (0, 0))
    # 3 MB of clips within 7 days against a 2.2 MB budget: the oldest one goes.
    recorder = _recorder(tmp_path, max_total_mb=2.2, max_age_days=7.0)
    _wait_for(lambda: recorder.stats().deleted >= 4)
    recorder.close()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["archive.mp3", "mid.png", "mid.wav", "new.png", "new.wav", "notes.txt"]


def test_retention_runs_after_each_clip(tmp_path: Path) -> None:
    _make_clip(tmp_path, "older", 400_000, age_days=1)
    recorder = _recorder(tmp_path, max_total_mb=0.5, post_seconds=0.0)
    stream = _Stream(recorder)
    stream.run(3.0)
    recorder.event_started("press", "fresh", stream.time)
    stream.run(1.0)
    recorder.event_ended("press", "fresh", stream.time, None)
    stream.run(0.1)
    _wait_for(lambda: not (tmp_path / "older.wav").exists())
    recorder.close()
    assert (tmp_path / "fresh.wav").exists()


def _decode_png(data: bytes) -> np.ndarray:
    """Minimal decoder for what encode_png writes (filter 0, 8-bit RGB), to check pixels."""
    width, height = png_size(data)
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, -1)
    assert np.all(raw[:, 0] == 0)
    return raw[:, 1:].reshape(height, width, 3)


def test_png_next_to_the_clip_is_a_valid_png_with_the_region_marked(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path, post_seconds=0.5)
    stream = _Stream(recorder)
    stream.run(4.0)
    recorder.event_started("press", "e1", stream.time)
    stream.run(2.0)
    region = Explanation(
        summary="+9 dB at 2.8-3.6 kHz, steady",
        band_hz=(2800.0, 3600.0),
        start_s=0.5,
        end_s=1.5,
        excess_db=9.0,
        impulsive=False,
        rate_hz=None,
    )
    recorder.event_ended("press", "e1", stream.time, region)
    stream.run(1.0)
    png = tmp_path / "e1.png"
    _wait_for(png.exists)
    recorder.close()
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = png_size(data)
    assert height == 256
    assert 100 < width <= 1600
    pixels = _decode_png(data)
    cyan = np.all(pixels == (0, 255, 255), axis=2)
    rows, cols = np.nonzero(cyan)
    # The region's box: 2.8-3.6 kHz (rows from the top: 256 - f * 512 / 16000) and
    # 2.5-3.5 s into the clip (2 s pre-roll), at 8 ms columns.
    assert rows.min() == pytest.approx(256 - 3600 * 512 / SR, abs=2)
    assert rows.max() == pytest.approx(256 - 2800 * 512 / SR, abs=2)
    assert cols.min() == pytest.approx(2.5 * SR / 128, abs=2)
    assert cols.max() == pytest.approx(3.5 * SR / 128, abs=2)


def test_encode_png_header_and_errors() -> None:
    grey = np.zeros((3, 5), dtype=np.uint8)
    data = encode_png(grey)
    assert data.startswith(PNG_SIGNATURE)
    assert png_size(data) == (5, 3)
    assert data[24:26] == bytes([8, 0])  # 8-bit greyscale
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(b"GIF89a")
    image = spectrogram_image(np.zeros(SR), marks=Marks(event=(0.1, 0.5)))
    assert image.shape == (256, (SR - 512) // 128 + 1, 3)


def test_flac_when_soundfile_writes_it(tmp_path: Path) -> None:
    soundfile = pytest.importorskip("soundfile", reason="FLAC clips need soundfile")
    if "FLAC" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no FLAC")
    recorder = _recorder(tmp_path, audio_format=None, post_seconds=0.0)
    assert recorder.extension == "flac"
    stream = _Stream(recorder)
    stream.run(3.0)
    recorder.event_started("press", "e1", stream.time)
    stream.run(1.0)
    path = recorder.event_ended("press", "e1", stream.time, None)
    stream.run(0.1)
    assert path == tmp_path / "e1.flac"
    _wait_for(path.exists)
    recorder.close()
    data, rate = soundfile.read(str(path), dtype="float32")
    assert rate == SR
    assert data.size == 3 * SR


def test_daemon_flow_explains_from_the_pre_roll_and_marks_the_picture(tmp_path: Path) -> None:
    """What the daemon will do at an event's end: explain the event's audio against the
    pre-roll (no profile in the bundle), then end the clip with the explained region."""
    from edge_asd.detection.explain import band_profile, explain
    from edge_asd_dev.synth import machine_sound

    recorder = _recorder(tmp_path, pre_seconds=5.0, post_seconds=0.0)
    sound = machine_sound(12.0, rng=np.random.default_rng(5))
    t = np.arange(sound.size) / SR
    sound[8 * SR :] += 0.03 * np.sin(2 * np.pi * 3000.0 * t[8 * SR :])
    clock = 1_700_000_000.0
    for n in range(0, 8 * SR, BLOCK):
        recorder.push("press", sound[n : n + BLOCK], clock + (n + BLOCK) / SR)
    recorder.event_started("press", "e1", clock + 8.0)
    for n in range(8 * SR, sound.size, BLOCK):
        recorder.push("press", sound[n : n + BLOCK], clock + (n + BLOCK) / SR)
    audio = recorder.event_audio("press")
    assert audio is not None and audio.pre.size == 5 * SR and audio.event.size == 4 * SR
    explanation = explain(audio.event, band_profile(audio.pre))
    assert explanation.band_hz[0] <= 3000.0 <= explanation.band_hz[1]
    path = recorder.event_ended("press", "e1", clock + 12.0, explanation)
    assert path == tmp_path / "e1.wav"
    _wait_for((tmp_path / "e1.png").exists)
    recorder.close()
    pixels = _decode_png((tmp_path / "e1.png").read_bytes())
    rows, cols = np.nonzero(np.all(pixels == (0, 255, 255), axis=2))
    assert rows.min() <= 256 - 3000 * 512 / SR <= rows.max()
    assert cols.min() == pytest.approx(5.0 * SR / 128, abs=2)  # the event starts after 5 s
