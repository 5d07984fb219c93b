"""Tests for edge_asd.audio.files: formats (WAV, FLAC), rates, errors that name the file, and a
fuzz test: whatever the bytes, reading gives audio or an AudioFileError."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.io import wavfile

from edge_asd.audio.files import (
    AudioFileError,
    read_audio,
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
    with pytest.raises(AudioFileError, match=r"corrupt\.wav: not a readable audio file"):
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


def test_flac_round_trip(tmp_path: Path) -> None:
    import soundfile

    rng = np.random.default_rng(0)
    stereo = np.clip(rng.normal(0.0, 0.3, size=(4_000, 2)), -1.0, 1.0)
    flac = tmp_path / "take.flac"
    wav = tmp_path / "take.wav"
    write_wav(flac, stereo, 44_100)
    write_wav(wav, stereo, 44_100)
    info = soundfile.info(str(flac))
    assert (info.format, info.subtype) == ("FLAC", "PCM_16")
    assert (info.samplerate, info.channels) == (44_100, 2)
    assert flac.read_bytes()[:4] == b"fLaC"
    assert read_wav_info(flac) == (44_100, 2, 4_000)
    # Lossless: the same 16-bit samples as the WAV, at the file rate and resampled alike.
    np.testing.assert_array_equal(
        read_wav_channels(flac, target_rate=44_100, channels=(0, 1)),
        read_wav_channels(wav, target_rate=44_100, channels=(0, 1)),
    )
    np.testing.assert_allclose(
        read_wav_channels(flac, target_rate=44_100, channels=(0, 1)), stereo, atol=1e-4
    )
    np.testing.assert_array_equal(read_wav(flac, channel=1), read_wav(wav, channel=1))
    assert read_audio(flac).shape == (round(4_000 * SAMPLE_RATE_HZ / 44_100 + 0.5),)
    # The format comes from the content: a FLAC file named .wav still reads.
    renamed = tmp_path / "really_flac.wav"
    renamed.write_bytes(flac.read_bytes())
    np.testing.assert_array_equal(read_wav(renamed), read_wav(flac))


def test_flac_24_bit(tmp_path: Path) -> None:
    import soundfile

    path = tmp_path / "pcm24.flac"
    soundfile.write(str(path), np.round(LEVELS * PCM24_MAX).astype(np.int32) << 8, 16_000, "PCM_24")
    np.testing.assert_allclose(read_wav(path), LEVELS, atol=1e-6)


def test_truncated_file_reads_what_is_there(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cut.wav"
    write_wav(path, np.full(1_000, 0.5), SAMPLE_RATE_HZ)
    path.write_bytes(path.read_bytes()[: 44 + 2 * 300])
    with caplog.at_level("WARNING", logger="edge_asd.audio.files"):
        x = read_wav(path)
    assert x.shape == (300,)
    np.testing.assert_allclose(x, 0.5, atol=1e-4)
    assert "cut.wav: truncated?" in caplog.text


@pytest.mark.parametrize(
    ("rate", "reason"),
    [(1, "below 1000 Hz"), (999, "below 1000 Hz"), (1_073_741_824, "rational filter")],
)
def test_unconvertible_sample_rates_are_refused(tmp_path: Path, rate: int, reason: str) -> None:
    path = tmp_path / "odd_rate.wav"
    wavfile.write(path, rate, np.zeros(100, dtype=np.int16))
    with pytest.raises(AudioFileError, match=rf"odd_rate\.wav: unsupported sample rate.*{reason}"):
        read_wav(path)
    # At its own rate it needs no conversion, so it reads.
    assert read_wav(path, target_rate=rate).shape == (100,)


def test_write_wav_to_an_unwritable_place(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"write_wav .*missing.*cannot write"):
        write_wav(tmp_path / "missing" / "x.wav", np.zeros(10), SAMPLE_RATE_HZ)


# ---------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=250, deadline=None, database=None)
"""No example database: the test stays deterministic per seed and writes nothing to the tree."""


def _seed_files() -> dict[str, bytes]:
    """Small valid files of each kind the readers meet, to mutate and cut."""
    rng = np.random.default_rng(7)
    mono = rng.uniform(-0.9, 0.9, size=400)
    stereo = np.stack([mono, -mono], axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_wav(root / "pcm16.wav", mono, SAMPLE_RATE_HZ)
        write_wav(root / "stereo44k.wav", stereo, 44_100)
        write_wav(root / "flac.flac", stereo, 48_000)
        wavfile.write(root / "float32.wav", 22_050, mono.astype(np.float32))
        wavfile.write(root / "uint8.wav", 8_000, np.round(mono * 127 + 128).astype(np.uint8))
        _write_pcm24(root / "pcm24.wav", mono, SAMPLE_RATE_HZ)
        return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


SEEDS = _seed_files()
HEADER_BYTES = 96
"""Mutations land in the first bytes, where the headers (RIFF chunks, FLAC STREAMINFO) are."""


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _read_or_refuse(path: Path, content: bytes) -> None:
    """Reading gives finite float32 audio in [-1, 1], or an AudioFileError naming the file."""
    path.write_bytes(content)
    try:
        rate, n_channels, _ = read_wav_info(path)
    except AudioFileError as exc:
        assert exc.path == path and path.name in str(exc)
    else:
        assert rate > 0 and n_channels > 0
    try:
        x = read_wav(path)
    except AudioFileError as exc:
        assert exc.path == path and path.name in str(exc)
        return
    assert x.dtype == np.float32 and x.ndim == 1 and x.size > 0
    assert np.all(np.isfinite(x)) and float(np.max(np.abs(x))) <= 1.0


@FUZZ
@given(
    content=st.one_of(
        st.binary(min_size=1, max_size=600),
        st.binary(max_size=600).map(lambda b: b"RIFF" + b[:4] + b"WAVE" + b[4:]),
        st.binary(max_size=600).map(lambda b: b"RIFF\xff\xff\xff\xffWAVEfmt " + b),
        st.binary(max_size=600).map(lambda b: b"fLaC" + b),
    )
)
def test_fuzz_random_bytes(fuzz_dir: Path, content: bytes) -> None:
    _read_or_refuse(fuzz_dir / "random.wav", content)


@FUZZ
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(
        st.tuples(st.integers(0, HEADER_BYTES - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.one_of(st.none(), st.integers(min_value=1, max_value=2_000)),
)
def test_fuzz_mutated_headers(
    fuzz_dir: Path, seed: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    content = bytearray(SEEDS[seed])
    for position, value in edits:
        content[position % len(content)] = value
    _read_or_refuse(fuzz_dir / f"mutated_{seed}", bytes(content[:cut]))


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), data=st.data())
def test_fuzz_truncations(fuzz_dir: Path, seed: str, data: st.DataObject) -> None:
    content = SEEDS[seed]
    cut = data.draw(st.integers(min_value=1, max_value=len(content) - 1), label="cut")
    _read_or_refuse(fuzz_dir / f"cut_{seed}", content[:cut])
