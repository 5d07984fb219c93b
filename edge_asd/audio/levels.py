"""Signal levels in dB relative to full scale."""

from __future__ import annotations

from typing import Final

import numpy as np

DBFS_FLOOR: Final = -120.0
"""Reported for digital silence instead of -inf (payloads are JSON, which has no infinity)."""


def window_dbfs(window: np.ndarray) -> float:
    """RMS level of a window in dB relative to full scale (RMS 1.0), floored at DBFS_FLOOR."""
    rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
    if rms <= 0.0:
        return DBFS_FLOOR
    return max(DBFS_FLOOR, 20.0 * float(np.log10(rms)))
