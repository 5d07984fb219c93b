"""sd_notify over a real AF_UNIX datagram socket, watchdog interval parsing, journald logging."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_asd.service import notify as systemd_notify
from edge_asd.service.logs import configure_logging, stream_is_journal
from edge_asd.service.notify import Notifier, notify, watchdog_interval_seconds

RECEIVE_TIMEOUT_SECONDS = 5.0
"""Upper bound on every wait for a datagram; they arrive at once on loopback."""

NOTHING_ARRIVES_SECONDS = 0.2
MAX_DATAGRAM_BYTES = 65_536


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECEIVE_TIMEOUT_SECONDS)
    return sock


def _receive(sock: socket.socket) -> str:
    return sock.recv(MAX_DATAGRAM_BYTES).decode("utf-8")


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    address = str(tmp_path / "notify.sock")
    sock = _receiver(address)
    yield address, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"edge-asd-test-{uuid.uuid4().hex}"
    sock = _receiver(b"\0" + name.encode())
    yield "@" + name, sock
    sock.close()


def test_path_socket_receives_exact_messages(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    with Notifier(address) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.watchdog()
        assert notifier.status("scoring 2 machines")
        assert notifier.stopping()
    received = [_receive(sock) for _ in range(4)]
    assert received == ["READY=1", "WATCHDOG=1", "STATUS=scoring 2 machines", "STOPPING=1"]


def test_abstract_socket_receives_messages(abstract_socket: tuple[str, socket.socket]) -> None:
    address, sock = abstract_socket
    with Notifier(address) as notifier:
        assert notifier.ready()
        assert notifier.watchdog()
    assert [_receive(sock), _receive(sock)] == ["READY=1", "WATCHDOG=1"]


def test_address_is_read_from_notify_socket_env(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert Notifier().ready()
    assert notify("STATUS=hello")
    assert [_receive(sock), _receive(sock)] == ["READY=1", "STATUS=hello"]


def test_explicit_environ_mapping_is_used(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.watchdog()
    assert _receive(sock) == "WATCHDOG=1"


def test_status_is_one_line(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    with Notifier(address) as notifier:
        notifier.status("pump-1: open failed\nretrying in 5 s\r\n")
        notifier.status("x" * (systemd_notify.STATUS_MAX_CHARS * 3))
    assert _receive(sock) == "STATUS=pump-1: open failed retrying in 5 s"
    long_status = _receive(sock)
    assert "\n" not in long_status
    assert long_status == "STATUS=" + "x" * systemd_notify.STATUS_MAX_CHARS


def test_undecodable_status_text_is_sent_not_raised(
    path_socket: tuple[str, socket.socket],
) -> None:
    address, sock = path_socket
    with Notifier(address) as notifier:
        assert notifier.status("device \udcff USB")
    assert _receive(sock) == "STATUS=device ? USB"


def test_too_long_socket_path_never_raises(tmp_path: Path) -> None:
    notifier = Notifier("/" + "x" * 200)
    assert notifier.enabled
    assert not notifier.ready()
    notifier.close()


def test_full_receiver_queue_does_not_block_forever(
    path_socket: tuple[str, socket.socket],
) -> None:
    # A manager that does not read: sends fail after the bounded send timeout, never hang.
    address, sock = path_socket
    queue_limit = 100_000
    with Notifier(address) as notifier:
        results = []
        for _ in range(queue_limit):
            results.append(notifier.watchdog())
            if not results[-1]:
                break
        assert results[0] and not results[-1]
        sock.settimeout(NOTHING_ARRIVES_SECONDS)
        with contextlib.suppress(TimeoutError):
            while True:
                sock.recv(MAX_DATAGRAM_BYTES)
        assert notifier.ready()


def test_unset_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.status("x")
    assert not notifier.stopping()
    assert not notify("READY=1")
    # No socket is ever opened for a disabled notifier.
    assert notifier._socket is None
    notifier.close()


def test_relative_address_is_rejected_without_sending() -> None:
    notifier = Notifier("relative/notify.sock")
    assert not notifier.enabled
    assert not notifier.ready()


def test_missing_socket_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=systemd_notify.__name__)
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.enabled
    for _ in range(5):
        assert not notifier.watchdog()
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG
    notifier.close()


def test_socket_reopened_after_close(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier(address)
    assert notifier.ready()
    notifier.close()
    assert notifier.watchdog()
    notifier.close()
    assert [_receive(sock), _receive(sock)] == ["READY=1", "WATCHDOG=1"]


def test_nothing_sent_when_disabled_even_if_socket_exists(
    path_socket: tuple[str, socket.socket],
) -> None:
    _, sock = path_socket
    Notifier(environ={}).ready()
    sock.settimeout(NOTHING_ARRIVES_SECONDS)
    with pytest.raises(TimeoutError):
        sock.recv(MAX_DATAGRAM_BYTES)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_seconds(env) == expected


def test_watchdog_interval_reads_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_seconds() == pytest.approx(10.0)


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _journal_stream_value(path: Path) -> str:
    info = os.stat(path)
    return f"{info.st_dev}:{info.st_ino}"


@pytest.mark.usefixtures("restore_root_logger")
def test_plain_format_without_journal_stream() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out, environ={})
    logger = logging.getLogger("edge_asd.test_plain")
    logger.debug("hidden %d", 1)
    logger.warning("pump-1 level %.1f dBFS", -20.0)
    line = out.getvalue().strip()
    assert "hidden" not in out.getvalue()
    # asctime then level then logger name: 2026-01-01 12:00:00,123 WARNING name: message
    date, time_, level, name, *rest = line.split(" ")
    assert len(date.split("-")) == 3 and ":" in time_
    assert (level, name, " ".join(rest)) == (
        "WARNING",
        "edge_asd.test_plain:",
        "pump-1 level -20.0 dBFS",
    )
    assert not line.startswith("<")


@pytest.mark.usefixtures("restore_root_logger")
def test_journal_format_with_matching_journal_stream(tmp_path: Path) -> None:
    log_path = tmp_path / "stderr.log"
    with log_path.open("w", encoding="utf-8") as out:
        env = {"JOURNAL_STREAM": _journal_stream_value(log_path)}
        assert stream_is_journal(out, env)
        configure_logging("DEBUG", stream=out, environ=env)
        logger = logging.getLogger("edge_asd.test_journal")
        logger.debug("d")
        logger.info("i %s", "x")
        logger.warning("w")
        logger.error("e")
        logger.critical("c")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed")
    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert lines[:5] == [
        "<7>edge_asd.test_journal: d",
        "<6>edge_asd.test_journal: i x",
        "<4>edge_asd.test_journal: w",
        "<3>edge_asd.test_journal: e",
        "<2>edge_asd.test_journal: c",
    ]
    # The traceback keeps the error priority on every line.
    assert lines[5] == "<3>edge_asd.test_journal: failed"
    assert len(lines) > len(["d", "i", "w", "e", "c", "failed"])
    assert all(line.startswith("<3>") for line in lines[5:])
    assert any("RuntimeError: boom" in line for line in lines[5:])


@pytest.mark.usefixtures("restore_root_logger")
def test_inherited_journal_stream_of_another_file_is_ignored(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("", encoding="utf-8")
    log_path = tmp_path / "stderr.log"
    with log_path.open("w", encoding="utf-8") as out:
        env = {"JOURNAL_STREAM": _journal_stream_value(other)}
        assert not stream_is_journal(out, env)
        configure_logging("INFO", stream=out, environ=env)
        logging.getLogger("edge_asd.test_other").info("hello")
    text = log_path.read_text(encoding="utf-8")
    assert not text.startswith("<")
    assert text.rstrip().endswith("INFO edge_asd.test_other: hello")


@pytest.mark.usefixtures("restore_root_logger")
def test_journal_format_for_stream_without_descriptor() -> None:
    out = io.StringIO()
    configure_logging("WARNING", stream=out, environ={"JOURNAL_STREAM": "8:12345"})
    logging.getLogger("edge_asd.test_nofd").warning("w")
    assert out.getvalue() == "<4>edge_asd.test_nofd: w\n"


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_twice_keeps_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", stream=first, environ={})
    configure_logging("INFO", stream=second, environ={})
    logging.getLogger("edge_asd.test_twice").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert logging.getLogger().level == logging.INFO


def test_unknown_level_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"log_level.*LOUD"):
        configure_logging("LOUD", stream=io.StringIO(), environ={})
