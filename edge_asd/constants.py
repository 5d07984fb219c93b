"""Numbers that several pipeline stages must agree on, with their units."""

from typing import Final

SAMPLE_RATE_HZ: Final = 16_000
"""The encoder contract's sample rate; every source resamples to it."""

DEFAULT_WINDOW_SECONDS: Final = 1.0
DEFAULT_HOP_SECONDS: Final = 0.5

# Exit codes, chosen for systemd (`Restart=on-failure`, `RestartPreventExitStatus=2`): every
# non-zero code but EXIT_USAGE makes systemd restart the daemon.
EXIT_OK: Final = 0
"""Stopped on request (SIGTERM, SIGINT): systemd does not restart it."""
EXIT_FAILURE: Final = 1
"""A runtime failure: a worker thread (capture, inference, network) crashed or hung, or a
command failed. systemd restarts the daemon."""
EXIT_USAGE: Final = 2
"""Usage and configuration errors, like argparse: a configuration that can never work.
systemd does not restart (RestartPreventExitStatus=2); restarting would bury the message."""
EXIT_TEMPFAIL: Final = 75
"""A start-up failure that may go away by itself (EX_TEMPFAIL of sysexits.h): an I/O error
reading the model or a bundle. systemd restarts the daemon until it works. (An outbox that
cannot be written, /var full or still read-only at boot, is not one: the daemon starts with the
outbox degraded and retries it.)"""


def seconds_to_samples(seconds: float, rate_hz: int = SAMPLE_RATE_HZ) -> int:
    """Whole samples in `seconds` at `rate_hz`, rounded to nearest."""
    return round(seconds * rate_hz)
