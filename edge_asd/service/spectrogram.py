"""Spectrogram pictures of event clips, as PNG, with numpy, zlib and struct only.

A person looking at an alarm wants to *see* the fault: a line at 3 kHz, a row of dots at
12 per second. matplotlib would add tens of megabytes and a second of start-up to a gateway
for one picture per event; a PNG is a few chunks of zlib-compressed RGB rows, so it is written
here directly (`encode_png`).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.explain import frame_power

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE_GRAY: Final = 0
_COLOR_TYPE_RGB: Final = 2
_BIT_DEPTH: Final = 8
_ZLIB_LEVEL: Final = 6

FFT_SAMPLES: Final = 512
"""256 frequency rows of 31 Hz at 16 kHz: fine enough to see a tone, small enough to view."""
MIN_HOP_SAMPLES: Final = 128
"""8 ms columns at most: a 12-per-second impact train shows as separate dots."""
MAX_WIDTH_PX: Final = 1600
"""Long clips get coarser columns instead of wider pictures."""
DYNAMIC_RANGE_DB: Final = 80.0
TOP_PERCENTILE: Final = 99.7
"""The colour scale's top: a percentile, so one click does not darken the whole picture."""

# Anchors of a dark-to-bright colour map (black, purple, red, orange, pale yellow): perceptually
# ordered, so louder is always brighter, and readable when printed in grey.
_COLORMAP_ANCHORS: Final = np.array(
    [
        [0, 0, 4],
        [59, 15, 112],
        [140, 41, 129],
        [222, 73, 104],
        [254, 159, 109],
        [252, 253, 191],
    ],
    dtype=np.float64,
)
REGION_COLOR: Final = (0, 255, 255)
"""Cyan: stands out from every colour of the map."""
EVENT_COLOR: Final = (255, 255, 255)
_LINE_PX: Final = 2
_DASH_PX: Final = 6


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(image: npt.ArrayLike) -> bytes:
    """PNG bytes of an 8-bit image: [H, W] grey or [H, W, 3] RGB (uint8, row 0 at the top)."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise ValueError(f"encode_png: expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 2:
        color_type = _COLOR_TYPE_GRAY
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        color_type = _COLOR_TYPE_RGB
    else:
        raise ValueError(f"encode_png: expected [H, W] or [H, W, 3], got {pixels.shape}")
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if height == 0 or width == 0:
        raise ValueError("encode_png: the image is empty")
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    # Each scanline starts with its filter type; 0 (none) keeps the encoder trivial, and zlib
    # still compresses the smooth background of a spectrogram well.
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, _BIT_DEPTH, color_type, 0, 0, 0)
    return b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, _ZLIB_LEVEL)),
            _chunk(b"IEND", b""),
        ]
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; ValueError if `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def colorize(levels: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """[H, W] values in [0, 1] to [H, W, 3] RGB through the colour map."""
    v = np.clip(np.asarray(levels, dtype=np.float64), 0.0, 1.0)
    position = v * (len(_COLORMAP_ANCHORS) - 1)
    low = np.minimum(np.floor(position).astype(np.int64), len(_COLORMAP_ANCHORS) - 2)
    frac = (position - low)[..., None]
    rgb = _COLORMAP_ANCHORS[low] * (1.0 - frac) + _COLORMAP_ANCHORS[low + 1] * frac
    return np.asarray(np.round(rgb), dtype=np.uint8)


@dataclass(frozen=True)
class Marks:
    """What to draw on a clip's spectrogram; times are seconds from the clip's start."""

    region: tuple[float, float, float, float] | None = None
    """(start_s, end_s, low_hz, high_hz): the explained region, outlined."""
    event: tuple[float, float] | None = None
    """(start_s, end_s) of the event inside the clip (pre- and post-roll around it), dashed."""


def spectrogram_image(
    samples: npt.ArrayLike, *, sample_rate: int = SAMPLE_RATE_HZ, marks: Marks | None = None
) -> npt.NDArray[np.uint8]:
    """[H, W, 3] RGB spectrogram, low frequencies at the bottom, with `marks` drawn on it."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"spectrogram: expected non-empty 1-D samples, got shape {x.shape}")
    hop = max(MIN_HOP_SAMPLES, math.ceil(x.size / MAX_WIDTH_PX))
    power = frame_power(x, FFT_SAMPLES, hop)[:, 1:]  # drop DC: 256 rows
    db = 10.0 * np.log10(power + 1e-20)
    top = float(np.percentile(db, TOP_PERCENTILE))
    levels = (db - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB
    image = colorize(levels.T[::-1])  # rows: frequency, highest first
    if marks is not None:
        _draw_marks(image, marks, hop=hop, sample_rate=sample_rate)
    return image


def _column(seconds: float, hop: int, sample_rate: int, width: int) -> int:
    return int(np.clip(round(seconds * sample_rate / hop), 0, width - 1))


def _row(hz: float, sample_rate: int, height: int) -> int:
    # Row 0 is the highest frequency; bin k (1-based after dropping DC) is at k * rate / FFT.
    bin_index = hz * FFT_SAMPLES / sample_rate
    return int(np.clip(round(height - bin_index), 0, height - 1))


def _draw_marks(image: npt.NDArray[np.uint8], marks: Marks, *, hop: int, sample_rate: int) -> None:
    height, width = image.shape[:2]
    if marks.event is not None:
        for seconds in marks.event:
            col = _column(seconds, hop, sample_rate, width)
            dashes = (np.arange(height) // _DASH_PX) % 2 == 0
            image[dashes, col : col + 1] = EVENT_COLOR
    if marks.region is not None:
        start_s, end_s, low_hz, high_hz = marks.region
        left = _column(start_s, hop, sample_rate, width)
        right = max(left, _column(end_s, hop, sample_rate, width))
        top = _row(high_hz, sample_rate, height)
        bottom = max(top, _row(low_hz, sample_rate, height))
        t = _LINE_PX
        image[top : top + t, left : right + 1] = REGION_COLOR
        image[max(bottom - t + 1, 0) : bottom + 1, left : right + 1] = REGION_COLOR
        image[top : bottom + 1, left : left + t] = REGION_COLOR
        image[top : bottom + 1, max(right - t + 1, 0) : right + 1] = REGION_COLOR


def write_spectrogram_png(
    path: str | Path,
    samples: npt.ArrayLike,
    *,
    sample_rate: int = SAMPLE_RATE_HZ,
    marks: Marks | None = None,
) -> None:
    """Write the marked spectrogram of `samples` to `path` (OSError as the file system says)."""
    data = encode_png(spectrogram_image(samples, sample_rate=sample_rate, marks=marks))
    Path(path).write_bytes(data)
