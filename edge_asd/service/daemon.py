"""`edge-asd run`: the streaming daemon.

Threads (all named, one stop event, torn down in reverse start order):
- `capture-<device>` (one per audio device, `capture.CaptureSupervisor`): blocks into a queue;
- `inference`: windows, embeds, scores, runs each machine's detector, hands events to the outbox;
- the MQTT publisher's own threads (`publisher.MqttPublisher`);
- the main thread: signals, supervision of the others, the systemd watchdog, stats, STATUS.

Detection never waits on the network: events go to the SQLite outbox, the publisher drains it.

Supervision. Every worker thread beats a heartbeat; the main loop checks them a few times a
second. A thread that died (a bug) makes the daemon publish ``fault`` for the machines it
served, stop, and exit with EXIT_FAILURE, so that systemd (`Restart=on-failure`) restarts it;
an operator's SIGTERM exits 0 and publishes ``stopped``. A thread that hangs puts its machines
in ``fault`` (reason in the log and the stats) and stops the watchdog pings, so systemd kills
and restarts the service; without a watchdog the daemon exits itself after `HANG_EXIT_SECONDS`.
The watchdog is fed only while every configured machine is served (its device's blocks are
being processed) or knowingly waiting for its device (capture thread alive, in its reopen
loop): one dead microphone among several is visible, not hidden behind the others' progress.

Time. Detection runs on a monotonic timeline (`timeline.Timeline`); payload timestamps are
converted to the wall clock when published, so a wall-clock step (NTP at boot) is logged and
re-anchored but never makes a duration negative or a timeout misfire.
"""

from __future__ import annotations

import logging
import math
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Final

import numpy as np

from edge_asd import __version__
from edge_asd.audio.capture import CapturedBlock, CaptureSupervisor, is_wav_device, open_source
from edge_asd.audio.sources import init_portaudio, rescans_blocked_seconds
from edge_asd.config import Config, ConfigError, MachineConfig
from edge_asd.constants import EXIT_FAILURE, EXIT_OK
from edge_asd.detection.bundle import Bundle
from edge_asd.detection.detector import EventTransition
from edge_asd.detection.environment import EnvironmentSummary
from edge_asd.detection.pipeline import MachinePipeline, PipelineStep, StateChange, WindowResult
from edge_asd.detection.states import EndReason, EventType, MachineState
from edge_asd.mqtt.messages import (
    EnvironmentInfo,
    EnvironmentMessage,
    EventMessage,
    ModelRef,
    OutboxMode,
    ScoreMessage,
    StatsMessage,
    Topics,
    format_ts,
)
from edge_asd.mqtt.outbox import Outbox, OutboxError
from edge_asd.mqtt.publisher import MqttPublisher, Publisher, PublisherError
from edge_asd.service.faults import FaultInjection
from edge_asd.service.logs import configure_logging
from edge_asd.service.notify import Notifier, watchdog_interval_seconds
from edge_asd.service.open_events import OpenEvent, OpenEventStore, path_for
from edge_asd.service.shift import ShiftFeatures
from edge_asd.service.startup import (
    MachineSetup,
    Problem,
    StartupError,
    inspect_setup,
    machine_setups,
    outbox_path_problem,
    outbox_problem,
)
from edge_asd.service.timeline import Timeline

_LOGGER = logging.getLogger(__name__)

BLOCK_QUEUE_SIZE: Final = 200
"""Blocks buffered between capture and inference (~20 s at 0.1 s blocks) before dropping."""
QUEUE_POLL_SECONDS: Final = 0.2
READY_WAIT_SECONDS: Final = 10.0
"""How long start-up waits for each device's first open attempt before READY=1."""
THREAD_JOIN_SECONDS: Final = 2.0
PUBLISHER_STOP_SECONDS: Final = 2.0
STATUS_INTERVAL_SECONDS: Final = 10.0
DEFAULT_WATCHDOG_SECONDS: Final = 15.0
"""Watchdog cadence when systemd did not ask for one (the notifier then ignores it anyway)."""
LATENCY_HISTORY: Final = 1000
"""Per-window inference times kept for the p50/p95 in stats."""
SUPERVISE_SECONDS: Final = 0.25
"""Main-loop period: how quickly a dead or hung worker thread is noticed."""
INFERENCE_BEAT_SECONDS: Final = 2.0
"""The inference thread beats at least every QUEUE_POLL_SECONDS and per block; silent longer,
the watchdog is not fed."""
INFERENCE_HANG_SECONDS: Final = 5.0
"""Silent this long, the inference thread hangs: every machine goes to ``fault``."""
CAPTURE_HANG_SECONDS: Final = 5.0
"""A capture thread beats at least every 0.2 s (reads and waits are bounded), and a stream's
stop is abandoned after 2 s: silent this long, it hangs and its machines go to ``fault``."""
BLOCK_STALL_SECONDS: Final = 1.0
"""Processing one block (a few windows) takes milliseconds; longer than this (or half a ping
interval), the watchdog is not fed until it finishes."""
HANG_EXIT_SECONDS: Final = 60.0
"""A hang that lasts this long ends the daemon (EXIT_FAILURE) even without a systemd watchdog."""


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
    last_score_sent: float = -math.inf
    """Timeline time of the last score telemetry (monotonic: a clock step cannot mute it)."""
    fault: str | None = None
    """Why the daemon cannot serve this machine now (state ``fault``), or None."""

    @property
    def state(self) -> MachineState | None:
        return self.pipeline.state

    @property
    def shown_state(self) -> MachineState:
        """The state the plant sees: ``fault`` overrides what the pipeline says."""
        if self.fault is not None:
            return MachineState.FAULT
        return self.pipeline.state or MachineState.NO_AUDIO


@dataclass
class DaemonCounters:
    windows_processed: int = 0
    inference_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_HISTORY))
    block_gaps: int = 0
    """Blocks of a device missing between two it delivered (dropped from the full queue)."""


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        publisher: Publisher | None = None,
        faults: FaultInjection | None = None,
        clock: Timeline | None = None,
    ) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.notifier = Notifier()
        self.faults = faults if faults is not None else FaultInjection.from_env()
        self.clock = clock or Timeline(wall=self.faults.wall_clock)
        if any(not is_wav_device(m.device) for m in config.machines):
            init_portaudio()  # before the model: see init_portaudio
        report = inspect_setup(config, for_run=True)
        for problem in report.problems:
            if not (problem.severity == "error" and problem.blocks_run):
                log = _LOGGER.warning if problem.severity == "warning" else _LOGGER.error
                log("config: %s", problem)
        blocking = [p for p in report.errors if p.blocks_run]
        if blocking or report.encoder is None:
            raise StartupError(blocking or [Problem("model", "no encoder")])
        self.encoder = report.encoder
        self.machines: list[MachineRuntime] = []
        self._build_machines(report.setups)
        self.topics = Topics(config.mqtt.topic_prefix, config.node_id)
        self.outbox = self._open_outbox()
        self.open_events = OpenEventStore(path_for(config.outbox.path))
        try:
            self.publisher: Publisher = publisher or MqttPublisher(
                config.mqtt, self.outbox, node_id=config.node_id, password=self._mqtt_password()
            )
        except (PublisherError, StartupError):
            self.outbox.close()
            raise
        self.queue: queue.Queue[CapturedBlock] = queue.Queue(maxsize=BLOCK_QUEUE_SIZE)
        self.supervisors: list[CaptureSupervisor] = []
        self._health: dict[str, tuple[bool, str]] = {}
        self._health_lock = threading.Lock()
        self._state_lock = threading.Lock()
        """Orders state publishes between the inference thread and the supervisor (faults)."""
        self.counters = DaemonCounters()
        self._started = time.monotonic()
        self._inference = threading.Thread(
            target=self._inference_loop, name="inference", daemon=True
        )
        self._inference_beat = time.monotonic()
        self._inference_busy_since: float | None = None
        """Monotonic time the inference thread began the block it is processing, or None."""
        self._device_progress: dict[str, float] = {}
        """Monotonic time the inference thread last processed a block of each device."""
        self._last_block_seq: dict[str, int] = {}
        self._watchdog_every = watchdog_interval_seconds() or DEFAULT_WATCHDOG_SECONDS
        self._last_watchdog = 0.0
        self._reload_requested = threading.Event()
        self._pending_setups: list[MachineSetup] | None = None
        self._pending_lock = threading.Lock()
        self._failure: str | None = None
        self._failure_lock = threading.Lock()
        self._hang_since: float | None = None
        self._logged_publisher_problem: str | None = None
        self._stop_requested_at: float | None = None
        self._next_stats = 0.0
        self._outbox_degraded: bool | None = None
        """The outbox's mode as last reported (None before the first check)."""
        self._was_connected = False
        self._fallback_seq = 0
        # Clips, explanations, status page, metrics, discovery, controls (service.shift).
        self.shift = ShiftFeatures(self)

    # ------------------------------------------------------------------ construction

    def _mqtt_password(self) -> str | None:
        try:
            return self.config.mqtt.resolve_password()
        except ConfigError as exc:
            raise StartupError(str(exc)) from None

    def _open_outbox(self) -> Outbox:
        path = self.config.outbox.path
        never = outbox_path_problem(path)
        if never is not None:
            raise StartupError(never)
        try:
            outbox = Outbox(
                path,
                max_messages=self.config.outbox.max_messages,
                max_age_seconds=self.config.outbox.max_age_seconds,
                reopen_interval_seconds=self.config.outbox.retry_seconds,
            )
        except Exception as exc:  # noqa: BLE001 - any failure to open it is a start-up error
            raise StartupError(outbox_problem(path, exc)) from None
        if outbox.degraded:
            # A full or read-only /var at boot: detection must not wait for the disk. Events go
            # out directly (bounded, not durable), the retained stats say so, and the main loop
            # retries the file every `outbox.retry_seconds`.
            _LOGGER.error(
                "outbox degraded at start (%s): events are published directly, without "
                "durability, until %s can be written (retried every %g s)",
                outbox.degraded_reason,
                path,
                self.config.outbox.retry_seconds,
            )
        return outbox

    def _build_machines(self, setups: Sequence[MachineSetup]) -> None:
        channels_by_device: dict[str, list[int]] = {}
        for setup in setups:
            machine = setup.config
            channels = channels_by_device.setdefault(str(machine.device), [])
            channels.append(machine.channel)
            self.machines.append(
                MachineRuntime(
                    config=machine,
                    bundle=setup.bundle,
                    pipeline=setup.pipeline(self.encoder),
                    threshold=setup.threshold,
                    channel_index=len(channels) - 1,
                )
            )
        self._channels_by_device = channels_by_device
        self._machines_of: dict[str, list[MachineRuntime]] = {
            device: [m for m in self.machines if str(m.config.device) == device]
            for device in channels_by_device
        }

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Serve until stopped; EXIT_OK after a requested stop, EXIT_FAILURE after a failure."""
        self._install_signal_handlers()
        self._close_events_left_open()
        self.publisher.start()
        for machine in self.machines:
            # Retained: a changed environment left on the broker by the previous run is stale.
            self._publish_environment(machine, None, self.clock.now())
        self.shift.start()
        source_factory = self.faults.wrap_source_factory(open_source)
        for device_key, channels in self._channels_by_device.items():
            machines = self._machines_of[device_key]
            supervisor = CaptureSupervisor(
                machines[0].config.device,
                channels,
                self.queue,
                self.stop_event,
                no_audio_seconds=min(m.config.no_audio_seconds for m in machines),
                on_health=self._health_callback(device_key),
                source_factory=source_factory,
                clock=self.clock.now,
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
        except Exception as exc:
            _LOGGER.critical("main loop failed", exc_info=True)
            self._fail(f"main loop failed: {exc!r}")
        finally:
            # Whatever went wrong in the main loop, stop the workers and flush: never leave a
            # process that systemd sees as alive with its threads half torn down.
            self.stop_event.set()
            code = self._shutdown()
        return code

    def _main_loop(self) -> None:
        self._next_stats = time.monotonic() + self.config.stats_interval_seconds
        next_status = time.monotonic() + STATUS_INTERVAL_SECONDS
        period = min(SUPERVISE_SECONDS, self._watchdog_every / 2)
        while not self.stop_event.is_set():
            self.stop_event.wait(period)
            if self.stop_event.is_set():
                break
            self.clock.check()
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self._prepare_reload()
            served = self._supervise()
            now = time.monotonic()
            if served and now - self._last_watchdog >= self._watchdog_every:
                self.notifier.watchdog()
                self._last_watchdog = now
            if now >= self._next_stats:
                self._next_stats = now + self.config.stats_interval_seconds
                self._publish_stats()
            self._check_outbox()
            self.shift.update_totals(self._dropped_windows)
            if now >= next_status:
                next_status = now + STATUS_INTERVAL_SECONDS
                self.notifier.status(self._status_line())

    def _check_outbox(self) -> None:
        """Retry a degraded outbox; publish the (retained) stats at once when its mode changes,
        so that a subscriber sees the warning, and its end, without waiting for the interval."""
        self.outbox.retry()
        connected = self.publisher.connected
        if connected and not self._was_connected and self.outbox.degraded:
            # The warning published while the broker was away went nowhere (telemetry is
            # not queued): say it again as soon as there is a connection.
            self._next_stats = 0.0
        self._was_connected = connected
        degraded = self.outbox.degraded
        if degraded != self._outbox_degraded:
            if self._outbox_degraded is not None:
                if degraded:
                    _LOGGER.error("outbox degraded: %s", self.outbox.degraded_reason)
                else:
                    _LOGGER.warning("outbox durable again: events are stored before publishing")
            self._outbox_degraded = degraded
            self._next_stats = 0.0

    def _shutdown(self) -> int:
        started = time.monotonic()
        failed = self._failure is not None
        self.notifier.stopping()
        _LOGGER.info("stopping: closing audio, finishing windows, ending open events")
        # Reverse start order: capture first, then inference (which drains what was captured
        # and ends open events), then the publisher (which flushes the outbox).
        for supervisor in self.supervisors:
            supervisor.join(THREAD_JOIN_SECONDS)
            if supervisor.is_alive():
                _LOGGER.warning("capture thread %s did not stop in time", supervisor.name)
        if self._inference.ident is not None:
            self._inference.join(THREAD_JOIN_SECONDS * 2)
            if self._inference.is_alive():
                _LOGGER.warning(
                    "inference thread did not stop in time; its open events are closed at the "
                    "next start"
                )
        self.shift.stop()
        self._publish_stats()
        self.publisher.stop(PUBLISHER_STOP_SECONDS, failed=failed)
        self.outbox.close()
        if failed:
            _LOGGER.critical(
                "stopped after a failure in %.1f s (%s); exit code %d",
                time.monotonic() - started,
                self._failure,
                EXIT_FAILURE,
            )
            return EXIT_FAILURE
        _LOGGER.info("stopped in %.1f s", time.monotonic() - started)
        return EXIT_OK

    def request_stop(self) -> None:
        self.stop_event.set()

    def request_reload(self) -> None:
        """Reload bundles soon (what SIGHUP does): loaded by the main loop, swapped in by the
        inference thread between blocks."""
        self._reload_requested.set()

    @property
    def failure(self) -> str | None:
        """Why the daemon stopped itself (a worker thread failed), or None."""
        return self._failure

    def _fail(self, reason: str, machines: Sequence[MachineRuntime] = ()) -> None:
        """A worker failed: show it, stop, and exit EXIT_FAILURE (systemd restarts)."""
        with self._failure_lock:
            first = self._failure is None
            if first:
                self._failure = reason
        for machine in machines:
            self._set_fault(machine, reason)
        if first:
            _LOGGER.critical(
                "%s; stopping with exit code %d so that the service is restarted",
                reason,
                EXIT_FAILURE,
            )
        self.stop_event.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum: int, _frame: FrameType | None) -> None:
            _LOGGER.info("received %s", signal.Signals(signum).name)
            self.stop_event.set()

        def handle_hup(_signum: int, _frame: FrameType | None) -> None:
            # Only a flag: loading happens in the main loop, the swap in the inference thread
            # between blocks. SIGHUP never stops the daemon (its default action would).
            self._reload_requested.set()

        signal.signal(signal.SIGHUP, handle_hup)
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _health_callback(self, device_key: str) -> Callable[[bool, str], None]:
        def on_health(healthy: bool, message: str) -> None:
            with self._health_lock:
                self._health[device_key] = (healthy, message)

        return on_health

    # ------------------------------------------------------------------ supervision

    def _supervise(self) -> bool:
        """Check every worker; mark faults; True when every machine is served or knowingly
        waiting for its device (the condition for feeding the watchdog)."""
        now = time.monotonic()
        if not self._inference.is_alive():
            self._fail("inference thread died", self.machines)
            return False
        served = True
        inference_silent = now - self._inference_beat
        if inference_silent > INFERENCE_BEAT_SECONDS:
            served = False
        busy_since = self._inference_busy_since
        if busy_since is not None and now - busy_since > min(
            BLOCK_STALL_SECONDS, self._watchdog_every / 2
        ):
            # One block takes milliseconds: this one is stuck (a hung encoder call). Without
            # this, the ping due right after the stall began would still go out.
            served = False
        hung = False
        for supervisor in self.supervisors:
            machines = self._machines_of[supervisor.device_key]
            if not supervisor.is_alive():
                self._fail(
                    f"capture thread for device {supervisor.device!r} died: {supervisor.error!r}",
                    machines,
                )
                return False
            silent = now - supervisor.heartbeat
            if silent > CAPTURE_HANG_SECONDS:
                hung = True
                served = False
                self._set_faults(
                    machines,
                    f"capture thread for device {supervisor.device!r} hangs (no heartbeat "
                    f"for {silent:.0f} s)",
                )
                continue
            if inference_silent > INFERENCE_HANG_SECONDS:
                hung = True
                self._set_faults(
                    machines, f"inference thread hangs (no heartbeat for {inference_silent:.0f} s)"
                )
                continue
            blocked = rescans_blocked_seconds()
            if not supervisor.healthy and blocked > HANG_EXIT_SECONDS:
                # Its device is missing and PortAudio cannot look for it again under a stream
                # whose stop never returned: waiting longer would wait forever.
                self._fail(
                    f"audio device {supervisor.device!r} is missing and device rescans have "
                    f"been blocked for {blocked:.0f} s by a stream that never stopped; "
                    "restarting re-initialises PortAudio"
                )
                return False
            self._clear_faults(machines)
            # A device delivering audio must also have its blocks processed since the last
            # ping; a device being reopened (unhealthy, thread alive) is knowingly waiting.
            progress = self._device_progress.get(supervisor.device_key, 0.0)
            if supervisor.healthy and progress <= self._last_watchdog:
                served = False
        problem = self.publisher.thread_problem()
        if problem is not None:
            if problem.dead:
                self._fail(problem.reason)
                return False
            hung = True
            served = False
            if problem.reason != self._logged_publisher_problem:
                _LOGGER.error("%s; not feeding the watchdog", problem.reason)
        self._logged_publisher_problem = problem.reason if problem is not None else None
        if not hung:
            self._hang_since = None
        elif self._hang_since is None:
            self._hang_since = now
        elif now - self._hang_since > HANG_EXIT_SECONDS:
            self._fail(f"a worker thread hangs for more than {HANG_EXIT_SECONDS:g} s")
            return False
        return served

    def _set_faults(self, machines: Sequence[MachineRuntime], reason: str) -> None:
        for machine in machines:
            self._set_fault(machine, reason)

    def _set_fault(self, machine: MachineRuntime, reason: str) -> None:
        with self._state_lock:
            if machine.fault == reason:
                return
            newly = machine.fault is None
            machine.fault = reason
            _LOGGER.error("%s: state fault: %s", machine.config.name, reason)
            self.publisher.publish_state(machine.config.name, MachineState.FAULT)
        if newly:
            self._next_stats = 0.0  # the stats (with the reason) go out at the next tick

    def _clear_faults(self, machines: Sequence[MachineRuntime]) -> None:
        for machine in machines:
            with self._state_lock:
                if machine.fault is None:
                    continue
                machine.fault = None
                state = machine.shown_state
                _LOGGER.warning("%s: fault cleared, state %s", machine.config.name, state)
                self.publisher.publish_state(machine.config.name, state)
            self._next_stats = 0.0

    # ------------------------------------------------------------------ restart recovery

    def _close_events_left_open(self) -> None:
        """Publish an ``end`` (reason restart) for each event a previous run left open."""
        left = self.open_events.load()
        if not left:
            return
        now = self.clock.wall_now()
        names = {m.config.name for m in self.machines}
        for event in left:
            if event.machine not in names:
                _LOGGER.warning(
                    "event %s of machine %s left open, but the machine is no longer configured",
                    event.event_id[:8],
                    event.machine,
                )
                continue
            try:
                message = self._restart_end(event, now)
            except Exception:
                # A record this version cannot turn into an event (edited by hand, another
                # format) must not keep the daemon from starting, restart after restart.
                _LOGGER.exception("cannot close event %s left open; dropped", event.event_id)
                continue
            _LOGGER.warning(
                "%s: event %s was open when the daemon last stopped; closing it (reason restart)",
                event.machine,
                event.event_id[:8],
            )
            self.publisher.publish_event(event.machine, message)
        self.open_events.clear()

    def _restart_end(self, event: OpenEvent, now: float) -> EventMessage:
        return EventMessage(
            type=EventType.END,
            event_id=event.event_id,
            node=self.config.node_id,
            machine=event.machine,
            seq=self._next_seq(),
            ts=format_ts(now),
            start_ts=format_ts(event.start_ts),
            end_ts=format_ts(event.last_ts),
            score=event.score,
            peak_score=event.peak_score,
            threshold=event.threshold,
            windows_over=event.windows_over,
            dbfs=event.dbfs,
            # Wall times of two runs: after a clock step at boot they may disagree.
            duration_seconds=max(0.0, event.last_ts - event.start_ts),
            model=ModelRef.from_dict(event.model),
            bundle_id=event.bundle_id,
            reason=EndReason.RESTART,
        )

    def _next_seq(self) -> int:
        try:
            seq = self.outbox.next_seq(at_least=self._fallback_seq + 1)
        except OutboxError as exc:
            # The outbox cannot record the number (degraded): the event still goes out, with
            # a number that only this process guarantees increasing. With no number known
            # yet (degraded since start), a wall-clock floor in milliseconds, as the outbox
            # uses after a corrupt file: far above any count an earlier run reached.
            known = self._fallback_seq
            seq = known + 1 if known else max(1, int(self.clock.wall_now() * 1000))
            _LOGGER.error("event seq %d not recorded in the outbox: %s", seq, exc)
        self._fallback_seq = max(self._fallback_seq, seq)
        return seq

    # ------------------------------------------------------------------ inference thread

    def _inference_loop(self) -> None:
        try:
            while True:
                self._inference_beat = time.monotonic()
                self.faults.check_inference()
                self._swap_pending_setups()
                self.shift.apply_commands()
                self._apply_health()
                try:
                    block = self.queue.get(timeout=QUEUE_POLL_SECONDS)
                except queue.Empty:
                    if self._drained():
                        break
                    continue
                self._inference_busy_since = time.monotonic()
                self._process_block(block)
                self._inference_busy_since = None
        except Exception as exc:
            # A bug: stop, and exit non-zero so that systemd restarts us. Never a clean stop.
            _LOGGER.critical("inference thread crashed", exc_info=True)
            self._fail(f"inference thread crashed: {exc!r}", self.machines)
        finally:
            reason = EndReason.FAULT if self._failure is not None else EndReason.SHUTDOWN
            self._end_all_events(self.clock.now(), reason)

    def _drained(self) -> bool:
        """Stopping, and nothing more will come (capture threads gone, or given their time)."""
        if not self.stop_event.is_set():
            return False
        now = time.monotonic()
        if self._stop_requested_at is None:
            self._stop_requested_at = now
        alive = any(s.is_alive() for s in self.supervisors)
        return not alive or now - self._stop_requested_at > THREAD_JOIN_SECONDS

    def reload_bundles(self) -> bool:
        """Reload every machine's bundle now (after `edge-asd learn` or a recalibration).
        Open events end (reason reload), each machine restarts its decision with the new bundle.
        A bundle that does not load leaves everything as it was (logged). Returns whether it
        reloaded. Not while the daemon runs: use `request_reload` (SIGHUP) then."""
        setups = self._load_setups()
        if setups is None:
            return False
        self._swap_setups(setups)
        return True

    def _load_setups(self) -> list[MachineSetup] | None:
        try:
            return machine_setups(self.config, self.encoder)
        except StartupError as exc:
            _LOGGER.error("reload refused, keeping the current bundles: %s", exc)
        except Exception:
            # Whatever a broken bundle raises, a reload must never take the daemon down.
            _LOGGER.exception("reload refused, keeping the current bundles")
        return None

    def _prepare_reload(self) -> None:
        setups = self._load_setups()
        if setups is not None:
            with self._pending_lock:
                self._pending_setups = setups

    def _swap_pending_setups(self) -> None:
        with self._pending_lock:
            setups, self._pending_setups = self._pending_setups, None
        if setups is not None:
            self._swap_setups(setups)

    def _swap_setups(self, setups: Sequence[MachineSetup]) -> None:
        now = self.clock.now()
        for machine, setup in zip(self.machines, setups, strict=True):
            old = machine.pipeline
            self._publish_step(machine, old.close(now), EndReason.RELOAD)
            machine.bundle = setup.bundle
            machine.threshold = setup.threshold
            machine.pipeline = setup.pipeline(self.encoder)
            if old.environment_changed:
                # The new bundle (learned or recalibrated) judges afresh.
                self._publish_environment(machine, None, now)
            if old.state is not None and old.state is not MachineState.NO_AUDIO:
                self._publish_step(machine, machine.pipeline.set_audio(True, now))
            _LOGGER.info(
                "%s: reloaded bundle %s (%s)",
                machine.config.name,
                setup.bundle.bundle_id,
                setup.decision,
            )

    def _apply_health(self) -> None:
        with self._health_lock:
            health = dict(self._health)
        for machine in self.machines:
            status = health.get(str(machine.config.device))
            if status is not None:
                self._publish_step(machine, machine.pipeline.set_audio(status[0], self.clock.now()))

    def _process_block(self, block: CapturedBlock) -> None:
        device = block.device_key
        last = self._last_block_seq.get(device)
        # The queue is shared: a full queue drops the oldest block, which may be another
        # device's. The per-device numbers show the gap to that device's windows.
        gap = block.seq >= 0 and last is not None and block.seq != last + 1
        if block.seq >= 0:
            self._last_block_seq[device] = block.seq
        if gap:
            self.counters.block_gaps += 1
        for machine in self._machines_of.get(device, ()):
            if block.discontinuity or gap:
                machine.pipeline.reset()
            samples = block.samples[:, machine.channel_index]
            self.shift.push_audio(machine, samples, block.end_ts)
            if not self.shift.detecting(machine):
                continue
            step = machine.pipeline.push(samples, block.end_ts)
            if step.windows:
                self.shift.inference(step.inference_seconds, len(step.windows))
                per_window_ms = step.inference_seconds * 1000.0 / len(step.windows)
                self.counters.inference_ms.extend([per_window_ms] * len(step.windows))
                self.counters.windows_processed += len(step.windows)
            self._publish_step(machine, step)
        self._device_progress[device] = time.monotonic()

    def _publish_step(
        self, machine: MachineRuntime, step: PipelineStep, end_reason: EndReason | None = None
    ) -> None:
        """Publish what the pipeline reported, in time order: a state change caused by an
        event's start goes out right after that start, before later windows' telemetry.
        `end_reason` marks the ends of a pipeline closed for another reason than its sound."""
        changes = iter(step.state_changes)
        pending = next(changes, None)
        for transition in step.transitions:
            while pending is not None and pending.time < transition.ts:
                self._publish_state(machine, pending)
                pending = next(changes, None)
            self._publish_transition(machine, transition, end_reason)
            while pending is not None and pending.time <= transition.ts:
                self._publish_state(machine, pending)
                pending = next(changes, None)
        while pending is not None:
            self._publish_state(machine, pending)
            pending = next(changes, None)
        for change in step.environment:
            self._publish_environment(machine, change.summary, change.time, decided=True)
        interval = machine.config.score_interval_seconds
        for window in step.windows:
            self.shift.window(machine, window)
            if interval > 0 and window.end_time - machine.last_score_sent >= interval:
                machine.last_score_sent = window.end_time
                self._publish_score(machine, window)

    def _publish_score(self, machine: MachineRuntime, window: WindowResult) -> None:
        message = ScoreMessage(
            node=self.config.node_id,
            machine=machine.config.name,
            ts=format_ts(self.clock.to_wall(window.end_time)),
            score=window.score,
            threshold=machine.threshold,
            dbfs=window.dbfs,
            state=self.shift.published_state(machine) or MachineState.NORMAL,
        )
        self.publisher.publish_telemetry(
            self.topics.score(machine.config.name), message.to_json(), qos=0
        )

    def _publish_transition(
        self, machine: MachineRuntime, transition: EventTransition, end_reason: EndReason | None
    ) -> None:
        info = self.encoder.info
        end = transition.end_ts
        to_wall = self.clock.to_wall
        model = ModelRef(name=info.name, version=info.version, sha256=info.sha256)
        ending = transition.kind == EventType.END
        clip, explanation = self.shift.transition(machine, transition)
        if not self.shift.publish_allowed(machine, transition):
            return
        # Timeline differences: monotonic, never negative across a wall-clock step.
        last = end if end is not None else transition.ts
        message = EventMessage(
            type=transition.kind,
            event_id=transition.event_id,
            node=self.config.node_id,
            machine=machine.config.name,
            seq=self._next_seq(),
            ts=format_ts(to_wall(transition.ts)),
            start_ts=format_ts(to_wall(transition.start_ts)),
            end_ts=format_ts(to_wall(end)) if end is not None else None,
            score=transition.score,
            peak_score=transition.peak_score,
            threshold=machine.threshold,
            windows_over=transition.windows_over,
            dbfs=transition.dbfs,
            duration_seconds=max(0.0, last - transition.start_ts),
            model=model,
            bundle_id=machine.bundle.bundle_id,
            reason=end_reason if ending else None,
            clip=clip,
            explanation=explanation,
            clip_url=self.shift.clip_url(clip),
            environment=(
                None
                if transition.environment is None
                else EnvironmentInfo.from_summary(transition.environment)
            ),
        )
        _LOGGER.info(
            "%s: event %s %s score %.3f (peak %.3f, threshold %.3f)%s",
            machine.config.name,
            transition.event_id[:8],
            transition.kind,
            transition.score,
            transition.peak_score,
            machine.threshold,
            f" ({end_reason})" if ending and end_reason is not None else "",
        )
        self.publisher.publish_event(machine.config.name, message)
        if ending:
            self.open_events.remove(transition.event_id)
        else:
            self.open_events.record(
                OpenEvent(
                    event_id=transition.event_id,
                    machine=machine.config.name,
                    start_ts=to_wall(transition.start_ts),
                    last_ts=to_wall(transition.ts),
                    score=transition.score,
                    peak_score=transition.peak_score,
                    threshold=machine.threshold,
                    windows_over=transition.windows_over,
                    dbfs=transition.dbfs,
                    bundle_id=machine.bundle.bundle_id,
                    model=model.to_dict(),
                ),
                force=transition.kind == EventType.START,
            )

    def _publish_state(self, machine: MachineRuntime, change: StateChange) -> None:
        with self._state_lock:
            if machine.fault is not None:
                # Shown as fault until the supervisor clears it (then the current state).
                _LOGGER.debug("%s: state %s held back (fault)", machine.config.name, change.state)
                return
            _LOGGER.info("%s: state %s -> %s", machine.config.name, change.previous, change.state)
            self.publisher.publish_state(
                machine.config.name, self.shift.state_to_publish(machine, change.state)
            )

    def _publish_environment(
        self,
        machine: MachineRuntime,
        summary: EnvironmentSummary | None,
        at: float,
        *,
        decided: bool = False,
    ) -> None:
        """The machine's retained environment message (`summary` None: as calibrated);
        `decided`: the pipeline just decided it (logged), rather than a start or reload."""
        name = machine.config.name
        if decided and summary is not None:
            _LOGGER.warning(
                "%s: the sound around the machine no longer resembles calibration (%s); "
                "recalibrate or learn the new condition",
                name,
                summary.describe(),
            )
        elif decided:
            _LOGGER.info("%s: the sound around the machine resembles calibration again", name)
        message = EnvironmentMessage.build(
            self.config.node_id, name, format_ts(self.clock.to_wall(at)), summary
        )
        self.shift.environment(machine, summary)
        retained = getattr(self.publisher, "publish_retained", None)
        if retained is not None:
            retained(self.topics.environment(name), message.to_json(), qos=0)
        else:
            self.publisher.publish_telemetry(self.topics.environment(name), message.to_json())

    def _end_all_events(self, ts: float, reason: EndReason) -> None:
        for machine in self.machines:
            try:
                self._publish_step(machine, machine.pipeline.close(ts), reason)
            except Exception:
                # A pipeline broken by the crash being handled: its event stays in the
                # open-events file and is closed at the next start.
                _LOGGER.exception("%s: could not end open events", machine.config.name)

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
        outbox = self.outbox.status()
        message = StatsMessage(
            node=self.config.node_id,
            ts=format_ts(self.clock.wall_now()),
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
            outbox_depth=outbox.depth,
            outbox_discarded=outbox.discarded,
            outbox_write_errors=outbox.write_errors,
            reconnects=publisher_stats.reconnects,
            version=__version__,
            machines={
                m.config.name: (
                    m.shown_state if m.fault is not None else self.shift.published_state(m)
                )
                or MachineState.NO_AUDIO
                for m in self.machines
            },
            faults={m.config.name: m.fault for m in self.machines if m.fault is not None},
            messages_quarantined=publisher_stats.quarantined,
            outbox=OutboxMode.DEGRADED if outbox.degraded else OutboxMode.DURABLE,
            outbox_degraded_reason=outbox.degraded_reason,
            outbox_recovered_corrupt=outbox.recovered_corrupt,
            outbox_quarantined=outbox.quarantined,
            outbox_clock_jumps=outbox.clock_jumps,
            events_not_stored=publisher_stats.events_not_stored,
            events_held=publisher_stats.direct_queue,
            events_lost=publisher_stats.events_lost,
        )
        self._publish_stats_message(message.to_json())

    def _publish_stats_message(self, payload: str) -> None:
        # Retained where the publisher can (a new subscriber, `edge-asd status`, Home
        # Assistant after a restart, sees the latest at once); QoS 0 and not remembered.
        retained = getattr(self.publisher, "publish_retained", None)
        if retained is not None:
            retained(self.topics.stats, payload, qos=0, remember=False)
        else:
            self.publisher.publish_telemetry(self.topics.stats, payload, qos=0)

    def _dropped_windows(self) -> int:
        """Blocks dropped between capture and inference, in hops of the first machine."""
        dropped = sum(s.totals().dropped_frames for s in self.supervisors)
        return dropped // self.machines[0].pipeline.hop_samples

    def _status_line(self) -> str:
        states = ", ".join(
            f"{m.config.name}={m.shown_state if m.state or m.fault else 'starting'}"
            for m in self.machines
        )
        p50 = self._percentile_ms(50)
        latency = f"{p50:.1f} ms/window" if p50 is not None else "no windows yet"
        mqtt = "mqtt up" if self.publisher.connected else "mqtt down"
        return (
            f"{states}; {self.counters.windows_processed} windows, {latency}; {mqtt}; "
            f"outbox {self.outbox.depth()}{' (degraded)' if self.outbox.degraded else ''}"
        )


def run_daemon(config: Config, *, log_level: str | None = None) -> int:
    """Entry point of `edge-asd run`; `log_level` overrides the config's. Returns the exit code.
    Raises StartupError (its `exit_code` says whether systemd should retry)."""
    configure_logging(log_level or config.log_level)
    daemon = Daemon(config)
    return daemon.run()
