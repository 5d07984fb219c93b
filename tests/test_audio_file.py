"""Tests for edge_asd.audio.files: formats, rates, errors that name the file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from edge_asd.audio.files import (
    AudioFileError,
    read_wav,
    read_wav_channels,
    read_wav_info,
    write_wav,
)
from edge_asd.constants import SAMPLE_RATE_HZ

LEVELS = np.array([0.0, 0.5, -0.5, 0.25, -1.0, 0.999], dtype=np.float64)
PCM24_MAX = (1 << 23) - 1


def _write_pcm24(path: Path, samples: np.ndarray, rate: int) -> None:
    ints = np.round(samples * PCM24_MAX).astype(np.int64)
    data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 3, 3, 24)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize(
    ("dtype", "encode", "tolerance"),
    [
        (np.uint8, lambda x: np.round(x * 127 + 128).astype(np.uint8), 1 / 64),
        (np.int16, lambda x: np.round(x * 32767).astype(np.int16), 1e-4),
        (np.int32, lambda x: np.round(x * (2**31 - 1)).astype(np.int32), 1e-6),
        (np.float32, lambda x: x.astype(np.float32), 1e-7),
        (np.float64, lambda x: x.astype(np.float64), 1e-7),
    ],
)
def test_formats_scale_to_unit_range(tmp_path: Path, dtype: type, encode, tolerance: float) -> None:
    path = tmp_path / f"{np.dtype(dtype).name}.wav"
    wavfile.write(path, SAMPLE_RATE_HZ, encode(LEVELS))
    x = read_wav(path)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, LEVELS, atol=tolerance)


def test_pcm24(tmp_path: Path) -> None:
    path = tmp_path / "pcm24.wav"
    _write_pcm24(path, LEVELS, SAMPLE_RATE_HZ)
    np.testing.assert_allclose(read_wav(path), LEVELS, atol=1e-6)
    assert read_wav_info(path) == (SAMPLE_RATE_HZ, 1, LEVELS.size)


def test_resamples_to_target_rate_aligned(tmp_path: Path) -> None:
    rate = 48_000
    t = np.arange(rate) / rate
    path = tmp_path / "tone48k.wav"
    wavfile.write(path, rate, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    x = read_wav(path)
    assert x.shape == (SAMPLE_RATE_HZ,)
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ)
    np.testing.assert_allclose(x[200:-200], ref[200:-200], atol=1e-3)
    assert read_wav(path, target_rate=rate).shape == (rate,)


def test_channel_selection(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    stereo = np.stack([np.full(100, 0.25), np.full(100, -0.5)], axis=1).astype(np.float32)
    wavfile.write(path, SAMPLE_RATE_HZ, stereo)
    np.testing.assert_allclose(read_wav(path, channel=1), -0.5)
    both = read_wav_channels(path, channels=(1, 0))
    assert both.shape == (100, 2)
    np.testing.assert_allclose(both[:, 1], 0.25)
    assert read_wav_info(path) == (SAMPLE_RATE_HZ, 2, 100)
    with pytest.raises(AudioFileError, match=r"stereo\.wav.*channel 2 out of range.*2 channel"):
        read_wav(path, channel=2)


def test_float_over_full_scale_is_clipped(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    wavfile.write(path, SAMPLE_RATE_HZ, np.array([1.5, -2.0, 0.5], dtype=np.float32))
    np.testing.assert_allclose(read_wav(path), [1.0, -1.0, 0.5])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match=r"nope\.wav: file does not exist"):
        read_wav(tmp_path / "nope.wav")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioFileError, match=r"empty\.wav: file is empty"):
        read_wav(path)


def test_zero_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    wavfile.write(path, SAMPLE_RATE_HZ, np.zeros(0, dtype=np.int16))
    with pytest.raises(AudioFileError, match=r"zero\.wav: contains no samples"):
        read_wav(path)


@pytest.mark.parametrize(
    "content", [b"this is not a wav file at all", b"RIFF\x10\x00\x00\x00WAVEfmt "]
)
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(content)
    with pytest.raises(AudioFileError, match=r"corrupt\.wav: not a readable WAV"):
        read_wav(path)
    with pytest.raises(AudioFileError, match=r"corrupt\.wav"):
        read_wav_info(path)


def test_nan_samples(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    wavfile.write(path, SAMPLE_RATE_HZ, np.array([0.1, np.nan, np.inf], dtype=np.float32))
    with pytest.raises(AudioFileError, match=r"nan\.wav: contains 2 NaN or infinite"):
        read_wav(path)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="is a directory"):
        read_wav(tmp_path)


def test_write_wav_roundtrip_and_clipping(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    write_wav(path, np.array([0.0, 0.5, -0.5, 3.0, -3.0]), SAMPLE_RATE_HZ)
    rate, data = wavfile.read(path)
    assert rate == SAMPLE_RATE_HZ
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data, [0, 16384, -16384, 32767, -32767])
    np.testing.assert_allclose(read_wav(path), [0.0, 0.5, -0.5, 1.0, -1.0], atol=1e-4)


def test_write_wav_rejects_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "bad.wav", np.array([np.nan]), SAMPLE_RATE_HZ)


def test_riff_header_without_fmt_chunk(tmp_path: Path) -> None:
    path = tmp_path / "nofmt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioFileError, match=r"nofmt\.wav"):
        read_wav(path)
