"""MQTT publishing: retained availability and states, durable events, best-effort telemetry.

Threads: paho-mqtt's network loop (callbacks) and our ``mqtt-publisher`` thread, which drains
the outbox. Detection code only calls `publish_*`, which write to SQLite or hand a packet to
paho and return: nothing here waits on the network except `stop`.

Delivery of events is at-least-once: a message leaves the outbox only after the broker's PUBACK
(``on_publish``); after a disconnect the drain restarts from the oldest un-acknowledged message,
so messages in flight at the disconnect may arrive twice, in order of first arrival.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_asd.config import MqttConfig
from edge_asd.mqtt.discovery import DiscoveryMessage, stale_discovery
from edge_asd.mqtt.messages import Availability, EventMessage, MachineState, Topics
from edge_asd.mqtt.outbox import Outbox, OutboxError

_LOGGER = logging.getLogger(__name__)

AVAILABILITY_QOS: Final = 1
STATE_QOS: Final = 0
"""QoS 0 on purpose: paho keeps unacknowledged QoS 1 messages and re-sends them after a
reconnect, which could overwrite the fresher state republished on connect with a stale one.
Retained QoS 0 plus a republish on every connect always converges to the current state."""
RECONNECT_MIN_DELAY_SECONDS: Final = 1
RECONNECT_MAX_DELAY_SECONDS: Final = 60
MAX_INFLIGHT_MESSAGES: Final = 20
"""Outbox messages handed to paho and not yet acknowledged; bounds memory and duplicates."""
DRAIN_IDLE_WAKE_SECONDS: Final = 1.0
"""The drain thread also wakes this often without a signal, as a safety net."""
DEFAULT_STOP_TIMEOUT_SECONDS: Final = 5.0
_STOP_POLL_SECONDS: Final = 0.05
DISCOVERY_QOS: Final = 1
COMMAND_QOS: Final = 1
HA_ONLINE: Final = b"online"
"""What Home Assistant publishes on ``<discovery prefix>/status`` when it (re)starts."""

CommandHandler = Callable[[str, str, bytes, bool], None]
"""(machine, command name, payload, retained) of a message on ``<node>/<machine>/cmd/<name>``;
called on paho's network thread, so it must only queue the command."""


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
    """Events neither stored nor sent (outbox write failed while offline)."""
    last_connect_error: str | None


class Publisher(Protocol):
    """What the daemon needs from a publisher; tests can substitute a fake."""

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self, timeout_seconds: float = DEFAULT_STOP_TIMEOUT_SECONDS) -> None: ...

    def publish_event(self, machine: str, message: EventMessage) -> None: ...

    def publish_state(self, machine: str, state: MachineState | str) -> None: ...

    def publish_telemetry(self, topic: str, payload: bytes | str, qos: int = 0) -> bool: ...

    def stats(self) -> PublisherStats: ...


def _check_file(key: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise PublisherError(f"mqtt.tls.{key}: file {path} does not exist or is not a file")


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


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
        reconnect_min_delay_seconds: int = RECONNECT_MIN_DELAY_SECONDS,
        reconnect_max_delay_seconds: int = RECONNECT_MAX_DELAY_SECONDS,
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
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop_drain = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._started = False
        self._connects = 0
        self._reconnects = 0
        self._published = 0
        self._acked = 0
        self._telemetry_published = 0
        self._telemetry_dropped = 0
        self._events_not_stored = 0
        self._events_lost = 0
        self._last_connect_error: str | None = None
        self._last_outbox_error: str | None = None
        # Drain-thread-only state: paho message id -> outbox id, and the last id handed over.
        self._inflight: dict[int, int] = {}
        self._cursor: int | None = None
        # Retained extras (service.shift): acknowledgements, HA discovery, commands.
        self._retained: dict[str, tuple[bytes, int]] = {}
        """topic -> (payload, qos) republished on every connect, like the states."""
        self._discovery: list[DiscoveryMessage] = []
        self._discovery_prefix: str | None = None
        self._discovery_machines: list[str] = []
        self._discovery_sent = 0
        self._command_handler: CommandHandler | None = None
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        c = self._config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.max_inflight_messages_set(MAX_INFLIGHT_MESSAGES)
        min_delay, max_delay = self._reconnect_delays
        client.reconnect_delay_set(min_delay=min_delay, max_delay=max_delay)
        # The will must be registered before connecting: the broker stores it with the session.
        client.will_set(
            self._topics.availability, Availability.OFFLINE.value, qos=AVAILABILITY_QOS, retain=True
        )
        if c.username is not None:
            client.username_pw_set(c.username, self._password)
        tls = c.tls  # TlsConfig already refuses a cert_file without a key_file and vice versa
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
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
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
        """Start the drain thread and connect in the background; never blocks on the broker."""
        if self._started:
            return
        self._started = True
        self._thread = threading.Thread(target=self._drain_loop, name="mqtt-publisher", daemon=True)
        self._thread.start()
        c = self._config
        _LOGGER.info(
            "Connecting to MQTT broker %s:%d as %s (TLS %s)",
            c.host,
            c.port,
            self._client_id,
            "on" if c.tls.enabled else "off",
        )
        self._client.connect_async(c.host, c.port, keepalive=c.keepalive_seconds)
        self._client.loop_start()

    def stop(self, timeout_seconds: float = DEFAULT_STOP_TIMEOUT_SECONDS) -> None:
        """Deliver pending events (bounded), publish ``stopped``, disconnect without the will."""
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
            info = self._client.publish(
                self._topics.availability,
                Availability.STOPPED.value,
                qos=AVAILABILITY_QOS,
                retain=True,
            )
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), _STOP_POLL_SECONDS))
            except (RuntimeError, ValueError) as exc:
                _LOGGER.warning("Could not publish availability 'stopped': %s", exc)
        self._stop_drain.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), DRAIN_IDLE_WAKE_SECONDS))
        # A clean DISCONNECT tells the broker to discard the will.
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        _LOGGER.info("MQTT publisher stopped")

    def publish_event(self, machine: str, message: EventMessage) -> None:
        """Store the event in the outbox and wake the drain; never waits on the network."""
        topic = self._topics.event(machine)
        payload = message.to_json().encode("utf-8")
        qos = self._config.qos
        if self._outbox.put(topic, payload, qos, retain=False) is not None:
            self._wake.set()
            return
        with self._lock:
            self._events_not_stored += 1
        # Without durability, sending now is the best that is left.
        info = self._client.publish(topic, payload, qos=qos) if self.connected else None
        if info is not None and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        with self._lock:
            self._events_lost += 1
        _LOGGER.error(
            "Event %s seq %d for %s lost: outbox write failed and broker unavailable",
            message.event_id,
            message.seq,
            machine,
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
            )

    # ----------------------------------------------------------------- paho callbacks
    # These run on paho's network thread: no blocking, no SQLite.

    def _note_connect_problem(self, text: str) -> None:
        """Log a connection problem once per change, not on every back-off retry."""
        with self._lock:
            changed = text != self._last_connect_error
            self._last_connect_error = text
        if changed:
            _LOGGER.warning(
                "Cannot connect to MQTT broker %s:%d: %s; retrying every %d-%d s, "
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
            self._note_connect_problem(f"broker refused the connection: {reason_code}")
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

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError`, so the cause is still at hand.
        exc = sys.exc_info()[1]
        self._note_connect_problem(str(exc) if exc is not None else "connection failed")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: Any,
        properties: Any,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        with self._lock:
            self._generation += 1
        self._wake.set()
        if self._stopping:
            _LOGGER.debug("Disconnected from MQTT broker (%s)", reason_code)
        elif was_connected:
            _LOGGER.warning(
                "Lost connection to MQTT broker %s:%d (%s); reconnecting, events are kept "
                "in the outbox",
                self._config.host,
                self._config.port,
                reason_code,
            )

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            _LOGGER.warning("Broker rejected message %d: %s", mid, reason_code)
            return
        # Only a queue put here: the drain thread maps mid -> outbox id and deletes the row.
        self._acks.put(mid)
        self._wake.set()

    # ----------------------------------------------------------------- drain thread

    def _drain_loop(self) -> None:
        with self._lock:
            seen_generation = self._generation
        while True:
            self._wake.wait(DRAIN_IDLE_WAKE_SECONDS)
            self._wake.clear()
            # Acks first: a PUBACK received before a disconnect still counts.
            self._process_acks()
            if self._stop_drain.is_set():
                break
            with self._lock:
                generation = self._generation
            if generation != seen_generation:
                seen_generation = generation
                self._inflight.clear()
                self._cursor = None
            if self._connected.is_set():
                try:
                    self._submit(generation)
                except Exception:
                    # Must outlive any surprise: it runs unattended for months.
                    _LOGGER.exception("Outbox drain failed; retrying")
                    self._stop_drain.wait(DRAIN_IDLE_WAKE_SECONDS)
        self._process_acks()

    def _process_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            outbox_id = self._inflight.pop(mid, None)
            if outbox_id is None:
                continue  # availability/state/telemetry, or a copy from before a reconnect
            if self._outbox.ack(outbox_id):
                with self._lock:
                    self._acked += 1

    def _submit(self, generation: int) -> None:
        room = MAX_INFLIGHT_MESSAGES - len(self._inflight)
        if room <= 0:
            return
        try:
            batch = self._outbox.pending(room, after_id=self._cursor)
        except OutboxError as exc:
            if str(exc) != self._last_outbox_error:
                _LOGGER.error("%s; retrying", exc)
            self._last_outbox_error = str(exc)
            return
        self._last_outbox_error = None
        for message in batch:
            with self._lock:
                current = self._generation
            if current != generation or not self._connected.is_set():
                return
            try:
                info = self._client.publish(
                    message.topic, message.payload, qos=message.qos, retain=message.retain
                )
            except ValueError as exc:
                # A row paho can never send (bad topic, oversized) would block the queue forever.
                _LOGGER.error(
                    "Dropping outbox message %d for %r: %s", message.id, message.topic, exc
                )
                self._outbox.ack(message.id)
                self._cursor = message.id
                continue
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                _LOGGER.debug("Outbox message %d not handed over: rc=%s", message.id, info.rc)
                return
            self._inflight[info.mid] = message.id
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
