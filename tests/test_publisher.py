"""MqttPublisher against a real Mosquitto broker on a free loopback port."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest

from edge_asd.config import MqttConfig, TlsConfig, default_client_id
from edge_asd.mqtt import publisher as publisher_module
from edge_asd.mqtt.messages import (
    EventMessage,
    EventType,
    MachineState,
    ModelRef,
    ScoreMessage,
    event_schema,
    format_ts,
    score_schema,
    stats_schema,
)
from edge_asd.mqtt.outbox import Outbox
from edge_asd.mqtt.publisher import (
    MAX_INFLIGHT_MESSAGES,
    MqttPublisher,
    PublisherError,
)
from tests.mqtt_fixture import (
    MosquittoBroker,
    ReceivedMessage,
    Subscriber,
    free_port,
    mosquitto_broker,  # noqa: F401 - fixture, until conftest imports it
    mosquitto_path,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]

NODE = "gw-test"
MACHINE = "press-1"
PREFIX = "edge-asd"
WAIT_SECONDS = 20.0
"""Upper bound of every wait; they normally end in well under a second."""
POLL_SECONDS = 0.02
REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_TS = 1_795_316_645.0
MODEL = ModelRef(name="logmel-stats", version="1", sha256="0" * 64)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_SECONDS)
    return predicate()


def config_for(port: int, **changes: object) -> MqttConfig:
    """The `mqtt` config section for the test broker, validated as the YAML is."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "topic_prefix": PREFIX,
        "keepalive_seconds": 5,
    }
    values.update(changes)
    return MqttConfig.from_dict(values)


def publisher_for(
    port: int,
    outbox: Outbox,
    *,
    node_id: str = NODE,
    password: str | None = None,
    **changes: object,
) -> MqttPublisher:
    return MqttPublisher(
        config_for(port, **changes),
        outbox,
        node_id=node_id,
        password=password,
        # Short back-off keeps the restart tests quick; production uses 1..60 s.
        reconnect_min_delay_seconds=1,
        reconnect_max_delay_seconds=1,
    )


def make_event(seq: int, *, kind: EventType = EventType.UPDATE) -> EventMessage:
    ts = BASE_TS + seq
    return EventMessage(
        type=kind,
        event_id="11111111-2222-3333-4444-555555555555",
        node=NODE,
        machine=MACHINE,
        seq=seq,
        ts=format_ts(ts),
        start_ts=format_ts(BASE_TS),
        end_ts=format_ts(ts) if kind is EventType.END else None,
        score=1.5 + seq / 100,
        peak_score=2.0,
        threshold=1.2,
        windows_over=seq,
        dbfs=-20.0,
        duration_seconds=ts - BASE_TS,
        model=MODEL,
        bundle_id="bundle-1",
    )


def topic(suffix: str) -> str:
    return f"{PREFIX}/{NODE}/{suffix}"


def validate(message: ReceivedMessage) -> None:
    """Every payload the node publishes must match its schema (or the plain-string vocab)."""
    leaf = message.topic.rsplit("/", 1)[-1]
    text = message.payload.decode("utf-8")
    if leaf == "availability":
        assert text in {"online", "offline", "stopped"}
    elif leaf == "state":
        assert text in {s.value for s in MachineState}
    else:
        schema = {"event": event_schema(), "score": score_schema(), "stats": stats_schema()}[leaf]
        jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(json.loads(text))


def validate_all(sub: Subscriber) -> None:
    for message in sub.messages():
        validate(message)


def first_seqs(sub: Subscriber) -> list[int]:
    """Event seqs in order of first arrival (duplicates are allowed, at-least-once)."""
    seen: list[int] = []
    for message in sub.messages(topic(f"{MACHINE}/event")):
        seq = json.loads(message.payload)["seq"]
        if seq not in seen:
            seen.append(seq)
    return seen


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[..., Subscriber]]:
    created: list[Subscriber] = []

    def factory(broker: MosquittoBroker, **kwargs: object) -> Subscriber:
        sub = Subscriber(broker.host, broker.port, f"{PREFIX}/#", **kwargs)  # type: ignore[arg-type]
        created.append(sub)
        return sub.start()

    yield factory
    for sub in created:
        sub.close()


@pytest.fixture
def publisher_factory(outbox: Outbox) -> Iterator[Callable[..., MqttPublisher]]:
    created: list[MqttPublisher] = []

    def factory(port: int, box: Outbox | None = None, **changes: object) -> MqttPublisher:
        publisher = publisher_for(port, box or outbox, **changes)
        created.append(publisher)
        return publisher

    yield factory
    for publisher in created:
        publisher.stop(timeout_seconds=2)


def test_online_retained_for_late_subscriber(
    mosquitto_broker: MosquittoBroker,  # noqa: F811
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
) -> None:
    early = subscriber_factory(mosquitto_broker)
    publisher = publisher_factory(mosquitto_broker.port)
    publisher.start()
    assert wait_until(lambda: publisher.connected)
    publisher.publish_state(MACHINE, MachineState.CALIBRATING)
    publisher.publish_state(MACHINE, "normal")
    # Once the broker has routed the last state, it holds both retained values: a subscriber
    # arriving earlier could get them live, with the retain flag off.
    assert early.wait_for_payload(topic(f"{MACHINE}/state"), "normal", WAIT_SECONDS)
    assert [m.payload for m in early.messages(topic(f"{MACHINE}/state"))] == [
        b"calibrating",
        b"normal",
    ]
    late = subscriber_factory(mosquitto_broker)
    assert late.wait_for_payload(topic("availability"), "online", WAIT_SECONDS)
    assert late.wait_for_payload(topic(f"{MACHINE}/state"), "normal", WAIT_SECONDS)
    availability = late.messages(topic("availability"))[0]
    assert availability.retain is True and availability.qos == 1
    assert late.messages(topic(f"{MACHINE}/state"))[0].retain is True
    validate_all(late)


def test_event_delivered_with_qos1_not_retained(
    mosquitto_broker: MosquittoBroker,  # noqa: F811
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
    outbox: Outbox,
) -> None:
    sub = subscriber_factory(mosquitto_broker)
    publisher = publisher_factory(mosquitto_broker.port)
    publisher.start()
    assert wait_until(lambda: publisher.connected)
    event = make_event(outbox.next_seq(), kind=EventType.START)
    publisher.publish_event(MACHINE, event)
    assert sub.wait_for(lambda m: first_seqs(sub) == [event.seq], WAIT_SECONDS)
    received = sub.messages(topic(f"{MACHINE}/event"))[0]
    assert received.retain is False and received.qos == 1
    assert EventMessage.from_dict(json.loads(received.payload)) == event
    assert wait_until(lambda: outbox.depth() == 0)  # deleted only after the PUBACK
    stats = publisher.stats()
    assert stats.acked == 1 and stats.published >= 1
    validate_all(sub)


def test_stopped_on_clean_stop_and_no_will(
    mosquitto_broker: MosquittoBroker,  # noqa: F811
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
) -> None:
    sub = subscriber_factory(mosquitto_broker)
    publisher = publisher_factory(mosquitto_broker.port)
    publisher.start()
    assert sub.wait_for_payload(topic("availability"), "online", WAIT_SECONDS)
    publisher.stop(timeout_seconds=5)
    assert not publisher.connected
    assert sub.wait_for_payload(topic("availability"), "stopped", WAIT_SECONDS)
    # A fresh subscriber sees the retained value: 'stopped', not the will's 'offline'.
    late = subscriber_factory(mosquitto_broker)
    assert late.wait_for(lambda m: bool(late.messages(topic("availability"))), WAIT_SECONDS)
    assert late.messages(topic("availability"))[-1].payload == b"stopped"
    assert all(m.payload != b"offline" for m in sub.messages(topic("availability")))


CHILD_SCRIPT = """
import sys, time
from edge_asd.mqtt.outbox import Outbox
from edge_asd.config import MqttConfig
from edge_asd.mqtt.publisher import MqttPublisher
port, db = int(sys.argv[1]), sys.argv[2]
config = MqttConfig(host="127.0.0.1", port=port, keepalive_seconds=5)
publisher = MqttPublisher(config, Outbox(db), node_id=sys.argv[3])
publisher.start()
for _ in range(1000):
    if publisher.connected:
        print("ready", flush=True)
        break
    time.sleep(0.02)
time.sleep(120)
"""


def test_will_offline_when_process_is_killed(
    mosquitto_broker: MosquittoBroker,  # noqa: F811
    subscriber_factory: Callable[..., Subscriber],
    tmp_path: Path,
) -> None:
    sub = subscriber_factory(mosquitto_broker)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD_SCRIPT,
            str(mosquitto_broker.port),
            str(tmp_path / "child.sqlite"),
            NODE,
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        ready: list[bytes] = []
        reader = threading.Thread(target=lambda: ready.append(child.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(WAIT_SECONDS)
        assert ready == [b"ready\n"]
        assert sub.wait_for_payload(topic("availability"), "online", WAIT_SECONDS)
        child.kill()  # SIGKILL: no DISCONNECT, so the broker must send the will
        child.wait(WAIT_SECONDS)
        assert sub.wait_for_payload(topic("availability"), "offline", WAIT_SECONDS)
        offline = [m for m in sub.messages(topic("availability")) if m.payload == b"offline"]
        assert offline[0].qos == 1
        late = subscriber_factory(mosquitto_broker)
        assert late.wait_for_payload(topic("availability"), "offline", WAIT_SECONDS)
        assert late.messages(topic("availability"))[0].retain is True
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT_SECONDS)


def test_events_while_broker_down_delivered_in_order_after_restart(
    tmp_path: Path,
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
    outbox: Outbox,
) -> None:
    # Persistence + a durable subscriber session: the watcher misses nothing across the restart.
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    try:
        sub = subscriber_factory(broker, client_id="watcher", clean_session=False)
        publisher = publisher_factory(broker.port)
        publisher.start()
        assert wait_until(lambda: publisher.connected)
        publisher.publish_state(MACHINE, MachineState.NORMAL)
        publisher.publish_event(MACHINE, make_event(outbox.next_seq(), kind=EventType.START))
        assert sub.wait_for(lambda m: first_seqs(sub) == [1], WAIT_SECONDS)

        broker.stop()
        assert wait_until(lambda: not publisher.connected)
        sent = [make_event(outbox.next_seq()) for _ in range(5)]
        for event in sent:
            publisher.publish_event(MACHINE, event)
        assert outbox.depth() == len(sent)  # stored, waiting for the broker
        publisher.publish_state(MACHINE, MachineState.ANOMALOUS)  # remembered while offline

        broker.start()
        assert sub.wait_for(lambda m: first_seqs(sub) == [1, 2, 3, 4, 5, 6], WAIT_SECONDS)
        by_seq = {
            json.loads(m.payload)["seq"]: m.payload for m in sub.messages(topic(f"{MACHINE}/event"))
        }
        for event in sent:  # original payload: original ts and seq
            assert by_seq[event.seq] == event.to_json().encode()
        assert wait_until(lambda: outbox.depth() == 0)
        assert publisher.stats().reconnects >= 1
        late = subscriber_factory(broker)
        assert late.wait_for_payload(topic(f"{MACHINE}/state"), "anomalous", WAIT_SECONDS)
        validate_all(sub)
    finally:
        broker.stop()


def test_many_events_survive_a_broker_restart_in_the_middle_of_the_drain(
    tmp_path: Path,
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
    outbox: Outbox,
) -> None:
    """More events than the in-flight window, and the broker goes away while draining."""
    total = 10 * MAX_INFLIGHT_MESSAGES
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    try:
        sub = subscriber_factory(broker, client_id="watcher", clean_session=False)
        broker.stop()
        publisher = publisher_factory(broker.port)
        publisher.start()
        for _ in range(total):
            publisher.publish_event(MACHINE, make_event(outbox.next_seq()))
        assert outbox.depth() == total
        broker.start()
        assert sub.wait_for(lambda m: len(first_seqs(sub)) >= 1, WAIT_SECONDS)
        broker.stop()  # mid-drain (or just after): nothing may be lost either way
        broker.start()
        expected = list(range(1, total + 1))
        assert sub.wait_for(lambda m: first_seqs(sub) == expected, WAIT_SECONDS), first_seqs(sub)[
            :50
        ]
        assert wait_until(lambda: outbox.depth() == 0)
        assert publisher.stats().acked == total
    finally:
        broker.stop()


def test_outbox_of_crashed_run_is_drained_at_start(
    mosquitto_broker: MosquittoBroker,  # noqa: F811
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
    tmp_path: Path,
) -> None:
    path = tmp_path / "previous.sqlite"
    crashed = Outbox(path)  # a previous run that stored events and died before sending
    stored = [make_event(crashed.next_seq()) for _ in range(4)]
    for event in stored:
        crashed.put(topic(f"{MACHINE}/event"), event.to_json().encode(), 1, retain=False)
    # never closed, like a SIGKILL

    sub = subscriber_factory(mosquitto_broker)
    box = Outbox(path)
    try:
        assert box.next_seq() == len(stored) + 1  # seq continues after the crash
        publisher = publisher_factory(mosquitto_broker.port, box)
        publisher.start()
        assert sub.wait_for(lambda m: first_seqs(sub) == [1, 2, 3, 4], WAIT_SECONDS)
        assert wait_until(lambda: box.depth() == 0)
        publisher.stop(timeout_seconds=5)
        validate_all(sub)
    finally:
        box.close()
        crashed.close()


def test_unsendable_outbox_row_does_not_block_the_queue(
    mosquitto_broker: MosquittoBroker,  # noqa: F811
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
    outbox: Outbox,
) -> None:
    outbox.put(f"{PREFIX}/{NODE}/+/event", b"{}", 1)  # a wildcard topic paho refuses to publish
    good = make_event(outbox.next_seq())
    sub = subscriber_factory(mosquitto_broker)
    publisher = publisher_factory(mosquitto_broker.port)
    publisher.start()
    publisher.publish_event(MACHINE, good)
    assert sub.wait_for(lambda m: first_seqs(sub) == [good.seq], WAIT_SECONDS)
    assert wait_until(lambda: outbox.depth() == 0)


def test_outbox_write_failure_falls_back_to_direct_publish(
    mosquitto_broker: MosquittoBroker,  # noqa: F811
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sub = subscriber_factory(mosquitto_broker)
    publisher = publisher_factory(mosquitto_broker.port)
    publisher.start()
    assert wait_until(lambda: publisher.connected)
    monkeypatch.setattr(outbox, "put", lambda *args, **kwargs: None)  # disk full
    event = make_event(outbox.next_seq())
    publisher.publish_event(MACHINE, event)
    assert sub.wait_for(lambda m: first_seqs(sub) == [event.seq], WAIT_SECONDS)
    stats = publisher.stats()
    assert stats.events_not_stored == 1 and stats.direct_sent == 1 and stats.events_lost == 0


def test_degraded_outbox_holds_events_in_memory_while_the_broker_is_away(
    tmp_path: Path,
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outbox cannot store and broker away: events wait in a bounded memory queue (the oldest
    dropped and counted beyond it) and go out when the broker is back."""
    monkeypatch.setattr(publisher_module, "DIRECT_QUEUE_MAX_MESSAGES", 2)
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    try:
        # A durable session: the broker keeps what arrives before the watcher is back.
        sub = subscriber_factory(broker, client_id="watcher", clean_session=False)
        publisher = publisher_factory(broker.port)
        publisher.start()
        assert wait_until(lambda: publisher.connected)
        broker.stop()
        assert wait_until(lambda: not publisher.connected)
        monkeypatch.setattr(outbox, "put", lambda *args, **kwargs: None)  # disk full
        sent = [make_event(outbox.next_seq()) for _ in range(3)]
        for event in sent:
            publisher.publish_event(MACHINE, event)  # must not raise
        stats = publisher.stats()
        assert stats.events_not_stored == 3 and stats.direct_queue == 2
        assert stats.events_lost == 1
        broker.start()
        assert sub.wait_for(lambda m: first_seqs(sub) == [e.seq for e in sent[1:]], WAIT_SECONDS), (
            first_seqs(sub)
        )
        stats = publisher.stats()
        assert stats.direct_queue == 0 and stats.direct_sent == 2 and stats.events_lost == 1
    finally:
        broker.stop()


def test_broker_down_at_start(
    tmp_path: Path,
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    try:
        # Create the watcher's durable session, then take the broker away.
        sub = subscriber_factory(broker, client_id="watcher", clean_session=False)
        broker.stop()
        publisher = publisher_factory(broker.port)
        caplog.set_level(logging.DEBUG, logger="edge_asd.mqtt.publisher")
        starter = threading.Thread(target=publisher.start)
        starter.start()
        starter.join(WAIT_SECONDS)
        assert not starter.is_alive()  # start() did not wait for the broker
        assert not publisher.connected
        for _ in range(3):
            publisher.publish_event(MACHINE, make_event(outbox.next_seq()))
        assert outbox.depth() == 3
        # Several retries happen, but the failure is logged once.
        assert wait_until(lambda: caplog.text.count("Connection failed, retrying") >= 2)
        warnings = [r for r in caplog.records if "Cannot connect to MQTT broker" in r.message]
        assert len(warnings) == 1
        assert publisher.stats().last_connect_error
        assert publisher.stats().published == 0

        broker.start()
        assert wait_until(lambda: publisher.connected)
        assert sub.wait_for(lambda m: first_seqs(sub) == [1, 2, 3], WAIT_SECONDS)
        assert wait_until(lambda: outbox.depth() == 0)
        assert publisher.stats().last_connect_error is None
        assert publisher.stats().reconnects == 0  # the first connection is not a reconnect
        validate_all(sub)
    finally:
        broker.stop()


def test_telemetry_sent_when_online_dropped_and_counted_when_offline(
    mosquitto_broker: MosquittoBroker,  # noqa: F811
    publisher_factory: Callable[..., MqttPublisher],
    subscriber_factory: Callable[..., Subscriber],
) -> None:
    sub = subscriber_factory(mosquitto_broker)
    publisher = publisher_factory(mosquitto_broker.port)
    publisher.start()
    assert wait_until(lambda: publisher.connected)
    score = ScoreMessage(
        node=NODE,
        machine=MACHINE,
        ts=format_ts(BASE_TS),
        score=0.4,
        threshold=1.2,
        dbfs=float("-inf"),
        state=MachineState.NORMAL,
    )
    score_topic = publisher.topics.score(MACHINE)
    assert publisher.publish_telemetry(score_topic, score.to_json()) is True
    assert sub.wait_for(lambda m: bool(sub.messages(score_topic)), WAIT_SECONDS)
    received = sub.messages(score_topic)[0]
    assert received.retain is False and received.qos == 0
    assert json.loads(received.payload) == score.to_dict()  # -inf dBFS arrives as null

    mosquitto_broker.stop()
    assert wait_until(lambda: not publisher.connected)
    assert publisher.publish_telemetry(score_topic, score.to_json()) is False
    assert publisher.publish_telemetry(score_topic, score.to_json()) is False
    stats = publisher.stats()
    assert stats.telemetry_dropped == 2 and stats.telemetry_published == 1
    validate_all(sub)


def test_password_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    password_file = tmp_path / "passwd"
    secret = "s3cret-Pa55-word"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(password_file), "sensor", secret],
        check=True,
        timeout=WAIT_SECONDS,
        capture_output=True,
    )
    password_file.chmod(0o600)
    broker = MosquittoBroker(
        tmp_path / "broker",
        extra_config=["allow_anonymous false", f"password_file {password_file}"],
    )
    broker.start()
    box = Outbox(tmp_path / "o.sqlite")
    caplog.set_level(logging.DEBUG)
    wrong = publisher_for(broker.port, box, username="sensor", password=secret + "-wrong")
    right = publisher_for(broker.port, box, node_id="gw-other", username="sensor", password=secret)
    try:
        wrong.start()
        assert wait_until(lambda: wrong.stats().last_connect_error is not None)
        assert "refused" in (wrong.stats().last_connect_error or "")
        assert not wrong.connected
        wrong.stop(timeout_seconds=2)
        right.start()
        assert wait_until(lambda: right.connected)
        right.publish_event(MACHINE, make_event(box.next_seq()))
        assert wait_until(lambda: box.depth() == 0)
        right.stop(timeout_seconds=5)
        assert "refused" in caplog.text  # the refusal itself is logged
        assert secret not in caplog.text
        assert secret not in repr(right._config) and secret not in repr(right)
    finally:
        wrong.stop(timeout_seconds=1)
        right.stop(timeout_seconds=1)
        box.close()
        broker.stop()


def _make_tls_files(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1; returns (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / f"{name}-ca.key", directory / f"{name}-ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [
            *("openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt),
            *("-days", "2", "-subj", f"/CN={name}-test-ca"),
        ],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [
            *("openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key),
            *("-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext),
        ],
    ]
    for command in commands:
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=30)
    return ca_crt, crt, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_tls_connection_verifies_the_broker(tmp_path: Path) -> None:
    ca, crt, key = _make_tls_files(tmp_path / "tls", "good")
    other_ca, _, _ = _make_tls_files(tmp_path / "other", "other")
    broker = MosquittoBroker(
        tmp_path / "broker", extra_config=[f"cafile {ca}", f"certfile {crt}", f"keyfile {key}"]
    )
    broker.start()
    box = Outbox(tmp_path / "o.sqlite")
    trusted = publisher_for(broker.port, box, tls=TlsConfig(enabled=True, ca_file=ca))
    untrusted = publisher_for(
        broker.port, box, node_id="gw-x", tls=TlsConfig(enabled=True, ca_file=other_ca)
    )
    try:
        untrusted.start()
        assert wait_until(lambda: untrusted.stats().last_connect_error is not None)
        assert "certificate" in (untrusted.stats().last_connect_error or "").lower()
        assert not untrusted.connected
        untrusted.stop(timeout_seconds=1)
        trusted.start()
        assert wait_until(lambda: trusted.connected)
        trusted.publish_event(MACHINE, make_event(box.next_seq()))
        assert wait_until(lambda: box.depth() == 0)  # acknowledged over TLS
    finally:
        trusted.stop(timeout_seconds=2)
        untrusted.stop(timeout_seconds=1)
        box.close()
        broker.stop()


def test_missing_tls_file_names_the_key(outbox: Outbox, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(PublisherError, match=r"mqtt\.tls\.ca_file") as info:
        publisher_for(free_port(), outbox, tls=TlsConfig(enabled=True, ca_file=missing))
    assert str(missing) in str(info.value)


def test_bad_node_id_rejected(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="node_id"):
        publisher_for(free_port(), outbox, node_id="a/b")


def test_client_id_is_the_configs(outbox: Outbox) -> None:
    """The publisher connects as `check-config` reports: one function decides, sanitising."""
    node = "gw.hall-2"  # a valid node id whose '.' is not kept in the client id
    config = config_for(free_port())
    publisher = MqttPublisher(config, outbox, node_id=node)
    assert publisher.client_id == default_client_id(node) == "edge-asd-gw-hall-2"
    assert publisher.client_id == config.client_id_for(node)
    configured = MqttPublisher(
        config_for(free_port(), client_id="press-hall"), outbox, node_id=node
    )
    assert configured.client_id == "press-hall"


def test_stop_without_broker_is_bounded(
    publisher_factory: Callable[..., MqttPublisher], outbox: Outbox
) -> None:
    publisher = publisher_factory(free_port())
    publisher.start()
    publisher.publish_event(MACHINE, make_event(outbox.next_seq()))
    stopper = threading.Thread(target=publisher.stop, kwargs={"timeout_seconds": 1})
    stopper.start()
    stopper.join(WAIT_SECONDS)
    assert not stopper.is_alive()
    assert outbox.depth() == 1  # kept for the next start


def test_updates_are_stored_without_an_fsync_starts_and_ends_with_one(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update is superseded by the next one or the end: the outbox may skip its fsync
    (flash wear at 1 Hz during a long event); a start and an end are durable."""
    calls: list[tuple[str, bool]] = []
    real_put = outbox.put

    def put(topic: str, payload: bytes, qos: int, retain: bool = False, *, durable: bool = True):  # type: ignore[no-untyped-def]
        calls.append((json.loads(payload)["type"], durable))
        return real_put(topic, payload, qos, retain, durable=durable)

    monkeypatch.setattr(outbox, "put", put)
    publisher = publisher_for(1, outbox)  # never started: the outbox is all that is used
    for kind in (EventType.START, EventType.UPDATE, EventType.END):
        publisher.publish_event(MACHINE, make_event(outbox.next_seq(), kind=kind))
    assert calls == [("start", True), ("update", False), ("end", True)]
