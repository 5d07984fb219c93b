"""Record a fixed stretch of audio from a device, for calibration (`calibrate --record`)."""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm import tqdm

from edge_asd.audio.sources import AudioDeviceError, SoundDeviceSource
from edge_asd.constants import SAMPLE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

READ_TIMEOUT_SECONDS = 0.5
STALL_SECONDS = 5.0
"""A device that delivers nothing for this long is reported instead of waited on forever."""


class RecordingError(Exception):
    """The device could not be opened or stopped delivering audio; the message names it."""


def record(device: str | int, *, channel: int, seconds: float, progress: bool = True) -> np.ndarray:
    """Mono float32 16 kHz samples of `seconds` length from `device`'s `channel`."""
    wanted = round(seconds * SAMPLE_RATE_HZ)
    parts: list[np.ndarray] = []
    have = 0
    try:
        source = SoundDeviceSource(device, channels=(channel,))
        source.start()
    except AudioDeviceError as exc:
        raise RecordingError(str(exc)) from None
    last_data = time.monotonic()
    bar = tqdm(
        total=round(seconds, 1),
        unit="s",
        desc=f"recording {device}",
        disable=None if progress else True,  # None: shown on a terminal only, not in logs
    )
    try:
        while have < wanted:
            try:
                block = source.read(READ_TIMEOUT_SECONDS)
            except AudioDeviceError as exc:
                raise RecordingError(str(exc)) from None
            if block is None or len(block) == 0:
                if time.monotonic() - last_data > STALL_SECONDS:
                    raise RecordingError(
                        f"device {device!r} delivered no audio for {STALL_SECONDS:g} s "
                        f"after {have / SAMPLE_RATE_HZ:.1f} s of recording"
                    )
                continue
            last_data = time.monotonic()
            mono = block[:, 0]
            parts.append(mono.copy())
            have += len(mono)
            bar.update(round(len(mono) / SAMPLE_RATE_HZ, 3))
    finally:
        bar.close()
        source.stop()
    return np.concatenate(parts)[:wanted].astype(np.float32)
