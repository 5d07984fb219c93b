"""`edge-asd run`: the streaming daemon.

Threads (all named, one stop event, torn down in reverse start order):
- `capture-<device>` (one per audio device, `capture.CaptureSupervisor`): blocks into a queue;
- `inference`: windows, embeds, scores, runs each machine's detector, hands events to the outbox;
- the MQTT publisher's own threads (`publisher.MqttPublisher`);
- the main thread: signals, readiness, stats, STATUS lines.

Detection never waits on the network: events go to the SQLite outbox, the publisher drains it.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import numpy as np

from edge_asd import __version__
from edge_asd.audio.capture import CapturedBlock, CaptureSupervisor
from edge_asd.config import Config, ConfigError, MachineConfig, default_client_id
from edge_asd.constants import EXIT_OK, seconds_to_samples
from edge_asd.detection.bundle import Bundle, BundleError, load_bundle
from edge_asd.detection.detector import DetectorSettings, EventTransition
from edge_asd.detection.pipeline import MachinePipeline, PipelineStep, StateChange, WindowResult
from edge_asd.detection.states import MachineState
from edge_asd.model.encoder import Encoder, ModelError, resolve_model
from edge_asd.mqtt.messages import EventMessage, ScoreMessage, StatsMessage, Topics, format_ts
from edge_asd.mqtt.outbox import Outbox
from edge_asd.mqtt.publisher import MqttPublisher, MqttSettings, Publisher
from edge_asd.service.notify import Notifier, configure_logging, watchdog_interval_seconds

_LOGGER = logging.getLogger(__name__)

BLOCK_QUEUE_SIZE = 200
"""Blocks buffered between capture and inference (~20 s at 0.1 s blocks) before dropping."""
QUEUE_POLL_SECONDS = 0.2
READY_WAIT_SECONDS = 10.0
"""How long start-up waits for each device's first open attempt before READY=1."""
THREAD_JOIN_SECONDS = 2.0
PUBLISHER_STOP_SECONDS = 2.0
STATUS_INTERVAL_SECONDS = 10.0
DEFAULT_WATCHDOG_SECONDS = 15.0
"""Watchdog cadence when systemd did not ask for one (the notifier then ignores it anyway)."""
LATENCY_HISTORY = 1000
"""Per-window inference times kept for the p50/p95 in stats."""


class StartupError(Exception):
    """The daemon cannot start: bad model, bundle, outbox or settings. Message names it."""


# ---------------------------------------------------------------- start-up checks


def _open_encoder(config: Config) -> Encoder:
    try:
        return Encoder(resolve_model(config.model))
    except ModelError as exc:
        raise StartupError(f"model: {exc}") from None


def _load_machine_bundle(index: int, machine: MachineConfig, encoder: Encoder) -> Bundle:
    key = f"machines.{index}"
    window = seconds_to_samples(machine.window_seconds)
    if window != encoder.info.window_samples:
        raise StartupError(
            f"{key}.window_seconds: {machine.window_seconds} s = {window} samples, but model "
            f"{encoder.info.name} takes {encoder.info.window_samples}-sample windows"
        )
    try:
        bundle = load_bundle(machine.bundle, model=encoder.info)
    except BundleError as exc:
        raise StartupError(f"{key}.bundle: {exc}") from None
    if bundle.window_samples != window:
        raise StartupError(
            f"{key}.bundle: {machine.bundle} was calibrated with {bundle.window_samples}-sample "
            f"windows but window_seconds is {machine.window_seconds}; recalibrate"
        )
    return bundle


def check_setup(config: Config, *, check_devices: bool = False) -> list[str]:
    """Everything `run` checks before starting; returns a summary, raises StartupError."""
    if not config.machines:
        raise StartupError("machines: at least one machine is needed to run")
    encoder = _open_encoder(config)
    lines = [
        f"model {encoder.info.name} {encoder.info.version} ({encoder.info.path}, "
        f"{encoder.info.embedding_dim}-d, {encoder.info.window_samples}-sample windows)"
    ]
    for index, machine in enumerate(config.machines):
        bundle = _load_machine_bundle(index, machine, encoder)
        threshold = _threshold(machine, bundle)
        lines.append(
            f"machine {machine.name}: device {machine.device!r} channel {machine.channel}, "
            f"bundle {bundle.bundle_id} ({len(bundle.embeddings)} windows, {bundle.method}), "
            f"threshold {threshold:.4f}"
        )
    try:
        config.mqtt.resolve_password()
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    client_id = config.mqtt.client_id or default_client_id(config.node_id)
    lines.append(
        f"mqtt {config.mqtt.host}:{config.mqtt.port} as {client_id}, "
        f"topics {config.mqtt.topic_prefix}/{config.node_id}/..."
    )
    if check_devices:
        lines.extend(_check_devices(config))
    return lines


def _check_devices(config: Config) -> list[str]:
    from edge_asd.audio.capture import open_source
    from edge_asd.audio.sources import AudioDeviceError

    lines = []
    for machine in config.machines:
        try:
            source = open_source(machine.device, (machine.channel,))
            lines.append(f"device {machine.device!r}: {source.description}")
        except AudioDeviceError as exc:
            raise StartupError(f"machines: {exc}") from None
    return lines


def _threshold(machine: MachineConfig, bundle: Bundle) -> float:
    if machine.threshold is not None:
        return machine.threshold
    return bundle.threshold * machine.threshold_scale


# ---------------------------------------------------------------- per-machine state


@dataclass
class MachineRuntime:
    """One machine as the daemon serves it: its config and bundle, and the pipeline that owns
    framing, scoring, state and detection."""

    config: MachineConfig
    bundle: Bundle
    pipeline: MachinePipeline
    threshold: float
    channel_index: int
    """Column of this machine's channel in its device's captured blocks."""
    last_score_sent: float = 0.0

    @property
    def state(self) -> MachineState | None:
        return self.pipeline.state


@dataclass
class DaemonCounters:
    windows_processed: int = 0
    inference_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_HISTORY))


class Daemon:
    def __init__(self, config: Config, *, publisher: Publisher | None = None) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.notifier = Notifier()
        self.encoder = _open_encoder(config)
        self.machines: list[MachineRuntime] = []
        self._build_machines()
        self.topics = Topics(config.mqtt.topic_prefix, config.node_id)
        try:
            self.outbox = Outbox(
                config.outbox.path,
                max_messages=config.outbox.max_messages,
                max_age_seconds=config.outbox.max_age_seconds,
            )
        except Exception as exc:  # noqa: BLE001 - any failure to open it is a start-up error
            raise StartupError(f"outbox.path: cannot open {config.outbox.path}: {exc}") from None
        self.publisher: Publisher = publisher or MqttPublisher(
            self._mqtt_settings(), self.outbox, node_id=config.node_id
        )
        self.queue: queue.Queue[CapturedBlock] = queue.Queue(maxsize=BLOCK_QUEUE_SIZE)
        self.supervisors: list[CaptureSupervisor] = []
        self._health: dict[str, tuple[bool, str]] = {}
        self._health_lock = threading.Lock()
        self.counters = DaemonCounters()
        self._started = time.monotonic()
        self._inference = threading.Thread(target=self._inference_loop, name="inference")
        self._watchdog_every = watchdog_interval_seconds() or DEFAULT_WATCHDOG_SECONDS
        self._last_watchdog = 0.0
        self._progress_since_watchdog = False

    # ------------------------------------------------------------------ construction

    def _mqtt_settings(self) -> MqttSettings:
        mqtt = self.config.mqtt
        try:
            password = mqtt.resolve_password()
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        return MqttSettings(
            host=mqtt.host,
            port=mqtt.port,
            topic_prefix=mqtt.topic_prefix,
            client_id=mqtt.client_id or default_client_id(self.config.node_id),
            qos=mqtt.qos,
            keepalive_seconds=mqtt.keepalive_seconds,
            username=mqtt.username,
            password=password,
            tls_enabled=mqtt.tls.enabled,
            ca_file=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None,
            cert_file=str(mqtt.tls.cert_file) if mqtt.tls.cert_file else None,
            key_file=str(mqtt.tls.key_file) if mqtt.tls.key_file else None,
        )

    def _build_machines(self) -> None:
        channels_by_device: dict[str, list[int]] = {}
        for index, machine in enumerate(self.config.machines):
            bundle = _load_machine_bundle(index, machine, self.encoder)
            threshold = _threshold(machine, bundle)
            channels = channels_by_device.setdefault(str(machine.device), [])
            channels.append(machine.channel)
            pipeline = MachinePipeline.from_bundle(
                bundle,
                self.encoder,
                hop_samples=seconds_to_samples(machine.hop_seconds),
                detector=DetectorSettings(
                    threshold=threshold,
                    trigger_windows=machine.trigger_windows,
                    release_windows=machine.release_windows,
                    max_event_seconds=machine.max_event_seconds,
                ),
            )
            self.machines.append(
                MachineRuntime(
                    config=machine,
                    bundle=bundle,
                    pipeline=pipeline,
                    threshold=threshold,
                    channel_index=len(channels) - 1,
                )
            )
        self._channels_by_device = channels_by_device

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self._install_signal_handlers()
        self.publisher.start()
        for device_key, channels in self._channels_by_device.items():
            machine = next(m for m in self.machines if str(m.config.device) == device_key)
            supervisor = CaptureSupervisor(
                machine.config.device,
                channels,
                self.queue,
                self.stop_event,
                no_audio_seconds=min(
                    m.config.no_audio_seconds
                    for m in self.machines
                    if str(m.config.device) == device_key
                ),
                on_health=self._health_callback(device_key),
            )
            self.supervisors.append(supervisor)
            supervisor.start()
        self._inference.start()
        for supervisor in self.supervisors:
            supervisor.first_attempt_done.wait(READY_WAIT_SECONDS)
        self.notifier.ready()
        self.notifier.status(self._status_line())
        _LOGGER.info(
            "edge-asd %s running: node %s, %d machine(s), model %s %s",
            __version__,
            self.config.node_id,
            len(self.machines),
            self.encoder.info.name,
            self.encoder.info.version,
        )
        try:
            self._main_loop()
        finally:
            # Whatever went wrong in the main loop, stop the workers and flush: never leave a
            # process that systemd sees as alive with its threads half torn down.
            self.stop_event.set()
            code = self._shutdown()
        return code

    def _main_loop(self) -> None:
        next_stats = time.monotonic() + self.config.stats_interval_seconds
        next_status = time.monotonic() + STATUS_INTERVAL_SECONDS
        while not self.stop_event.is_set():
            self.stop_event.wait(1.0)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + self.config.stats_interval_seconds
                self._publish_stats()
            if now >= next_status:
                next_status = now + STATUS_INTERVAL_SECONDS
                self.notifier.status(self._status_line())

    def _shutdown(self) -> int:
        started = time.monotonic()
        self.notifier.stopping()
        _LOGGER.info("stopping: closing audio, finishing windows, ending open events")
        # Reverse start order: capture first, then inference (which drains what was captured
        # and ends open events), then the publisher (which flushes the outbox).
        for supervisor in self.supervisors:
            supervisor.join(THREAD_JOIN_SECONDS)
            if supervisor.is_alive():
                _LOGGER.warning("capture thread %s did not stop in time", supervisor.name)
        self._inference.join(THREAD_JOIN_SECONDS)
        if self._inference.is_alive():
            _LOGGER.warning("inference thread did not stop in time")
        self._publish_stats()
        self.publisher.stop(PUBLISHER_STOP_SECONDS)
        self.outbox.close()
        _LOGGER.info("stopped in %.1f s", time.monotonic() - started)
        return EXIT_OK

    def request_stop(self) -> None:
        self.stop_event.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum: int, _frame: FrameType | None) -> None:
            _LOGGER.info("received %s", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _health_callback(self, device_key: str) -> Callable[[bool, str], None]:
        def on_health(healthy: bool, message: str) -> None:
            with self._health_lock:
                self._health[device_key] = (healthy, message)

        return on_health

    # ------------------------------------------------------------------ inference thread

    def _inference_loop(self) -> None:
        try:
            while True:
                self._apply_health()
                try:
                    block = self.queue.get(timeout=QUEUE_POLL_SECONDS)
                except queue.Empty:
                    if self.stop_event.is_set() and not any(s.is_alive() for s in self.supervisors):
                        break
                    self._maybe_watchdog()
                    continue
                self._process_block(block)
                self._maybe_watchdog()
        except Exception:
            # A bug here must not leave a zombie service: stop, so systemd restarts us.
            _LOGGER.exception("inference thread failed; stopping")
            self.stop_event.set()
        finally:
            self._end_all_events(time.time())

    def _apply_health(self) -> None:
        with self._health_lock:
            health = dict(self._health)
        for machine in self.machines:
            status = health.get(str(machine.config.device))
            if status is not None:
                self._publish_step(machine, machine.pipeline.set_audio(status[0], time.time()))

    def _process_block(self, block: CapturedBlock) -> None:
        for machine in self.machines:
            if str(machine.config.device) != block.device_key:
                continue
            if block.discontinuity:
                machine.pipeline.reset()
            step = machine.pipeline.push(block.samples[:, machine.channel_index], block.end_ts)
            if step.windows:
                per_window_ms = step.inference_seconds * 1000.0 / len(step.windows)
                self.counters.inference_ms.extend([per_window_ms] * len(step.windows))
                self.counters.windows_processed += len(step.windows)
                self._progress_since_watchdog = True
            self._publish_step(machine, step)

    def _publish_step(self, machine: MachineRuntime, step: PipelineStep) -> None:
        """Publish what the pipeline reported, in time order: a state change caused by an
        event's start goes out right after that start, before later windows' telemetry."""
        changes = iter(step.state_changes)
        pending = next(changes, None)
        for transition in step.transitions:
            while pending is not None and pending.time < transition.ts:
                self._publish_state(machine, pending)
                pending = next(changes, None)
            self._publish_transition(machine, transition)
            while pending is not None and pending.time <= transition.ts:
                self._publish_state(machine, pending)
                pending = next(changes, None)
        while pending is not None:
            self._publish_state(machine, pending)
            pending = next(changes, None)
        interval = machine.config.score_interval_seconds
        for window in step.windows:
            if interval > 0 and window.end_time - machine.last_score_sent >= interval:
                machine.last_score_sent = window.end_time
                self._publish_score(machine, window)

    def _publish_score(self, machine: MachineRuntime, window: WindowResult) -> None:
        message = ScoreMessage(
            node=self.config.node_id,
            machine=machine.config.name,
            ts=format_ts(window.end_time),
            score=window.score,
            threshold=machine.threshold,
            dbfs=window.dbfs,
            state=machine.state or MachineState.NORMAL,
        )
        self.publisher.publish_telemetry(
            self.topics.score(machine.config.name), message.to_json(), qos=0
        )

    def _publish_transition(self, machine: MachineRuntime, transition: EventTransition) -> None:
        info = self.encoder.info
        end = transition.end_ts
        message = EventMessage(
            type=transition.kind,
            event_id=transition.event_id,
            node=self.config.node_id,
            machine=machine.config.name,
            seq=self.outbox.next_seq(),
            ts=format_ts(transition.ts),
            start_ts=format_ts(transition.start_ts),
            end_ts=format_ts(end) if end is not None else None,
            score=transition.score,
            peak_score=transition.peak_score,
            threshold=machine.threshold,
            windows_over=transition.windows_over,
            dbfs=transition.dbfs,
            duration_seconds=(end if end is not None else transition.ts) - transition.start_ts,
            model={"name": info.name, "version": info.version, "sha256": info.sha256},
            bundle_id=machine.bundle.bundle_id,
        )
        _LOGGER.info(
            "%s: event %s %s score %.3f (peak %.3f, threshold %.3f)",
            machine.config.name,
            transition.event_id[:8],
            transition.kind,
            transition.score,
            transition.peak_score,
            machine.threshold,
        )
        self.publisher.publish_event(machine.config.name, message)

    def _publish_state(self, machine: MachineRuntime, change: StateChange) -> None:
        _LOGGER.info("%s: state %s -> %s", machine.config.name, change.previous, change.state)
        self.publisher.publish_state(machine.config.name, change.state)

    def _end_all_events(self, ts: float) -> None:
        for machine in self.machines:
            self._publish_step(machine, machine.pipeline.close(ts))

    def _maybe_watchdog(self) -> None:
        """WATCHDOG=1 only while the pipeline demonstrably works.

        Progress means windows were processed, or every device is knowingly in its
        reopen/back-off loop (state no_audio, supervisor thread alive and iterating): a missing
        microphone must not restart the service every WatchdogSec, a stuck pipeline must.
        """
        now = time.monotonic()
        if now - self._last_watchdog < self._watchdog_every:
            return
        supervisors_alive = all(
            s.is_alive() and now - s.heartbeat < self._watchdog_every for s in self.supervisors
        )
        waiting_for_audio = supervisors_alive and all(not s.healthy for s in self.supervisors)
        if self._progress_since_watchdog or waiting_for_audio:
            self.notifier.watchdog()
            self._last_watchdog = now
            self._progress_since_watchdog = False

    # ------------------------------------------------------------------ reporting

    def _percentile_ms(self, q: float) -> float | None:
        history = list(self.counters.inference_ms)
        if not history:
            return None
        return float(np.percentile(history, q))

    def _publish_stats(self) -> None:
        try:
            self._publish_stats_now()
        except Exception:
            # Telemetry must never take the daemon down.
            _LOGGER.exception("could not publish stats")

    def _publish_stats_now(self) -> None:
        totals = [s.totals() for s in self.supervisors]
        publisher_stats = self.publisher.stats()
        message = StatsMessage(
            node=self.config.node_id,
            ts=format_ts(time.time()),
            uptime_seconds=time.monotonic() - self._started,
            windows_processed=self.counters.windows_processed,
            capture_overruns=sum(t.overruns for t in totals),
            overwritten_frames=sum(t.overwritten_frames for t in totals),
            # Blocks dropped between capture and inference, in hops of the first machine: the
            # windows that could not be analysed.
            dropped_windows=sum(t.dropped_frames for t in totals)
            // self.machines[0].pipeline.hop_samples,
            inference_ms_p50=self._percentile_ms(50),
            inference_ms_p95=self._percentile_ms(95),
            outbox_depth=self.outbox.depth(),
            outbox_discarded=self.outbox.discarded,
            outbox_write_errors=self.outbox.write_errors,
            reconnects=publisher_stats.reconnects,
            version=__version__,
            machines={m.config.name: m.state or MachineState.NO_AUDIO for m in self.machines},
        )
        self.publisher.publish_telemetry(self.topics.stats, message.to_json(), qos=0)

    def _status_line(self) -> str:
        states = ", ".join(f"{m.config.name}={m.state or 'starting'}" for m in self.machines)
        p50 = self._percentile_ms(50)
        latency = f"{p50:.1f} ms/window" if p50 is not None else "no windows yet"
        mqtt = "mqtt up" if self.publisher.connected else "mqtt down"
        return (
            f"{states}; {self.counters.windows_processed} windows, {latency}; {mqtt}; "
            f"outbox {self.outbox.depth()}"
        )


def run_daemon(config: Config, *, log_level: str | None = None) -> int:
    """Entry point of `edge-asd run`; `log_level` overrides the config's. Returns the exit code."""
    configure_logging(log_level or config.log_level)
    daemon = Daemon(config)
    return daemon.run()
