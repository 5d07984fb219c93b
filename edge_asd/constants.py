"""Numbers that several pipeline stages must agree on, with their units."""

from typing import Final

SAMPLE_RATE_HZ: Final = 16_000
"""The encoder contract's sample rate; every source resamples to it."""

DEFAULT_WINDOW_SECONDS: Final = 1.0
DEFAULT_HOP_SECONDS: Final = 0.5

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
"""Usage and configuration errors, like argparse."""


def seconds_to_samples(seconds: float, rate_hz: int = SAMPLE_RATE_HZ) -> int:
    """Whole samples in `seconds` at `rate_hz`, rounded to nearest."""
    return round(seconds * rate_hz)
