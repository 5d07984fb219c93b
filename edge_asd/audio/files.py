"""WAV files in and out: any PCM width or float WAV in, float32 at the pipeline rate out."""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.io import wavfile

from edge_asd.audio.resampler import resample
from edge_asd.constants import SAMPLE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

UINT8_MIDPOINT: Final = 128.0
"""8-bit WAV is unsigned with silence at 128."""

PCM16_FULL_SCALE: Final = 32_768.0
PCM32_FULL_SCALE: Final = 2_147_483_648.0
"""scipy returns 24-bit PCM as int32 in the high bytes, so this full scale serves it too."""

PCM16_MAX: Final = 32_767


class AudioFileError(Exception):
    """A WAV file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _load(path: Path, *, mmap: bool = False) -> tuple[int, np.ndarray]:
    if not path.exists():
        raise AudioFileError(path, "file does not exist")
    if path.is_dir():
        raise AudioFileError(path, "is a directory, not a WAV file")
    if path.stat().st_size == 0:
        raise AudioFileError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rate, data = wavfile.read(path, mmap=mmap)
    except (ValueError, struct.error, EOFError, IndexError, KeyError, TypeError) as exc:
        raise AudioFileError(path, f"not a readable WAV file ({exc})") from exc
    except UnboundLocalError as exc:
        # scipy trips over its own variables on a RIFF/WAVE header without a fmt chunk.
        raise AudioFileError(path, "not a readable WAV file (no fmt chunk)") from exc
    except OSError as exc:
        raise AudioFileError(path, f"cannot read ({exc.strerror or exc})") from exc
    for warning in caught:
        _LOGGER.warning("%s: %s", path, warning.message)
    if rate <= 0:
        raise AudioFileError(path, f"invalid sample rate {rate} Hz in header")
    return int(rate), data


def read_wav_info(path: Path | str) -> tuple[int, int, int]:
    """(sample rate in Hz, channels, frames) of a WAV file, without decoding where possible."""
    wav_path = Path(path)
    try:
        rate, data = _load(wav_path, mmap=True)
    except AudioFileError:
        # mmap cannot map 24-bit containers; a full read tells which error is real.
        rate, data = _load(wav_path)
    channels = 1 if data.ndim == 1 else int(data.shape[1])
    return rate, channels, int(data.shape[0])


def _to_float(path: Path, data: np.ndarray) -> npt.NDArray[np.float32]:
    kind = data.dtype.kind
    if kind == "u" and data.dtype.itemsize == 1:
        return ((data.astype(np.float32) - UINT8_MIDPOINT) / UINT8_MIDPOINT).astype(np.float32)
    if kind == "i" and data.dtype.itemsize == 2:
        return (data.astype(np.float32) / PCM16_FULL_SCALE).astype(np.float32)
    if kind == "i" and data.dtype.itemsize == 4:
        return (data.astype(np.float64) / PCM32_FULL_SCALE).astype(np.float32)
    if kind == "f":
        floats = data.astype(np.float32)
        if not np.all(np.isfinite(floats)):
            bad = int(np.count_nonzero(~np.isfinite(floats)))
            raise AudioFileError(path, f"contains {bad} NaN or infinite samples")
        peak = float(np.max(np.abs(floats))) if floats.size else 0.0
        if peak > 1.0:
            _LOGGER.warning("%s: float samples reach %.3f, clipping to [-1, 1]", path, peak)
            np.clip(floats, -1.0, 1.0, out=floats)
        return floats
    raise AudioFileError(path, f"unsupported sample format {data.dtype}")


def read_wav_channels(
    path: Path | str, *, target_rate: int = SAMPLE_RATE_HZ, channels: Sequence[int] = (0,)
) -> npt.NDArray[np.float32]:
    """Selected channels of a WAV file as float32 [frames, len(channels)] at `target_rate` Hz."""
    wav_path = Path(path)
    rate, data = _load(wav_path)
    n_channels = 1 if data.ndim == 1 else int(data.shape[1])
    if data.shape[0] == 0:
        raise AudioFileError(wav_path, "contains no samples")
    if not channels:
        raise AudioFileError(wav_path, "no channel selected")
    for channel in channels:
        if not 0 <= channel < n_channels:
            raise AudioFileError(
                wav_path, f"channel {channel} out of range, file has {n_channels} channel(s)"
            )
    frames = data.reshape(-1, 1) if data.ndim == 1 else data
    selected = _to_float(wav_path, np.ascontiguousarray(frames[:, list(channels)]))
    if rate == target_rate:
        return selected
    return np.clip(resample(selected, rate, target_rate), -1.0, 1.0)


def read_wav(
    path: Path | str, *, target_rate: int = SAMPLE_RATE_HZ, channel: int = 0
) -> npt.NDArray[np.float32]:
    """One channel of a WAV file as float32 mono [n] in [-1, 1], resampled to `target_rate` Hz."""
    return read_wav_channels(path, target_rate=target_rate, channels=(channel,))[:, 0]


def write_wav(path: Path | str, samples: npt.ArrayLike, rate: int = SAMPLE_RATE_HZ) -> None:
    """Write float samples ([n] or [n, channels], [-1, 1]) as 16-bit PCM at `rate` Hz, clipped."""
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim not in (1, 2):
        raise ValueError(
            f"write_wav {path}: samples must be [n] or [n, channels], got {data.shape}"
        )
    if not np.all(np.isfinite(data)):
        raise ValueError(f"write_wav {path}: samples contain NaN or infinite values")
    pcm = np.round(np.clip(data, -1.0, 1.0) * PCM16_MAX).astype(np.int16)
    wavfile.write(Path(path), int(rate), pcm)
