"""A real Mosquitto broker on a free loopback port, and a collecting subscriber, for tests.

The machine may already run a system Mosquitto on 1883; these helpers never touch it.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO_BIN: Final = "/usr/sbin/mosquitto"
LOOPBACK: Final = "127.0.0.1"
START_TIMEOUT_SECONDS: Final = 10.0
STOP_TIMEOUT_SECONDS: Final = 10.0
CONNECT_TIMEOUT_SECONDS: Final = 10.0
POLL_SECONDS: Final = 0.02
_LOG_TAIL_CHARS: Final = 2000


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def mosquitto_path() -> str | None:
    """The broker binary, or None where Mosquitto is not installed."""
    if Path(MOSQUITTO_BIN).is_file():
        return MOSQUITTO_BIN
    return shutil.which("mosquitto")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=POLL_SECONDS * 10):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """One ``mosquitto -c <conf>`` subprocess; `stop`/`start` keep the same port."""

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        persistence: bool = False,
        extra_config: Sequence[str] = (),
    ) -> None:
        binary = mosquitto_path()
        if binary is None:
            raise FileNotFoundError(f"{MOSQUITTO_BIN} not found; install mosquitto")
        self.binary = binary
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.host = LOOPBACK
        self.conf_path = self.work_dir / "mosquitto.conf"
        self.log_path = self.work_dir / "mosquitto.log"
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true" if not any("allow_anonymous" in x for x in extra_config) else "",
            f"persistence {'true' if persistence else 'false'}",
            "log_dest stderr",
            "log_type all",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root, mosquitto would switch to user 'mosquitto', which cannot read or write
            # files under pytest's private tmp dirs (password file, persistence store).
            lines.append("user root")
        if persistence:
            # The store lets a durable subscriber session survive a broker restart.
            lines.append(f"persistence_location {self.work_dir}/")
        lines.extend(extra_config)
        self.conf_path.write_text("\n".join(x for x in lines if x) + "\n", encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Start (or restart) on the same port; return once it accepts connections."""
        if self.running:
            return
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto on port {self.port} exited with {self._process.returncode}:\n"
                    f"{self.log_tail()}"
                )
            if _port_open(self.port):
                return
            time.sleep(POLL_SECONDS)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # Wait until the port is really closed so clients notice the outage.
        deadline = time.monotonic() + timeout
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Clean shutdown (SIGTERM); a persistent broker saves its store."""
        self._end(signal.SIGTERM, timeout)

    def kill(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Abrupt death (SIGKILL)."""
        self._end(signal.SIGKILL, timeout)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A started broker on a free port, stopped at teardown; skips if Mosquitto is missing."""
    if mosquitto_path() is None:
        pytest.skip(f"{MOSQUITTO_BIN} not installed")
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    received_monotonic: float

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


class Subscriber:
    """A paho client that records every message it receives; reconnects and resubscribes.

    `clean_session=False` plus a fixed `client_id` keeps its queue on the broker while it is
    away (use with ``MosquittoBroker(persistence=True)`` to survive broker restarts).
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: str | Sequence[str] = "#",
        *,
        qos: int = 1,
        client_id: str = "",
        clean_session: bool = True,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self._received: list[ReceivedMessage] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._host = host
        self._port = port

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            return
        self._connected.set()
        client.subscribe([(topic, self.qos) for topic in self.topics])

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self._connected.clear()
        self._subscribed.clear()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        received = ReceivedMessage(
            topic=msg.topic,
            payload=bytes(msg.payload),
            retain=bool(msg.retain),
            qos=int(msg.qos),
            received_monotonic=time.monotonic(),
        )
        with self._cond:
            self._received.append(received)
            self._cond.notify_all()

    def start(self, timeout: float = CONNECT_TIMEOUT_SECONDS) -> Subscriber:
        """Connect and subscribe; raise if not subscribed within `timeout`."""
        self._client.connect_async(self._host, self._port, keepalive=5)
        self._client.loop_start()
        if not self.wait_subscribed(timeout):
            self.close()
            raise TimeoutError(
                f"subscriber could not subscribe on {self._host}:{self._port} within {timeout} s"
            )
        return self

    def wait_subscribed(self, timeout: float = CONNECT_TIMEOUT_SECONDS) -> bool:
        return self._subscribed.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def messages(self, topic_filter: str | None = None) -> list[ReceivedMessage]:
        """A snapshot of what arrived so far, optionally matching an MQTT topic filter."""
        with self._cond:
            snapshot = list(self._received)
        if topic_filter is None:
            return snapshot
        return [m for m in snapshot if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def wait_for(self, predicate: Callable[[list[ReceivedMessage]], bool], timeout: float) -> bool:
        """Wait until `predicate(all messages so far)` is true; False after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(list(self._received)):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, POLL_SECONDS * 10))

    def wait_for_payload(self, topic: str, payload: str | bytes, timeout: float) -> bool:
        """Wait for one message on exactly `topic` with exactly `payload`."""
        want = payload.encode("utf-8") if isinstance(payload, str) else payload
        return self.wait_for(
            lambda msgs: any(m.topic == topic and m.payload == want for m in msgs), timeout
        )

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.close()
