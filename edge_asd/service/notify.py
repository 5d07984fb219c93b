"""systemd integration without a systemd dependency: sd_notify datagrams and the watchdog.

The notify protocol is one AF_UNIX datagram of newline-separated ``KEY=VALUE`` lines sent to the
socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract socket when it starts with ``@``).
Everything here is a no-op outside systemd, and nothing raises into the caller: losing a status
line must never take the daemon down.

Hand-written rather than taken from `systemd-python` / `sdnotify` on purpose: the protocol is a
few lines of `socket`, and the daemon has a memory target (<= 100 MB peak RSS, docs/benchmarks.md)
that leaves no room for a dependency (and, for systemd-python, libsystemd) it does not need.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Final

_LOGGER = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV: Final = "WATCHDOG_USEC"
WATCHDOG_PID_ENV: Final = "WATCHDOG_PID"

READY_MESSAGE: Final = "READY=1"
WATCHDOG_MESSAGE: Final = "WATCHDOG=1"
STOPPING_MESSAGE: Final = "STOPPING=1"
STATUS_PREFIX: Final = "STATUS="

MICROSECONDS_PER_SECOND: Final = 1_000_000
WATCHDOG_PING_FRACTION: Final = 0.5
"""sd_watchdog_enabled(3) recommends pinging at half the interval, so one late ping is harmless."""

STATUS_MAX_CHARS: Final = 512
"""`systemctl status` shows one line; a runaway status string should not become a huge datagram."""

NOTIFY_SEND_TIMEOUT_SECONDS: Final = 1.0
"""A datagram send blocks while the manager's queue is full; the audio path must not wait long."""

_ABSTRACT_PREFIX: Final = "@"
_PATH_PREFIX: Final = "/"


def _encode_address(address: str) -> bytes:
    """The sockaddr_un path for `address`: `@name` becomes an abstract socket (leading NUL)."""
    raw = os.fsencode(address)
    if address.startswith(_ABSTRACT_PREFIX):
        return b"\0" + raw[1:]
    return raw


class Notifier:
    """Sends sd_notify messages to the service manager; a no-op when `$NOTIFY_SOCKET` is unset.

    Thread-safe: the inference thread may ping the watchdog while the main thread sets a status.
    Every method returns True when the datagram was sent and never raises.
    """

    def __init__(
        self, address: str | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        """`address` overrides `$NOTIFY_SOCKET` (read from `environ`, default `os.environ`)."""
        env = os.environ if environ is None else environ
        chosen = address if address is not None else env.get(NOTIFY_SOCKET_ENV)
        self._address: bytes | None = None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failure_logged = False
        if not chosen:
            return
        if not chosen.startswith((_ABSTRACT_PREFIX, _PATH_PREFIX)):
            # sd_notify(3) accepts only absolute paths and abstract names (and, in newer
            # systemd, vsock addresses, which a gateway daemon has no use for).
            _LOGGER.debug(
                "%s=%r is neither an absolute path nor @abstract; notifications disabled",
                NOTIFY_SOCKET_ENV,
                chosen,
            )
            return
        self._address = _encode_address(chosen)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured."""
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send one raw notify message (newline-separated `KEY=VALUE` lines)."""
        if self._address is None:
            return False
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._socket.settimeout(NOTIFY_SEND_TIMEOUT_SECONDS)
                sock = self._socket
            # "replace": a device name decoded with surrogateescape must not raise here.
            sock.sendto(message.encode("utf-8", errors="replace"), self._address)
        except OSError as err:
            # Logged once: a missing manager socket would otherwise flood the log every ping.
            if not self._failure_logged:
                self._failure_logged = True
                _LOGGER.debug(
                    "sd_notify to %r failed (further failures not logged): %s",
                    self._address,
                    err,
                )
            return False
        return True

    def ready(self) -> bool:
        """Start-up finished: with Type=notify, systemd considers the service started now."""
        return self.notify(READY_MESSAGE)

    def watchdog(self) -> bool:
        """Keep-alive ping; send it only while audio is really being processed."""
        return self.notify(WATCHDOG_MESSAGE)

    def status(self, text: str) -> bool:
        """One-line free-form status for `systemctl status`; line breaks become spaces."""
        one_line = " ".join(text.splitlines()).strip()[:STATUS_MAX_CHARS]
        return self.notify(STATUS_PREFIX + one_line)

    def stopping(self) -> bool:
        """Shutdown has begun (so systemd does not treat the exit as a crash)."""
        return self.notify(STOPPING_MESSAGE)

    def close(self) -> None:
        """Release the socket; later messages open a new one."""
        with self._lock:
            sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def notify(message: str) -> bool:
    """Send one message to `$NOTIFY_SOCKET` with a throw-away `Notifier`."""
    with Notifier() as notifier:
        return notifier.notify(message)


def watchdog_interval_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of `$WATCHDOG_USEC`), or None when not enabled.

    None also when `$WATCHDOG_PID` is set to another process: the watchdog is then meant for
    a parent, not for us.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get(WATCHDOG_USEC_ENV)
    if not raw_usec:
        return None
    raw_pid = env.get(WATCHDOG_PID_ENV)
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            _LOGGER.debug("%s=%r is not a process id; watchdog ignored", WATCHDOG_PID_ENV, raw_pid)
            return None
        if pid != os.getpid():
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        _LOGGER.debug("%s=%r is not an integer; watchdog ignored", WATCHDOG_USEC_ENV, raw_usec)
        return None
    if usec <= 0:
        return None
    return usec / MICROSECONDS_PER_SECOND * WATCHDOG_PING_FRACTION
