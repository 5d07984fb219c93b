"""Daemon logging, journald-friendly when systemd runs it (`<N>` priority prefixes per line)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Final, TextIO

JOURNAL_STREAM_ENV: Final = "JOURNAL_STREAM"
PLAIN_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_LOG_FORMAT: Final = "%(name)s: %(message)s"
"""journald stamps every line itself; the `<N>` priority prefix is added per line."""

# syslog(3) priorities, which journald parses from a `<N>` prefix on stdout/stderr lines.
_SYSLOG_CRIT: Final = 2
_SYSLOG_ERR: Final = 3
_SYSLOG_WARNING: Final = 4
_SYSLOG_INFO: Final = 6
_SYSLOG_DEBUG: Final = 7


def _syslog_priority(levelno: int) -> int:
    """The syslog priority journald should record for a Python log level."""
    if levelno >= logging.CRITICAL:
        return _SYSLOG_CRIT
    if levelno >= logging.ERROR:
        return _SYSLOG_ERR
    if levelno >= logging.WARNING:
        return _SYSLOG_WARNING
    if levelno >= logging.INFO:
        return _SYSLOG_INFO
    return _SYSLOG_DEBUG


class JournalFormatter(logging.Formatter):
    """Formats without a timestamp and puts `<N>` on every line (tracebacks included).

    journald turns each stderr line into one entry and reads its priority from the prefix,
    so an unprefixed traceback line would be stored at the default (info) priority.
    """

    def __init__(self) -> None:
        super().__init__(JOURNAL_LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_syslog_priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.split("\n"))


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is connected to journald, per `$JOURNAL_STREAM` (`device:inode`).

    systemd.exec(5) asks programs to compare the variable with the stream's own device and
    inode, because a child whose stderr was redirected inherits the variable. A stream without
    a file descriptor (tests, wrappers) cannot be checked, so the variable is trusted.
    """
    env = os.environ if environ is None else environ
    value = env.get(JOURNAL_STREAM_ENV)
    if not value:
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return True
    try:
        device_text, inode_text = value.split(":", 1)
        info = os.fstat(fd)
        return info.st_dev == int(device_text) and info.st_ino == int(inode_text)
    except (OSError, ValueError):
        return False


_HANDLER_MARK: Final = "_edge_asd_handler"


def configure_logging(
    level: str,
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Set up the root logger for the daemon, journald-friendly when run by systemd.

    `level` is a logging level name (`DEBUG`, `INFO`, ...; any case). Calling it again
    replaces the handler installed before instead of adding a second one.
    """
    level_name = level.strip().upper()
    levelno = logging.getLevelNamesMapping().get(level_name)
    if levelno is None:
        known = ", ".join(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
        raise ValueError(f"log_level: unknown level {level!r}; expected one of {known}")
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    if stream_is_journal(out, environ):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_LOG_FORMAT))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    return handler
