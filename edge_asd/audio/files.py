"""Audio files in and out through libsndfile (`soundfile`): WAV (any PCM width, float, the usual
compressed WAV codecs), FLAC and the other formats libsndfile reads; float32 at the pipeline
rate out. Every failure on a bad file is an `AudioFileError` that names the file.

`soundfile` is imported when a file is first opened, not with this module: the daemon imports
this module for its `wav:` test device but, listening to a microphone, never reads a file, and
its memory target (docs/benchmarks.md) has no room for libraries it does not use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from edge_asd.audio.resampler import resample
from edge_asd.constants import SAMPLE_RATE_HZ

if TYPE_CHECKING:
    import soundfile

_LOGGER = logging.getLogger(__name__)

PCM16_MAX: Final = 32_767

READ_CHUNK_SAMPLES: Final = 1 << 20
"""Samples (frames x channels) decoded per step. Reading in steps bounds each allocation by what
the file really holds, not by the frame count its header claims (which a damaged file can set
to anything)."""

MAX_RATE_RATIO_TERM: Final = 20_000
"""Largest numerator or denominator of the reduced ratio target rate / file rate. The polyphase
filter has about 100 taps per unit of it, so this bounds the filter at about 2 million taps
(16 MB): rates such as 44 100, 48 000, 22 050, 8 000 or 96 000 Hz have terms under 500, while a
damaged header's rate (say 1 Hz or 1 073 741 824 Hz) would ask for gigabytes."""

MAX_UPSAMPLING: Final = 16
"""Largest target rate / file rate (1 kHz files for the 16 kHz pipeline). Upsampling multiplies
the samples held in memory; a damaged header's rate of a few Hz would multiply them by
thousands."""

WRITE_FORMATS: Final = {".flac": "FLAC"}
"""File suffix -> libsndfile container for `write_wav`; anything else is written as WAV."""


class AudioFileError(Exception):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _check_path(path: Path) -> None:
    if not path.exists():
        raise AudioFileError(path, "file does not exist")
    if path.is_dir():
        raise AudioFileError(path, "is a directory, not an audio file")
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as exc:
        raise AudioFileError(path, f"cannot read ({exc.strerror or exc})") from exc
    if size == 0:
        raise AudioFileError(path, "file is empty (0 bytes)")


def _open(path: Path) -> soundfile.SoundFile:
    """The file opened by libsndfile; header problems become AudioFileError."""
    _check_path(path)
    import soundfile as sf

    try:
        handle = sf.SoundFile(path)
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise AudioFileError(path, f"not a readable audio file ({_reason(exc)})") from exc
    try:
        _check_header(path, handle.samplerate, handle.channels)
    except AudioFileError:
        handle.close()
        raise
    return handle


def _reason(exc: Exception) -> str:
    # libsndfile's messages start with "Error opening '<path>': "; the path is already named.
    text = str(exc)
    _, sep, rest = text.partition("': ")
    return rest if sep and rest else text


def _check_header(path: Path, rate: int, channels: int) -> None:
    if rate <= 0:
        raise AudioFileError(path, f"invalid sample rate {rate} Hz in header")
    if channels <= 0:
        raise AudioFileError(path, f"invalid channel count {channels} in header")


def _check_rate_convertible(path: Path, rate: int, target_rate: int) -> None:
    if rate * MAX_UPSAMPLING < target_rate:
        raise AudioFileError(
            path,
            f"unsupported sample rate {rate} Hz: below {target_rate / MAX_UPSAMPLING:g} Hz "
            f"(1/{MAX_UPSAMPLING} of the {target_rate} Hz it would be converted to)",
        )
    common = gcd(rate, target_rate)
    term = max(rate // common, target_rate // common)
    if term > MAX_RATE_RATIO_TERM:
        raise AudioFileError(
            path,
            f"unsupported sample rate {rate} Hz: converting it to {target_rate} Hz needs a "
            f"{target_rate // common}/{rate // common} rational filter (terms up to "
            f"{MAX_RATE_RATIO_TERM} are supported)",
        )


def _decode(path: Path, handle: soundfile.SoundFile) -> npt.NDArray[np.float32]:
    """All frames [frames, channels] as float32, PCM scaled to [-1, 1) by libsndfile."""
    import soundfile as sf

    chunk_frames = max(1, READ_CHUNK_SAMPLES // handle.channels)
    parts: list[npt.NDArray[np.float32]] = []
    try:
        while True:
            part = handle.read(chunk_frames, dtype="float32", always_2d=True)
            if part.shape[0] == 0:
                break
            parts.append(part)
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise AudioFileError(path, f"cannot decode audio data ({_reason(exc)})") from exc
    except MemoryError as exc:
        raise AudioFileError(path, "audio data does not fit in memory") from exc
    for line in handle.extra_info.splitlines():
        # libsndfile notes a data chunk that runs past the end of the file, and reads what is
        # there: say so, since the recording was probably cut off.
        if line.startswith("data") and "should be" in line:
            _LOGGER.warning(
                "%s: truncated? header and file size disagree (%s); read the %d frames present",
                path,
                line.strip(),
                sum(p.shape[0] for p in parts),
            )
    if not parts:
        return np.zeros((0, handle.channels), dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def read_wav_info(path: Path | str) -> tuple[int, int, int]:
    """(sample rate in Hz, channels, frames) of an audio file from its header, without decoding."""
    audio_path = Path(path)
    with _open(audio_path) as handle:
        return int(handle.samplerate), int(handle.channels), int(handle.frames)


def _check_samples(path: Path, floats: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Reject NaN / infinity, clip float files that exceed full scale (PCM never does)."""
    if not np.all(np.isfinite(floats)):
        bad = int(np.count_nonzero(~np.isfinite(floats)))
        raise AudioFileError(path, f"contains {bad} NaN or infinite samples")
    peak = float(np.max(np.abs(floats))) if floats.size else 0.0
    if peak > 1.0:
        _LOGGER.warning("%s: float samples reach %.3f, clipping to [-1, 1]", path, peak)
        np.clip(floats, -1.0, 1.0, out=floats)
    return floats


def read_wav_channels(
    path: Path | str, *, target_rate: int = SAMPLE_RATE_HZ, channels: Sequence[int] = (0,)
) -> npt.NDArray[np.float32]:
    """Selected channels of an audio file as float32 [frames, len(channels)] at `target_rate` Hz.

    WAV, FLAC and whatever else libsndfile reads; the format comes from the file's content,
    not its name.
    """
    audio_path = Path(path)
    with _open(audio_path) as handle:
        rate = int(handle.samplerate)
        n_channels = int(handle.channels)
        if not channels:
            raise AudioFileError(audio_path, "no channel selected")
        for channel in channels:
            if not 0 <= channel < n_channels:
                raise AudioFileError(
                    audio_path,
                    f"channel {channel} out of range, file has {n_channels} channel(s)",
                )
        if rate != target_rate:
            _check_rate_convertible(audio_path, rate, target_rate)
        frames = _decode(audio_path, handle)
    if frames.shape[0] == 0:
        raise AudioFileError(audio_path, "contains no samples")
    selected = list(channels)
    if selected == list(range(n_channels)):
        picked = frames
    else:
        picked = np.ascontiguousarray(frames[:, selected])
    del frames
    checked = _check_samples(audio_path, picked)
    if rate == target_rate:
        return checked
    return np.clip(resample(checked, rate, target_rate), -1.0, 1.0)


def read_wav(
    path: Path | str, *, target_rate: int = SAMPLE_RATE_HZ, channel: int = 0
) -> npt.NDArray[np.float32]:
    """One channel of an audio file (WAV, FLAC, ...) as float32 mono [n] in [-1, 1], resampled
    to `target_rate` Hz."""
    return read_wav_channels(path, target_rate=target_rate, channels=(channel,))[:, 0]


read_audio = read_wav
"""`read_wav` under a name that says it is not only WAV."""


def write_wav(path: Path | str, samples: npt.ArrayLike, rate: int = SAMPLE_RATE_HZ) -> None:
    """Write float samples ([n] or [n, channels], [-1, 1]) as 16-bit PCM at `rate` Hz, clipped.

    The container is FLAC for a `.flac` path, WAV otherwise.
    """
    out = Path(path)
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim not in (1, 2):
        raise ValueError(
            f"write_wav {path}: samples must be [n] or [n, channels], got {data.shape}"
        )
    if not np.all(np.isfinite(data)):
        raise ValueError(f"write_wav {path}: samples contain NaN or infinite values")
    pcm = np.round(np.clip(data, -1.0, 1.0) * PCM16_MAX).astype(np.int16)
    import soundfile as sf

    container = WRITE_FORMATS.get(out.suffix.lower(), "WAV")
    try:
        sf.write(out, pcm, int(rate), subtype="PCM_16", format=container)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise OSError(f"write_wav {path}: cannot write ({_reason(exc)})") from exc
