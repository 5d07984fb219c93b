"""MQTT publishing: retained availability and states, durable events, best-effort telemetry.

Threads: ``mqtt-network``, which owns the connection (connect, paho's ``loop()``, back-off),
and ``mqtt-publisher``, which drains the outbox. Detection code only calls `publish_*`, which
write to SQLite or hand a packet to paho and return: nothing here waits on the network except
`stop`.

The network thread survives anything: paho lets more than OSError out of a connection attempt
(an invalid host such as ``broker..plant`` raises UnicodeError from the IDNA codec, a TLS file
that changed raises ssl errors, a bug in a callback raises whatever it raises), so every attempt
runs under a catch-all, and the thread retries with exponential back-off for as long as the
daemon runs, logging one line per change of problem instead of paho's ERROR per retry. Our paho
callbacks are guarded too: an exception in one is logged and counted, never propagated into
paho's packet handling.

Each connection attempt uses a fresh paho client. paho keeps every unacknowledged QoS>0
message of a client and re-sends it after a reconnect, and the drain re-submits the oldest
unacknowledged outbox rows after a reconnect too: with one long-lived client, a broker that
keeps dropping the connection without acknowledging (a flapping link) would grow paho's queue by
a window of copies per reconnect, for months. A fresh client holds at most one window
(`MAX_INFLIGHT_MESSAGES`) of outbox messages plus the availability message, and paho's own
queue is capped (`MAX_QUEUED_MESSAGES`) as a second bound.

Delivery of events is at-least-once: a message leaves the outbox only after the broker's PUBACK
(``on_publish``); after a disconnect the drain restarts from the oldest un-acknowledged message,
so messages in flight at the disconnect may arrive twice, in order of first arrival.

Degraded outbox. When the outbox cannot store an event (full or read-only disk, I/O error),
`publish_event` hands it to a bounded in-memory queue (`DIRECT_QUEUE_MAX_MESSAGES`, the oldest
dropped and counted in `events_lost` beyond it) that the drain thread sends directly, before the
outbox's rows, while connected. Not durable: a restart, or a connection lost before the
broker's PUBACK, loses them. The outbox retries its file by itself and takes over again.

Refused messages. With MQTT 5 (the default, `mqtt.protocol`) the broker says why it did not
accept a publish: a PUBACK reason code >= 0x80 (e.g. 0x87 "Not authorized" for an ACL deny).
Such a row is quarantined (moved out of the queue, logged, counted in `quarantined`) instead of
being re-sent forever and blocking the queue. A row paho can never send (a topic with a
wildcard, a payload over the size limit) is quarantined likewise. With MQTT 3.1.1 a broker
cannot say no: Mosquitto acknowledges a denied publish and drops it, so a deny there is
indistinguishable from delivery and nothing can be detected (use MQTT 5).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_asd.config import MqttConfig
from edge_asd.mqtt.discovery import DiscoveryMessage, stale_discovery
from edge_asd.mqtt.messages import Availability, EventMessage, EventType, MachineState, Topics
from edge_asd.mqtt.outbox import Outbox, OutboxError, OutboxMessage

_LOGGER = logging.getLogger(__name__)
_PAHO_LOGGER = logging.getLogger(f"{__name__}.paho")

AVAILABILITY_QOS: Final = 1
STATE_QOS: Final = 0
"""QoS 0 on purpose: paho keeps unacknowledged QoS 1 messages and re-sends them after a
reconnect, which could overwrite the fresher state republished on connect with a stale one.
Retained QoS 0 plus a republish on every connect always converges to the current state."""
RECONNECT_MIN_DELAY_SECONDS: Final = 1
RECONNECT_MAX_DELAY_SECONDS: Final = 60
MAX_INFLIGHT_MESSAGES: Final = 20
"""Outbox messages handed to paho and not yet acknowledged; bounds memory and duplicates."""
MAX_QUEUED_MESSAGES: Final = 1000
"""paho's own cap on QoS>0 messages it holds per client (a second bound, never reached by the
outbox window; a publish beyond it is refused and retried later)."""
DIRECT_QUEUE_MAX_MESSAGES: Final = 1000
"""Events held in memory while the outbox is degraded (cannot store: full or read-only disk)
and the broker is away; beyond this the oldest are dropped and counted as lost. A bound of
memory, not of time: about 1 kB each, a megabyte in all; lost on restart (not durable)."""
DRAIN_IDLE_WAKE_SECONDS: Final = 1.0
"""The drain thread also wakes this often without a signal, as a safety net."""
DEFAULT_STOP_TIMEOUT_SECONDS: Final = 5.0
LOOP_TIMEOUT_SECONDS: Final = 0.5
"""One paho ``loop()`` call: bounds how quickly the network thread notices `stop`."""
CONNACK_TIMEOUT_SECONDS: Final = 30.0
"""A broker that accepts TCP but never answers CONNECT is given up on after this."""
NETWORK_HANG_SECONDS: Final = 60.0
"""No heartbeat from the network thread for this long is a hang. A connection attempt blocks
it for up to the connect timeout (5 s) plus DNS resolution (up to 30 s with 3 name servers)."""
DRAIN_HANG_SECONDS: Final = 60.0
"""No heartbeat from the drain thread for this long is a hang (a SQLite fsync on slow flash
takes seconds, not a minute)."""
_STOP_POLL_SECONDS: Final = 0.05
DISCOVERY_QOS: Final = 1
COMMAND_QOS: Final = 1
HA_ONLINE: Final = b"online"
"""What Home Assistant publishes on ``<discovery prefix>/status`` when it (re)starts."""

CommandHandler = Callable[[str, str, bytes, bool], None]
"""(machine, command name, payload, retained) of a message on ``<node>/<machine>/cmd/<name>``;
called on paho's network thread, so it must only queue the command."""
PROTOCOLS: Final = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}
_AUTH_FAILURES: Final = ("not authorized", "bad user name or password", "banned")


class PublisherError(Exception):
    """Bad MQTT settings (e.g. a TLS file that does not exist); the message names the key."""


@dataclass(frozen=True)
class PublisherStats:
    """Counters since `start`."""

    connected: bool
    reconnects: int
    """Successful connections after the first one."""
    published: int
    """Outbox messages handed to the client (re-sends after a reconnect included)."""
    acked: int
    """Outbox messages acknowledged by the broker and deleted from the outbox."""
    telemetry_published: int
    telemetry_dropped: int
    """Telemetry messages dropped because the broker was away."""
    events_not_stored: int
    """Events the outbox could not store (disk full, I/O error)."""
    events_lost: int
    """Events neither stored nor sent: the outbox could not store them and the in-memory queue
    of direct publishing overflowed (`DIRECT_QUEUE_MAX_MESSAGES`)."""
    last_connect_error: str | None
    quarantined: int = 0
    """Outbox messages refused by the broker or unsendable, set aside (`MqttPublisher`)."""
    in_flight: int = 0
    """Outbox messages handed to the client and not yet acknowledged (<= the window)."""
    client_queue: int = 0
    """QoS>0 messages the current paho client holds (in flight or queued)."""
    callback_errors: int = 0
    """Exceptions raised in our paho callbacks (logged, never propagated)."""
    direct_queue: int = 0
    """Events the outbox could not store, held in memory until the broker is reachable."""
    direct_sent: int = 0
    """Events the outbox could not store, handed to the client directly (not durable)."""


@dataclass(frozen=True)
class ThreadProblem:
    """A publisher thread that died (`dead`) or stopped beating (hangs)."""

    thread: str
    reason: str
    dead: bool


class Publisher(Protocol):
    """What the daemon needs from a publisher; tests can substitute a fake."""

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def stop(
        self, timeout_seconds: float = DEFAULT_STOP_TIMEOUT_SECONDS, *, failed: bool = False
    ) -> None: ...

    def publish_event(self, machine: str, message: EventMessage) -> None: ...

    def publish_state(self, machine: str, state: MachineState | str) -> None: ...

    def publish_telemetry(self, topic: str, payload: bytes | str, qos: int = 0) -> bool: ...

    def stats(self) -> PublisherStats: ...

    def thread_problem(self) -> ThreadProblem | None: ...


def _check_file(key: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise PublisherError(f"mqtt.tls.{key}: file {path} does not exist or is not a file")


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"


def build_client(config: MqttConfig, client_id: str, password: str | None) -> mqtt.Client:
    """A paho client with the config's protocol, credentials and TLS (no callbacks, no will).

    Raises PublisherError naming the key when the TLS files cannot be loaded.
    """
    protocol = PROTOCOLS[config.protocol]
    if protocol == mqtt.MQTTv5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=protocol
        )
    # Our callbacks are guarded already; this keeps paho from re-raising from any it wraps.
    client.suppress_exceptions = True
    if config.username is not None:
        client.username_pw_set(config.username, password)
    tls = config.tls  # TlsConfig already refuses a cert_file without a key_file and vice versa
    if tls.enabled:
        _check_file("ca_file", tls.ca_file)
        _check_file("cert_file", tls.cert_file)
        _check_file("key_file", tls.key_file)
        try:
            client.tls_set(
                ca_certs=_optional_str(tls.ca_file),
                certfile=_optional_str(tls.cert_file),
                keyfile=_optional_str(tls.key_file),
            )
        except (OSError, ValueError) as exc:
            raise PublisherError(
                f"mqtt.tls files (ca_file={tls.ca_file}, cert_file={tls.cert_file}, "
                f"key_file={tls.key_file}) cannot be loaded: {exc}"
            ) from exc
    return client


def _connect_args(config: MqttConfig) -> dict[str, Any]:
    args: dict[str, Any] = {"keepalive": config.keepalive_seconds}
    if PROTOCOLS[config.protocol] == mqtt.MQTTv5:
        # A fresh session each time, as clean_session=True does for 3.1.1: the outbox, not
        # the broker, is where undelivered events wait.
        args["clean_start"] = True
    return args


def probe_broker(
    config: MqttConfig, node_id: str, *, password: str | None, timeout_seconds: float
) -> tuple[str, str] | None:
    """Connect once as ``<client id>-check`` (never the daemon's id, which would kick a running
    daemon off the broker) and disconnect. None when the broker accepted, else (key, why)."""
    try:
        client = build_client(config, f"{config.client_id_for(node_id)}-check", password)
    except PublisherError as exc:
        return ("mqtt.tls", str(exc))
    answered = threading.Event()
    outcome: list[str] = []

    def on_connect(
        client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            outcome.append(str(reason_code))
        answered.set()

    client.on_connect = on_connect
    where = f"{config.host}:{config.port}"
    try:
        client.connect(config.host, config.port, **_connect_args(config))
    except Exception as exc:  # noqa: BLE001 - paho lets DNS, IDNA, TLS errors through
        return ("mqtt.host", f"cannot connect to {where}: {_describe(exc)}")
    deadline = time.monotonic() + timeout_seconds
    try:
        while not answered.is_set() and time.monotonic() < deadline:
            if client.socket() is None or client.loop(LOOP_TIMEOUT_SECONDS) != 0:
                break
        if not answered.is_set():
            return ("mqtt.host", f"{where} did not answer MQTT CONNECT")
        if outcome:
            refusal = outcome[0]
            key = "mqtt.username" if refusal.lower() in _AUTH_FAILURES else "mqtt.host"
            return (key, f"broker {where} refused the connection: {refusal}")
        return None
    finally:
        try:
            client.disconnect()
            client.loop(LOOP_TIMEOUT_SECONDS)
        except Exception:
            _LOGGER.debug("probe disconnect failed", exc_info=True)


class MqttPublisher:
    """paho-mqtt 2.x publisher with a last will, back-off and an outbox drain thread.

    Takes the config's `mqtt` section as it is (validated there), plus the password the caller
    resolved from its file or environment variable (`MqttConfig.resolve_password`), so that
    reading secrets and reporting their errors stays with the config. The reconnect back-off
    is not a config key; tests shorten it. The outbox is owned by the caller: `stop` does not
    close it.
    """

    def __init__(
        self,
        config: MqttConfig,
        outbox: Outbox,
        *,
        node_id: str,
        password: str | None = None,
        reconnect_min_delay_seconds: float = RECONNECT_MIN_DELAY_SECONDS,
        reconnect_max_delay_seconds: float = RECONNECT_MAX_DELAY_SECONDS,
    ) -> None:
        self._config = config
        self._password = password
        """Never logged; kept apart from the config so no repr can show it."""
        self._reconnect_delays = (reconnect_min_delay_seconds, reconnect_max_delay_seconds)
        self._outbox = outbox
        self._topics = Topics(config.topic_prefix, node_id)
        self._client_id = config.client_id_for(node_id)
        self._lock = threading.Lock()
        """Guards the counters below; never held while calling into paho."""
        self._state_lock = threading.Lock()
        """Orders state publishes between on_connect and publish_state (held across publish)."""
        self._states: dict[str, str] = {}
        self._connected = threading.Event()
        self._generation = 0
        """Bumped on every disconnect so the drain restarts from the oldest message."""
        self._acks: queue.SimpleQueue[tuple[int, int, str | None]] = queue.SimpleQueue()
        """(generation, mid, refusal reason or None) from on_publish, for the drain thread."""
        self._wake = threading.Event()
        self._stop_drain = threading.Event()
        self._stop_network = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._network_thread: threading.Thread | None = None
        self._beats: dict[str, float] = {}
        self._thread_errors: dict[str, str] = {}
        self._started = False
        self._connects = 0
        self._reconnects = 0
        self._published = 0
        self._acked = 0
        self._quarantined = 0
        self._callback_errors = 0
        self._telemetry_published = 0
        self._telemetry_dropped = 0
        self._events_not_stored = 0
        self._events_lost = 0
        self._direct_sent = 0
        self._direct: deque[tuple[str, bytes, int]] = deque()
        """(topic, payload, qos) of events the outbox could not store, oldest first; guarded
        by `_lock`, bounded by DIRECT_QUEUE_MAX_MESSAGES, sent by the drain thread."""
        self._last_connect_error: str | None = None
        self._refusal: str | None = None
        """Why the broker refused the current connection attempt (CONNACK), if it did."""
        self._last_outbox_error: str | None = None
        self._logged_callback_errors: set[str] = set()
        # Drain-thread-only state: paho message id -> outbox row, and the last id handed over.
        self._inflight: dict[int, OutboxMessage] = {}
        self._cursor: int | None = None
        # Retained extras (service.shift): acknowledgements, HA discovery, commands.
        self._retained: dict[str, tuple[bytes, int]] = {}
        """topic -> (payload, qos) republished on every connect, like the states."""
        self._discovery: list[DiscoveryMessage] = []
        self._discovery_prefix: str | None = None
        self._discovery_machines: list[str] = []
        self._discovery_sent = 0
        self._command_handler: CommandHandler | None = None
        # Built now so that bad TLS files fail at start-up (PublisherError), not in the loop.
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = build_client(self._config, self._client_id, self._password)
        client.max_inflight_messages_set(MAX_INFLIGHT_MESSAGES)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        # The will must be registered before connecting: the broker stores it with the session.
        client.will_set(
            self._topics.availability, Availability.OFFLINE.value, qos=AVAILABILITY_QOS, retain=True
        )
        client.on_connect = self._guarded("on_connect", self._on_connect)
        client.on_disconnect = self._guarded("on_disconnect", self._on_disconnect)
        client.on_publish = self._guarded("on_publish", self._on_publish)
        # paho logs an ERROR for every failed retry; we log one line per change of state.
        client.on_log = self._guarded("on_log", self._on_paho_log)
        client.on_message = self._guarded("on_message", self._on_message)
        return client

    # ----------------------------------------------------------------- public interface

    @property
    def client_id(self) -> str:
        """What this node connects as (`MqttConfig.client_id_for`)."""
        return self._client_id

    @property
    def topics(self) -> Topics:
        """Topic names for this node (the daemon builds score/stats topics from them)."""
        return self._topics

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Start the drain and network threads; never blocks on the broker."""
        if self._started:
            return
        self._started = True
        c = self._config
        _LOGGER.info(
            "Connecting to MQTT broker %s:%d as %s (MQTT %s, TLS %s)",
            c.host,
            c.port,
            self._client_id,
            c.protocol,
            "on" if c.tls.enabled else "off",
        )
        self._thread = self._spawn("mqtt-publisher", self._drain_loop)
        self._network_thread = self._spawn("mqtt-network", self._network_loop)

    def _spawn(self, name: str, body: Callable[[], None]) -> threading.Thread:
        self._beat(name)

        def run() -> None:
            try:
                body()
            except BaseException as exc:
                # Only a BaseException (SystemExit, a bug in the catch-alls) gets here: the
                # daemon's supervisor sees the thread dead and exits non-zero.
                self._thread_errors[name] = _describe(exc)
                _LOGGER.critical("%s thread died", name, exc_info=True)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def _beat(self, name: str) -> None:
        self._beats[name] = time.monotonic()

    def thread_problem(self) -> ThreadProblem | None:
        """A thread of ours that died or hangs (None when both run, or before `start`)."""
        if not self._started or self._stopping:
            return None
        now = time.monotonic()
        for name, thread, hang in (
            ("mqtt-network", self._network_thread, NETWORK_HANG_SECONDS),
            ("mqtt-publisher", self._thread, DRAIN_HANG_SECONDS),
        ):
            if thread is None:
                continue
            if not thread.is_alive():
                why = self._thread_errors.get(name, "ended")
                return ThreadProblem(name, f"{name} thread died: {why}", dead=True)
            silent = now - self._beats.get(name, now)
            if silent > hang:
                return ThreadProblem(
                    name, f"{name} thread hangs (no heartbeat for {silent:.0f} s)", dead=False
                )
        return None

    def stop(
        self, timeout_seconds: float = DEFAULT_STOP_TIMEOUT_SECONDS, *, failed: bool = False
    ) -> None:
        """Deliver pending events (bounded), publish ``stopped`` (``offline`` when the daemon
        stops because it `failed`: it was not an operator's stop), disconnect."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        deadline = time.monotonic() + timeout_seconds
        self._wake.set()
        while self.connected and self._outbox.depth() > 0 and time.monotonic() < deadline:
            time.sleep(_STOP_POLL_SECONDS)
        left = self._outbox.depth()
        if left:
            _LOGGER.warning(
                "Stopping with %d event(s) still in the outbox; sent on next start", left
            )
        if self.connected:
            availability = Availability.OFFLINE if failed else Availability.STOPPED
            try:
                info = self._client.publish(
                    self._topics.availability,
                    availability.value,
                    qos=AVAILABILITY_QOS,
                    retain=True,
                )
                info.wait_for_publish(max(deadline - time.monotonic(), _STOP_POLL_SECONDS))
            except (RuntimeError, ValueError) as exc:
                _LOGGER.warning("Could not publish availability %r: %s", availability.value, exc)
        self._stop_drain.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), DRAIN_IDLE_WAKE_SECONDS))
        # The network thread sends DISCONNECT (the broker then discards the will) and ends.
        self._stop_network.set()
        if self._network_thread is not None:
            self._network_thread.join(max(deadline - time.monotonic(), DRAIN_IDLE_WAKE_SECONDS))
        self._connected.clear()
        _LOGGER.info("MQTT publisher stopped")

    def publish_event(self, machine: str, message: EventMessage) -> None:
        """Store the event in the outbox and wake the drain; never waits on the network."""
        topic = self._topics.event(machine)
        payload = message.to_json().encode("utf-8")
        qos = self._config.qos
        # An update is superseded by the next update or the end: it is not worth an fsync (1 Hz
        # during a long event would wear the gateway's flash); starts and ends are durable.
        durable = message.type != EventType.UPDATE
        if self._outbox.put(topic, payload, qos, retain=False, durable=durable) is not None:
            self._wake.set()
            return
        # Degraded outbox (full or read-only disk): published directly, without durability,
        # through a bounded in-memory queue that the drain thread empties while connected.
        with self._lock:
            self._events_not_stored += 1
            self._direct.append((topic, payload, qos))
            overflow = len(self._direct) - DIRECT_QUEUE_MAX_MESSAGES
            for _ in range(max(0, overflow)):
                self._direct.popleft()
                self._events_lost += 1
        self._wake.set()
        if overflow > 0:
            _LOGGER.error(
                "Event %s seq %d for %s: outbox cannot store and the broker is away; the "
                "oldest event held in memory was dropped (%d held at most)",
                message.event_id,
                message.seq,
                machine,
                DIRECT_QUEUE_MAX_MESSAGES,
            )

    def publish_state(self, machine: str, state: MachineState | str) -> None:
        """Retained machine state; remembered and republished on every (re)connect."""
        value = MachineState(state).value
        topic = self._topics.state(machine)
        with self._state_lock:
            if self._states.get(machine) == value:
                return
            self._states[machine] = value
            if self.connected:
                self._client.publish(topic, value, qos=STATE_QOS, retain=True)

    def publish_telemetry(self, topic: str, payload: bytes | str, qos: int = 0) -> bool:
        """Best-effort, not retained; dropped (and counted) while the broker is away."""
        if self.connected:
            info = self._client.publish(topic, payload, qos=qos, retain=False)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                with self._lock:
                    self._telemetry_published += 1
                return True
        with self._lock:
            self._telemetry_dropped += 1
        return False

    def stats(self) -> PublisherStats:
        # paho has no public count of the messages it holds; read it where it keeps them.
        held = getattr(self._client, "_out_messages", None)
        with self._lock:
            return PublisherStats(
                connected=self.connected,
                reconnects=self._reconnects,
                published=self._published,
                acked=self._acked,
                telemetry_published=self._telemetry_published,
                telemetry_dropped=self._telemetry_dropped,
                events_not_stored=self._events_not_stored,
                events_lost=self._events_lost,
                last_connect_error=self._last_connect_error,
                quarantined=self._quarantined,
                in_flight=len(self._inflight),
                client_queue=len(held) if held is not None else 0,
                callback_errors=self._callback_errors,
                direct_queue=len(self._direct),
                direct_sent=self._direct_sent,
            )

    # ----------------------------------------------------------------- network thread

    def _network_loop(self) -> None:
        delay = float(self._reconnect_delays[0])
        while not self._stop_network.is_set():
            self._beat("mqtt-network")
            problem = self._connection()
            if self._stop_network.is_set():
                break
            if problem is None:
                # The connection was up and then went away: retry soon.
                delay = float(self._reconnect_delays[0])
            else:
                self._note_connect_problem(problem)
            _LOGGER.debug("Connection failed, retrying in %.1f s", delay)
            self._sleep(delay)
            delay = min(delay * 2, float(self._reconnect_delays[1]))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_network.is_set():
            self._beat("mqtt-network")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop_network.wait(min(remaining, LOOP_TIMEOUT_SECONDS))

    def _connection(self) -> str | None:
        """One connection, from attempt to loss. None if it was up, else why it failed."""
        client: mqtt.Client | None = None
        was_up = False
        self._refusal = None
        try:
            client = self._make_client()
            self._client = client
            c = self._config
            client.connect(c.host, c.port, **_connect_args(c))
            started = time.monotonic()
            while True:
                self._beat("mqtt-network")
                if self._stop_network.is_set():
                    self._goodbye(client)
                    return None
                if client.socket() is None:
                    break
                rc = client.loop(LOOP_TIMEOUT_SECONDS)
                was_up = was_up or self._connected.is_set()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    if not was_up:
                        return self._refusal or mqtt.error_string(rc)
                    break
                if not was_up and time.monotonic() - started > CONNACK_TIMEOUT_SECONDS:
                    return f"no answer to MQTT CONNECT within {CONNACK_TIMEOUT_SECONDS:g} s"
            if was_up:
                return None
            return self._refusal or "connection closed before the broker accepted it"
        except Exception as exc:  # noqa: BLE001 - anything paho raises must not end the thread
            return _describe(exc)
        finally:
            if client is not None:
                self._close_quietly(client)
            self._mark_disconnected(None)

    def _goodbye(self, client: mqtt.Client) -> None:
        """Send DISCONNECT (so the broker discards the will) and let paho flush it."""
        if self._connected.is_set():
            client.disconnect()
            deadline = time.monotonic() + 1.0
            while client.socket() is not None and time.monotonic() < deadline:
                if client.loop(LOOP_TIMEOUT_SECONDS) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break

    @staticmethod
    def _close_quietly(client: mqtt.Client) -> None:
        sock = client.socket()
        if sock is None:
            return
        try:
            sock.close()
        except OSError:
            _LOGGER.debug("closing the MQTT socket failed", exc_info=True)

    def _mark_disconnected(self, reason: Any) -> None:
        """Connection gone (paho's on_disconnect, or our own clean-up): idempotent."""
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not was_connected:
            return
        with self._lock:
            self._generation += 1
        self._wake.set()
        if self._stopping:
            _LOGGER.debug("Disconnected from MQTT broker (%s)", reason)
        else:
            _LOGGER.warning(
                "Lost connection to MQTT broker %s:%d (%s); reconnecting, events are kept "
                "in the outbox",
                self._config.host,
                self._config.port,
                reason if reason is not None else "connection closed",
            )

    # ----------------------------------------------------------------- paho callbacks
    # These run on the network thread: no blocking, no SQLite.

    def _guarded(self, name: str, callback: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any, **kwargs: Any) -> None:
            try:
                callback(*args, **kwargs)
            except Exception as exc:
                with self._lock:
                    self._callback_errors += 1
                signature = f"{name}:{type(exc).__name__}"
                if signature not in self._logged_callback_errors:
                    self._logged_callback_errors.add(signature)
                    _LOGGER.error(
                        "MQTT callback %s failed (further %s there not logged)",
                        name,
                        type(exc).__name__,
                        exc_info=True,
                    )

        return guarded

    def _on_paho_log(self, client: mqtt.Client, userdata: Any, level: int, message: str) -> None:
        _PAHO_LOGGER.debug("%s", message)

    def _note_connect_problem(self, text: str) -> None:
        """Log a connection problem once per change, not on every back-off retry."""
        with self._lock:
            changed = text != self._last_connect_error
            self._last_connect_error = text
        if changed:
            _LOGGER.warning(
                "Cannot connect to MQTT broker %s:%d: %s; retrying with back-off (%g-%g s), "
                "events are kept in the outbox",
                self._config.host,
                self._config.port,
                text,
                *self._reconnect_delays,
            )

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: Any,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            # Reported (once per change) by the network thread when the attempt ends.
            self._refusal = f"broker refused the connection: {reason_code}"
            return
        with self._lock:
            if self._connects:
                self._reconnects += 1
            self._connects += 1
            self._last_connect_error = None
        _LOGGER.info(
            "Connected to MQTT broker %s:%d as %s",
            self._config.host,
            self._config.port,
            self._client_id,
        )
        # Under the state lock, so a concurrent publish_state cannot be overtaken by a stale value.
        with self._state_lock:
            client.publish(
                self._topics.availability,
                Availability.ONLINE.value,
                qos=AVAILABILITY_QOS,
                retain=True,
            )
            for machine, state in self._states.items():
                client.publish(self._topics.state(machine), state, qos=STATE_QOS, retain=True)
            self._connected.set()
        self._wake.set()
        self._on_connect_extras(client)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: Any,
        properties: Any,
    ) -> None:
        if client is self._client:
            self._mark_disconnected(reason_code)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        with self._lock:
            generation = self._generation
        refusal = str(reason_code) if reason_code.is_failure else None
        # Only a queue put here: the drain thread maps mid -> outbox id and acts on the row.
        self._acks.put((generation, mid, refusal))
        self._wake.set()

    # ----------------------------------------------------------------- drain thread

    def _drain_loop(self) -> None:
        with self._lock:
            seen_generation = self._generation
        while True:
            self._beat("mqtt-publisher")
            self._wake.wait(DRAIN_IDLE_WAKE_SECONDS)
            self._wake.clear()
            try:
                # Acks first: a PUBACK received before a disconnect still counts.
                self._process_acks(seen_generation)
                if self._stop_drain.is_set():
                    break
                with self._lock:
                    generation = self._generation
                if generation != seen_generation:
                    seen_generation = generation
                    self._inflight.clear()
                    self._cursor = None
                if self._connected.is_set():
                    self._submit(generation)
            except Exception:
                # Must outlive any surprise: it runs unattended for months.
                _LOGGER.exception("Outbox drain failed; retrying")
                self._stop_drain.wait(DRAIN_IDLE_WAKE_SECONDS)
        self._process_acks(seen_generation)

    def _process_acks(self, generation: int) -> None:
        while True:
            try:
                ack_generation, mid, refusal = self._acks.get_nowait()
            except queue.Empty:
                return
            if ack_generation != generation:
                continue  # a mid of an earlier client: ids restart with each connection
            message = self._inflight.pop(mid, None)
            if message is None:
                continue  # availability/state/telemetry
            if refusal is not None:
                self._quarantine(message, f"refused by the broker: {refusal}")
            elif self._outbox.ack(message.id):
                with self._lock:
                    self._acked += 1

    def _quarantine(self, message: OutboxMessage, reason: str) -> None:
        """Take a message that can never be delivered out of the queue, logged and counted."""
        _LOGGER.error(
            "Outbox message %d for %r quarantined: %s; it will not be sent again",
            message.id,
            message.topic,
            reason,
        )
        quarantine = getattr(self._outbox, "quarantine", None)
        if quarantine is not None:
            quarantine(message.id, reason)
        else:
            # TODO(outbox): drop this branch once Outbox.quarantine (kept for inspection) is
            # merged; until then the row is deleted, after the log line above.
            self._outbox.ack(message.id)
        with self._lock:
            self._quarantined += 1

    def _next_batch(self, room: int) -> list[OutboxMessage]:
        """The oldest rows not in flight: the outbox's `next_unsent` where it has one (no
        cursor: a row that left the window without an ack is offered again), else `pending`
        after the last id handed over."""
        next_unsent = getattr(self._outbox, "next_unsent", None)
        if next_unsent is not None:
            in_flight = {m.id for m in self._inflight.values()}
            batch: list[OutboxMessage] = next_unsent(room, in_flight)
            return batch
        return self._outbox.pending(room, after_id=self._cursor)

    def _send_direct(self, generation: int) -> bool:
        """Hand the events held in memory (outbox degraded) to paho, oldest first; True when
        none is left. Not tracked for acks: they were never durable, and a connection lost
        before the broker's PUBACK loses them, as a power cut would."""
        client = self._client
        while True:
            with self._lock:
                if not self._direct:
                    return True
                if self._generation != generation or not self._connected.is_set():
                    return False
                topic, payload, qos = self._direct[0]
            try:
                info = client.publish(topic, payload, qos=qos, retain=False)
            except ValueError as exc:
                _LOGGER.error("Event for %r cannot be sent and is dropped: %s", topic, exc)
                info = None
            if info is not None and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            with self._lock:
                if self._direct and self._direct[0][1] is payload:
                    self._direct.popleft()
                if info is None:
                    self._events_lost += 1
                else:
                    self._direct_sent += 1

    def _submit(self, generation: int) -> None:
        # Events held in memory first: they are older than anything the outbox holds now.
        if not self._send_direct(generation):
            return
        room = MAX_INFLIGHT_MESSAGES - len(self._inflight)
        if room <= 0:
            return
        try:
            batch = self._next_batch(room)
        except OutboxError as exc:
            if str(exc) != self._last_outbox_error:
                _LOGGER.error("%s; retrying", exc)
            self._last_outbox_error = str(exc)
            return
        self._last_outbox_error = None
        client = self._client
        for message in batch:
            with self._lock:
                current = self._generation
            if current != generation or not self._connected.is_set():
                return
            try:
                info = client.publish(
                    message.topic, message.payload, qos=message.qos, retain=message.retain
                )
            except ValueError as exc:
                # A row paho can never send (bad topic, oversized) would block the queue.
                self._quarantine(message, f"the MQTT client cannot send it: {exc}")
                self._cursor = message.id
                continue
            if info.rc == MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE:
                self._quarantine(message, "payload too large for MQTT")
                self._cursor = message.id
                continue
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                _LOGGER.debug("Outbox message %d not handed over: rc=%s", message.id, info.rc)
                return
            self._inflight[info.mid] = message
            self._cursor = message.id
            with self._lock:
                self._published += 1

    # ----------------------------------------------------------------- retained extras
    # Home Assistant discovery, command subscription and retained acknowledgements. Configure
    # them before `start`; everything below runs on the caller's or paho's network thread.

    def enable_discovery(
        self, messages: Sequence[DiscoveryMessage], *, prefix: str, machines: Sequence[str]
    ) -> None:
        """Publish `messages` (retained) on every connect and whenever Home Assistant says
        ``online`` on ``<prefix>/status``; remove retained configs of this gateway's machines
        that are not in `machines` (they left the config)."""
        self._discovery = list(messages)
        self._discovery_prefix = prefix
        self._discovery_machines = list(machines)

    def set_command_handler(self, handler: CommandHandler) -> None:
        """Subscribe to ``<prefix>/<node>/+/cmd/+`` on every connect and hand each message to
        `handler`."""
        self._command_handler = handler

    @property
    def discovery_sent(self) -> int:
        """How many times the discovery messages were (re)published (tests, diagnostics)."""
        with self._lock:
            return self._discovery_sent

    def publish_retained(
        self, topic: str, payload: bytes | str, qos: int = 1, *, remember: bool = True
    ) -> None:
        """A retained message; with `remember`, republished on every (re)connect (a control's
        acknowledgement must be on the broker even if it was published while away)."""
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        with self._state_lock:
            if remember:
                self._retained[topic] = (data, qos)
            if self.connected:
                self._client.publish(topic, data, qos=qos, retain=True)

    def _on_connect_extras(self, client: mqtt.Client) -> None:
        with self._state_lock:
            for topic, (data, qos) in self._retained.items():
                client.publish(topic, data, qos=qos, retain=True)
        if self._command_handler is not None:
            client.subscribe(f"{self._topics.base}/+/cmd/+", qos=COMMAND_QOS)
        prefix = self._discovery_prefix
        if prefix is not None:
            self._publish_discovery(client)
            # Retained configs already on the broker: found stale ones are removed as they
            # arrive (`_on_message`), so no wait for "all retained messages" is needed.
            client.subscribe(
                [(f"{prefix}/status", DISCOVERY_QOS), (f"{prefix}/device/+/config", DISCOVERY_QOS)]
            )

    def _publish_discovery(self, client: mqtt.Client) -> None:
        for message in self._discovery:
            client.publish(message.topic, message.encode(), qos=DISCOVERY_QOS, retain=True)
        with self._lock:
            self._discovery_sent += 1
        _LOGGER.info("Published Home Assistant discovery (%d messages)", len(self._discovery))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._route_message(client, message)
        except Exception:
            # paho's network thread must survive any surprise in a message.
            _LOGGER.exception("Could not handle message on %s", message.topic)

    def _route_message(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        topic, payload = message.topic, bytes(message.payload)
        prefix = self._discovery_prefix
        if prefix is not None and topic == f"{prefix}/status":
            if payload.strip() == HA_ONLINE:
                # HA restarted and lost what it knew: announce everything again.
                self._publish_discovery(client)
            return
        if prefix is not None and mqtt.topic_matches_sub(f"{prefix}/device/+/config", topic):
            # Only what the broker held at subscribe time (retain flag): live traffic on these
            # topics is ours or other gateways' current configs.
            if message.retain and payload:
                for removal in stale_discovery(
                    {topic: payload},
                    self._topics.node_id,
                    self._discovery_machines,
                    prefix=prefix,
                ):
                    _LOGGER.info("Removing Home Assistant device %s (left the config)", topic)
                    client.publish(removal.topic, b"", qos=DISCOVERY_QOS, retain=True)
            return
        handler = self._command_handler
        if handler is not None and mqtt.topic_matches_sub(f"{self._topics.base}/+/cmd/+", topic):
            levels = topic[len(self._topics.base) + 1 :].split("/")
            handler(levels[0], levels[2], payload, bool(message.retain))
