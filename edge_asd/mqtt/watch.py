"""`edge-asd status` and `edge-asd tail`: a node seen through the broker, for people.

`status` subscribes once to what the broker keeps for a node (retained availability, machine
states, control acknowledgements and the latest stats), prints a summary and exits: 0 when the
node is online, 1 otherwise. `tail` prints states and events as they happen, one line each::

    press-1 ALARM 11:04:21 score 2.31 (threshold 1.2)
    press-1 ALARM 11:04:21 peak 9.1 (+9 dB at 2.8-3.6 kHz), ended after 12.0 s; clip /var/...

Both read the broker address, credentials and topic prefix from the daemon's config, so they
run on the gateway (or anywhere with a copy of the config) without more arguments. Times are
the viewer's local time unless ``--utc``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Final, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_asd.config import MqttConfig
from edge_asd.mqtt.discovery import CONTROL_STATE_LEAF
from edge_asd.mqtt.messages import Availability, Topics, parse_ts

CONNECT_TIMEOUT_SECONDS: Final = 10.0
QUIET_SECONDS: Final = 0.3
"""Retained messages follow the subscription at once: this long without one, all are in."""
DEFAULT_WAIT_SECONDS: Final = 3.0
"""`status` gives up collecting after this long (a slow link, a huge retained set)."""
_MACHINE_WIDTH: Final = 12


class WatchError(Exception):
    """The broker cannot be reached or refused us; the message says which and why."""


def _client(config: MqttConfig, password: str | None) -> mqtt.Client:
    # A random id: a viewer must never kick the daemon (or another viewer) off the broker.
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edge-asd-watch-{uuid.uuid4().hex[:12]}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    if config.username is not None:
        client.username_pw_set(config.username, password)
    tls = config.tls
    if tls.enabled:
        try:
            client.tls_set(
                ca_certs=None if tls.ca_file is None else str(tls.ca_file),
                certfile=None if tls.cert_file is None else str(tls.cert_file),
                keyfile=None if tls.key_file is None else str(tls.key_file),
            )
        except (OSError, ValueError) as exc:
            raise WatchError(f"mqtt.tls files cannot be loaded: {exc}") from None
    return client


@dataclass
class _Session:
    """A connected, subscribed client feeding `on_message`."""

    client: mqtt.Client
    subscribed: threading.Event
    failure: list[str]


def _open(
    config: MqttConfig,
    password: str | None,
    filters: list[str],
    on_message: Callable[[mqtt.MQTTMessage], None],
) -> _Session:
    client = _client(config, password)
    subscribed = threading.Event()
    failure: list[str] = []

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            failure.append(f"broker refused the connection: {reason}")
            subscribed.set()
            return
        c.subscribe([(topic, 1) for topic in filters])

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda _c, _u, message: on_message(message)
    try:
        client.connect(config.host, config.port, keepalive=config.keepalive_seconds)
    except (OSError, ValueError) as exc:
        raise WatchError(
            f"cannot connect to MQTT broker {config.host}:{config.port}: {exc}"
        ) from None
    client.loop_start()
    if not subscribed.wait(CONNECT_TIMEOUT_SECONDS) or failure:
        client.loop_stop()
        client.disconnect()
        reason = failure[0] if failure else "no answer"
        raise WatchError(f"MQTT broker {config.host}:{config.port}: {reason}")
    return _Session(client, subscribed, failure)


def _close(session: _Session) -> None:
    session.client.disconnect()
    session.client.loop_stop()


def _clock(epoch: float, tz: tzinfo | None) -> str:
    return datetime.fromtimestamp(epoch, tz).strftime("%H:%M:%S")


def _number(value: object) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:.3g}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s"


# ---------------------------------------------------------------------- status


@dataclass
class NodeSnapshot:
    """What the broker retains for one node."""

    node: str
    availability: str | None = None
    states: dict[str, str] = field(default_factory=dict)
    controls: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """machine -> control -> its last acknowledgement."""
    stats: dict[str, Any] | None = None
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    """machine -> its retained environment message."""

    def add(self, topics: Topics, topic: str, payload: bytes) -> None:
        if not topic.startswith(topics.base + "/") or not payload:
            return
        levels = topic[len(topics.base) + 1 :].split("/")
        text = payload.decode("utf-8", errors="replace")
        if levels == ["availability"]:
            self.availability = text
        elif levels == ["stats"]:
            self.stats = _json(text)
        elif len(levels) == 2 and levels[1] == "state":
            self.states[levels[0]] = text
        elif len(levels) == 2 and levels[1] == "environment":
            environment = _json(text)
            if environment is not None:
                self.environments[levels[0]] = environment
        elif len(levels) == 4 and levels[1] == "cmd" and levels[3] == CONTROL_STATE_LEAF:
            ack = _json(text)
            if ack is not None:
                self.controls.setdefault(levels[0], {})[levels[2]] = ack


def _json(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def collect_status(
    config: MqttConfig,
    node: str,
    *,
    password: str | None = None,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
) -> NodeSnapshot:
    """The node's retained messages, collected once."""
    topics = Topics(config.topic_prefix, node)
    snapshot = NodeSnapshot(node)
    lock = threading.Lock()
    last = [time.monotonic()]

    def on_message(message: mqtt.MQTTMessage) -> None:
        if not message.retain:
            return  # live traffic; the summary is about what the broker keeps
        with lock:
            snapshot.add(topics, message.topic, bytes(message.payload))
            last[0] = time.monotonic()

    session = _open(config, password, [topics.all], on_message)
    try:
        started = time.monotonic()
        with lock:
            last[0] = started
        while time.monotonic() - started < wait_seconds:
            time.sleep(QUIET_SECONDS / 3)
            with lock:
                if time.monotonic() - last[0] >= QUIET_SECONDS:
                    break
    finally:
        _close(session)
    return snapshot


def format_environment(payload: dict[str, Any]) -> str:
    """'changed: +9.5 dB overall, most at 447-562 Hz (+12.1 dB)', or 'as calibrated'."""
    if not payload.get("changed"):
        return "as calibrated"
    text = f"changed: {_signed(payload.get('level_change_db'))} dB overall"
    bands = payload.get("bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], dict):
        hz = bands[0].get("hz")
        if isinstance(hz, list) and len(hz) == 2:
            text += (
                f", most at {float(hz[0]):.0f}-{float(hz[1]):.0f} Hz "
                f"({_signed(bands[0].get('change_db'))} dB)"
            )
    return text


def _signed(value: object) -> str:
    return f"{value:+.1f}" if isinstance(value, int | float) else "?"


def _control_note(controls: dict[str, dict[str, Any]], tz: tzinfo | None) -> str:
    notes = []
    mute = controls.get("mute", {})
    if mute.get("value") == "ON" and isinstance(mute.get("until"), str):
        notes.append(f"muted until {_clock(parse_ts(mute['until']), tz)}")
    if controls.get("detection", {}).get("value") == "OFF":
        notes.append("detection off")
    return ", ".join(notes)


def format_status(snapshot: NodeSnapshot, *, tz: tzinfo | None = None) -> list[str]:
    """A readable summary of `snapshot`."""
    node = snapshot.node
    if snapshot.availability is None and not snapshot.states and snapshot.stats is None:
        return [
            f"node {node}: nothing retained on the broker (never connected here, or another "
            "node_id, topic_prefix or broker?)"
        ]
    availability = snapshot.availability or "unknown"
    head = f"node {node}: {availability}"
    stats = snapshot.stats
    if stats is not None:
        parts = []
        if isinstance(stats.get("version"), str):
            parts.append(f"edge-asd {stats['version']}")
        if availability == Availability.ONLINE and isinstance(
            stats.get("uptime_seconds"), int | float
        ):
            parts.append(f"up {_duration(float(stats['uptime_seconds']))}")
        if isinstance(stats.get("ts"), str):
            parts.append(f"stats from {_clock(parse_ts(stats['ts']), tz)}")
        head += f" ({', '.join(parts)})"
    lines = [head]
    machines = dict(snapshot.states)
    if stats is not None and isinstance(stats.get("machines"), dict):
        for name, state in stats["machines"].items():
            machines.setdefault(str(name), str(state))
    for name in sorted(machines):
        note = _control_note(snapshot.controls.get(name, {}), tz)
        environment = snapshot.environments.get(name)
        if environment is not None and environment.get("changed"):
            surroundings = f"surroundings {format_environment(environment)}"
            note = f"{note}, {surroundings}" if note else surroundings
        line = f"  {name:<{_MACHINE_WIDTH}} {machines[name]}"
        lines.append(f"{line:<{_MACHINE_WIDTH + 16}} {note}".rstrip())
    if stats is not None:
        lines.append(
            f"  windows {stats.get('windows_processed', 'n/a')}, inference "
            f"{_number(stats.get('inference_ms_p50'))}/{_number(stats.get('inference_ms_p95'))} "
            f"ms (p50/p95), outbox {stats.get('outbox_depth', 'n/a')}, reconnects "
            f"{stats.get('reconnects', 'n/a')}, dropped windows "
            f"{stats.get('dropped_windows', 'n/a')}, capture overruns "
            f"{stats.get('capture_overruns', 'n/a')}"
        )
    if availability != Availability.ONLINE:
        lines.append(
            "  (the daemon is not running: states are the last it published)"
            if availability == Availability.STOPPED
            else "  (the node is away: it died or lost its network; states may be stale)"
        )
    return lines


# ---------------------------------------------------------------------- tail


def format_event(payload: dict[str, Any], *, tz: tzinfo | None = None) -> str | None:
    """One line for an event's start or end; None for updates (they would flood the view)."""
    kind = payload.get("type")
    machine = payload.get("machine", "?")
    try:
        start = _clock(parse_ts(str(payload.get("start_ts"))), tz)
    except ValueError:
        start = "??:??:??"
    if kind == "start":
        return (
            f"{machine} ALARM {start} score {_number(payload.get('score'))} "
            f"(threshold {_number(payload.get('threshold'))})"
        )
    if kind != "end":
        return None
    line = f"{machine} ALARM {start} peak {_number(payload.get('peak_score'))}"
    if payload.get("explanation"):
        line += f" ({payload['explanation']})"
    duration = payload.get("duration_seconds")
    if isinstance(duration, int | float):
        line += f", ended after {duration:.1f} s"
    if payload.get("clip"):
        line += f"; clip {payload['clip']}"
    return line


def format_message(
    topics: Topics, topic: str, payload: bytes, *, now: float, tz: tzinfo | None = None
) -> str | None:
    """The `tail` line of one message, or None for what it does not show."""
    levels = topic[len(topics.base) + 1 :].split("/") if topic.startswith(topics.base) else []
    text = payload.decode("utf-8", errors="replace")
    at = _clock(now, tz)
    if levels == ["availability"]:
        return f"node {topics.node_id} {text.upper()} {at}"
    if len(levels) == 2 and levels[1] == "state":
        return f"{levels[0]} STATE {at} {text}"
    if len(levels) == 2 and levels[1] == "event":
        data = _json(text)
        return None if data is None else format_event(data, tz=tz)
    if len(levels) == 2 and levels[1] == "environment":
        data = _json(text)
        return None if data is None else f"{levels[0]} ENVIRONMENT {at} {format_environment(data)}"
    if len(levels) == 4 and levels[1] == "cmd" and levels[3] == CONTROL_STATE_LEAF:
        ack = _json(text)
        if ack is None:
            return None
        if not ack.get("ok"):
            return f"{levels[0]} COMMAND {at} {levels[2]} refused: {ack.get('reason')}"
        until = ack.get("until")
        suffix = f" until {_clock(parse_ts(until), tz)}" if isinstance(until, str) else ""
        return f"{levels[0]} COMMAND {at} {levels[2]} {ack.get('value')}{suffix}"
    return None


def tail(
    config: MqttConfig,
    node: str,
    out: TextIO,
    *,
    password: str | None = None,
    count: int | None = None,
    tz: tzinfo | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Print the node's states, events and command answers until `stop` (or Ctrl-C), or
    after `count` lines. Retained messages at the start (availability, states) are the
    current view; retained acknowledgements are skipped (they are old news)."""
    topics = Topics(config.topic_prefix, node)
    done = stop or threading.Event()
    printed = [0]
    lock = threading.Lock()

    def on_message(message: mqtt.MQTTMessage) -> None:
        if message.retain and "/cmd/" in message.topic:
            return
        line = format_message(topics, message.topic, bytes(message.payload), now=time.time(), tz=tz)
        if line is None:
            return
        with lock:
            if done.is_set():
                return
            out.write(line + "\n")
            out.flush()
            printed[0] += 1
            if count is not None and printed[0] >= count:
                done.set()

    filters = [
        topics.availability,
        f"{topics.base}/+/state",
        f"{topics.base}/+/event",
        f"{topics.base}/+/environment",
        f"{topics.base}/+/cmd/+/{CONTROL_STATE_LEAF}",
    ]
    session = _open(config, password, filters, on_message)
    try:
        while not done.wait(0.2):
            pass
    finally:
        _close(session)
    return printed[0]


def utc_or_local(utc: bool) -> tzinfo | None:
    return UTC if utc else None
