"""The daemon's features for the people on shift, wired in one place.

- event clips and their spectrograms (`clips.ClipRecorder`), and why each event fired
  (`detection.explain`), carried by the end event's ``clip`` and ``explanation``;
- the local status page, status JSON and Prometheus metrics (`status`, `metrics`, `http`);
- Home Assistant discovery (`mqtt.discovery`, published by the MQTT publisher);
- controls over MQTT: mute, detection on/off, learn an event (`controls`).

The daemon calls a handful of hooks (`push_audio`, `window`, `transition`, `state_to_publish`,
`apply_commands`, ...) from the places it already handles each fact, so its own code stays
about detection and delivery. Everything here runs on the daemon's inference thread except
`start`/`stop`/`update_totals` (main thread), the HTTP server's threads (read-only snapshots),
the MQTT network thread (`_on_command`: a queue put) and the learn worker (a bundle file).
Nothing here may stop detection: failures are logged and the daemon goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from edge_asd import __version__
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.detector import EventTransition
from edge_asd.detection.explain import MAX_EXPLAIN_SECONDS, Explanation, band_profile, explain
from edge_asd.detection.states import EventType, MachineState
from edge_asd.mqtt.discovery import command_topic, control_state_topic, gateway_discovery
from edge_asd.service.clips import ClipRecorder
from edge_asd.service.controls import (
    COMMANDS,
    DETECTION,
    LEARN_LAST_EVENT,
    MUTE,
    RECALIBRATE,
    STATE_FILE_NAME,
    SWITCHES,
    Ack,
    Command,
    ControlError,
    Controls,
    LearnRequest,
    parse_learn,
    parse_mute,
    parse_recalibrate,
    parse_switch,
)
from edge_asd.service.status import StatusBoard

if TYPE_CHECKING:
    from edge_asd.detection.environment import EnvironmentSummary
    from edge_asd.detection.pipeline import WindowResult
    from edge_asd.service.daemon import Daemon, MachineRuntime
    from edge_asd.service.http import StatusServer
    from edge_asd.service.metrics import Metrics

_LOGGER = logging.getLogger(__name__)

ACK_QOS: Final = 1


@dataclass(frozen=True)
class _LearnResult:
    machine: str
    command: str
    ack: Ack


@dataclass
class _Recording:
    """Audio being recorded for a `recalibrate` command, as 16-bit samples (half the memory)."""

    target: int
    """Samples to record."""
    chunks: list[npt.NDArray[np.int16]] = field(default_factory=list)
    samples: int = 0


def read_clip(path: Path) -> npt.NDArray[np.float32]:
    """A clip written by `ClipRecorder` (FLAC or WAV, mono 16 kHz) as float32 samples."""
    if path.suffix == ".flac":
        import soundfile

        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE_HZ:
            raise ValueError(f"{path.name} is {rate} Hz, expected {SAMPLE_RATE_HZ}")
        return np.ascontiguousarray(data[:, 0])
    from edge_asd.audio.files import read_wav

    return read_wav(path)


class ShiftFeatures:
    """Clips, explanations, status page, metrics, discovery and controls of one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        config = daemon.config
        names = [m.config.name for m in daemon.machines]
        c = config.clips
        # Always on: with clips.dir null it keeps only the audio the explanation needs.
        self.clips = ClipRecorder(
            c.dir, c.pre_seconds, c.post_seconds, c.max_total_mb, c.max_age_days, SAMPLE_RATE_HZ
        )
        self.metrics: Metrics | None = None
        self.server: StatusServer | None = None
        if config.http.port is not None:
            # Imported only when served: a gateway without the page does not load them.
            from edge_asd.service.http import StatusServer
            from edge_asd.service.metrics import Metrics

            self.metrics = Metrics(node_id=config.node_id, version=__version__, machines=names)
        self.board = StatusBoard(config.node_id, __version__, metrics=self.metrics)
        for machine in daemon.machines:
            self.board.add_machine(machine.config.name, machine.threshold)
        if config.http.port is not None:
            self.server = StatusServer(
                self.board,
                bind=config.http.bind,
                port=config.http.port,
                clips_dir=c.dir,
                metrics=self.metrics,
            )
        # Next to the outbox: the one directory the daemon is known to own and write.
        self.controls = Controls(names, config.outbox.path.parent / STATE_FILE_NAME)
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._learned: queue.SimpleQueue[_LearnResult] = queue.SimpleQueue()
        self._recordings: dict[str, _Recording] = {}
        """Machine -> the audio a `recalibrate` command is recording (inference thread only)."""
        self._learning: threading.Thread | None = None
        self._last_event: dict[str, str] = {}
        """Machine -> its last event that has a clip (learn_last_event)."""
        self._suppressed: set[str] = set()
        """Events that started while their machine was muted: none of their steps go out."""
        self._attach_publisher()

    # ------------------------------------------------------------------ lifecycle

    def _attach_publisher(self) -> None:
        """Discovery, the command subscription and the switches' current values. A publisher
        without these methods (a test's fake) just gets none of it."""
        daemon, config = self.daemon, self.daemon.config
        publisher: Any = daemon.publisher
        names = [m.config.name for m in daemon.machines]
        if config.homeassistant.discovery and hasattr(publisher, "enable_discovery"):
            prefix = config.homeassistant.prefix
            messages = gateway_discovery(
                config.node_id, names, daemon.topics, __version__, prefix=prefix
            )
            publisher.enable_discovery(messages, prefix=prefix, machines=names)
        if hasattr(publisher, "set_command_handler"):
            publisher.set_command_handler(self._on_command)
        for name in names:
            for control in SWITCHES:
                self._publish_ack(name, control, self.controls.current(name, control))

    def start(self) -> None:
        if self.server is None:
            return
        try:
            self.server.start()
        except OSError as exc:
            # The page is a convenience: detection and MQTT go on without it.
            _LOGGER.error(
                "http: cannot listen on %s:%s (%s); running without the status page and metrics",
                self.server.bind,
                self.server.requested_port,
                exc,
            )
            self.server = None

    def stop(self) -> None:
        """After the inference thread ended (its last events are in the clips)."""
        if self.server is not None:
            self.server.stop()
        self.clips.close()
        if self._learning is not None:
            self._learning.join(1.0)

    # ------------------------------------------------------------------ inference thread hooks

    def detecting(self, machine: MachineRuntime) -> bool:
        """Whether the machine's audio goes to its pipeline (detection switched on)."""
        return self.controls.detection_enabled(machine.config.name)

    def push_audio(self, machine: MachineRuntime, samples: npt.ArrayLike, end_ts: float) -> None:
        """Every block, before the pipeline sees it: the clip's pre-roll and event audio, and
        the audio of a calibration being recorded."""
        self.clips.push(machine.config.name, samples, end_ts)
        recording = self._recordings.get(machine.config.name)
        if recording is not None:
            x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
            recording.chunks.append((x * 32767.0).astype(np.int16))
            recording.samples += x.shape[0]
            if recording.samples >= recording.target:
                del self._recordings[machine.config.name]
                self._start_recalibration(machine, recording)

    def inference(self, seconds: float, windows: int) -> None:
        if self.metrics is not None and windows:
            self.metrics.inference(seconds / windows, windows)

    def window(self, machine: MachineRuntime, window: WindowResult) -> None:
        # Pipeline times are on the daemon's monotonic timeline; the page shows wall time.
        self.board.window(
            machine.config.name,
            self._wall(window.end_time),
            window.score,
            machine.threshold,
            window.dbfs,
        )

    def state_to_publish(self, machine: MachineRuntime, state: MachineState) -> MachineState:
        """What the state topic shows: the detector's state unless muted or disabled."""
        shown = self.controls.override(machine.config.name) or state
        self.board.machine_state(machine.config.name, shown)
        return shown

    def environment(self, machine: MachineRuntime, summary: EnvironmentSummary | None) -> None:
        """The machine's surroundings changed (`summary`) or are as calibrated (None)."""
        self.board.environment(machine.config.name, None if summary is None else summary.describe())

    def published_state(self, machine: MachineRuntime) -> MachineState | None:
        """The state as published (score and stats messages carry it too)."""
        return self.controls.override(machine.config.name) or machine.state

    def transition(
        self, machine: MachineRuntime, transition: EventTransition
    ) -> tuple[str | None, str | None]:
        """Clip and explanation bookkeeping of one event step; returns the end's (clip path,
        explanation summary), (None, None) for the other steps."""
        name = machine.config.name
        kind = transition.kind
        if kind is EventType.START:
            self.clips.event_started(name, transition.event_id, transition.start_ts)
            if self.controls.muted(name):
                self._suppressed.add(transition.event_id)
            self.board.event(
                name,
                kind,
                transition.event_id,
                self._wall(transition.start_ts),
                transition.peak_score,
            )
            return None, None
        if kind is not EventType.END:
            self.board.event(
                name,
                kind,
                transition.event_id,
                self._wall(transition.start_ts),
                transition.peak_score,
            )
            return None, None
        explanation = self._explain(machine)
        end_time = transition.end_ts if transition.end_ts is not None else transition.ts
        path = self.clips.event_ended(name, transition.event_id, end_time, explanation)
        clip = None if path is None else str(path.absolute())
        if path is not None:
            self._last_event[name] = transition.event_id
        summary = None if explanation is None else explanation.summary
        if summary is not None and transition.environment is not None:
            # Against a calibration that no longer applies, the changed band may be the new
            # surroundings: say so where the person on shift reads why it fired.
            summary += (
                f" (surroundings differ from calibration: {transition.environment.describe()})"
            )
        self.board.event(
            name,
            kind,
            transition.event_id,
            self._wall(end_time),
            transition.peak_score,
            summary,
            path,
        )
        return clip, summary

    def clip_url(self, clip: str | None) -> str | None:
        """The clip's address on the status endpoint, when it serves one."""
        if clip is None or self.server is None:
            return None
        return f"{self.server.url}/clips/{Path(clip).name}"

    def _wall(self, timeline: float) -> float:
        clock = getattr(self.daemon, "clock", None)
        return timeline if clock is None else float(clock.to_wall(timeline))

    def publish_allowed(self, machine: MachineRuntime, transition: EventTransition) -> bool:
        """False for every step of an event that started while its machine was muted."""
        if transition.event_id not in self._suppressed:
            return True
        if transition.kind is EventType.START:
            _LOGGER.warning(
                "%s: alarm %s while muted (until %s): logged, not published",
                machine.config.name,
                transition.event_id[:8],
                time.strftime(
                    "%H:%M:%S", time.localtime(self.controls.muted_until(machine.config.name) or 0)
                ),
            )
        if transition.kind is EventType.END:
            self._suppressed.discard(transition.event_id)
        return False

    def _explain(self, machine: MachineRuntime) -> Explanation | None:
        profile = machine.bundle.band_profile
        audio = self.clips.event_audio(
            machine.config.name, max_event_seconds=MAX_EXPLAIN_SECONDS, with_pre=profile is None
        )
        if audio is None or audio.event.size == 0:
            return None
        try:
            if profile is None:
                # Bundles calibrated before profiles existed: the pre-roll is normal audio.
                profile = band_profile(audio.pre, sample_rate=SAMPLE_RATE_HZ)
            return explain(audio.event, profile, sample_rate=SAMPLE_RATE_HZ)
        except ValueError as exc:
            _LOGGER.info("%s: no explanation for this event (%s)", machine.config.name, exc)
            return None

    # ------------------------------------------------------------------ controls

    def _on_command(self, machine: str, name: str, payload: bytes, retained: bool) -> None:
        """On the MQTT network thread: only queue it, the inference thread applies it."""
        self._commands.put(Command(machine, name, payload, retained))

    def submit(self, command: Command) -> None:
        self._commands.put(command)

    def apply_commands(self) -> None:
        """Between blocks: expired mutes, queued commands, finished learns."""
        for name in self.controls.expire():
            _LOGGER.info("%s: mute ended", name)
            self._publish_ack(name, MUTE, self.controls.current(name, MUTE))
            self._republish_state(name)
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            try:
                self._apply(command)
            except Exception:
                # A command must never take detection down.
                _LOGGER.exception("command %s for %s failed", command.name, command.machine)
        while True:
            try:
                result = self._learned.get_nowait()
            except queue.Empty:
                break
            self._finish_learn(result)

    def _machine(self, name: str) -> MachineRuntime | None:
        return next((m for m in self.daemon.machines if m.config.name == name), None)

    def _apply(self, command: Command) -> None:
        name, control = command.machine, command.name
        machine = self._machine(name)
        if machine is None or control not in COMMANDS:
            known = ", ".join(self.controls.machines)
            reason = (
                f"unknown machine {name!r} (this node has: {known})"
                if machine is None
                else f"unknown command {control!r} (known: {', '.join(COMMANDS)})"
            )
            _LOGGER.warning("command %s for %s refused: %s", control, name, reason)
            # Not retained: a typo must not leave a retained topic on the broker for good.
            self._publish_ack(name, control, Ack(False, reason, None), retain=False)
            return
        if command.retained:
            # A retained command would be applied again on every reconnect.
            self._reject(name, control, "retained commands are ignored; publish without retain")
            return
        try:
            if control == MUTE:
                self._mute(machine, parse_mute(command.payload))
            elif control == DETECTION:
                self._set_detection(machine, parse_switch(command.payload))
            elif control == RECALIBRATE:
                self._record_calibration(machine, parse_recalibrate(command.payload))
            else:
                request = parse_learn(command.payload, last=control == LEARN_LAST_EVENT)
                self._start_learn(machine, control, request)
        except ControlError as exc:
            self._reject(name, control, str(exc))

    def _reject(self, machine: str, control: str, reason: str) -> None:
        _LOGGER.warning("command %s for %s refused: %s", control, machine, reason)
        value = self.controls.current(machine, control) if control in SWITCHES else None
        ack = (
            Ack(False, reason, value.value, value.until)
            if value is not None
            else Ack(False, reason, None)
        )
        self._publish_ack(machine, control, ack)

    def _mute(self, machine: MachineRuntime, seconds: float | None) -> None:
        name = machine.config.name
        ack = self.controls.mute(name, seconds)
        if seconds is None:
            _LOGGER.info("%s: unmuted", name)
        else:
            _LOGGER.warning("%s: alarms muted for %.0f s", name, seconds)
        self._publish_ack(name, MUTE, ack)
        self._republish_state(name)

    def _set_detection(self, machine: MachineRuntime, enabled: bool) -> None:
        name = machine.config.name
        was = self.controls.detection_enabled(name)
        if was and not enabled:
            # End an open event now: nothing will end it while the audio is not analysed.
            self.daemon._publish_step(machine, machine.pipeline.close(self.daemon.clock.now()))
        elif enabled and not was:
            # Never splice a window across the time detection was off.
            machine.pipeline.reset()
        ack = self.controls.set_detection(name, enabled)
        _LOGGER.warning("%s: detection switched %s", name, "on" if enabled else "off")
        self._publish_ack(name, DETECTION, ack)
        self._republish_state(name)

    def _republish_state(self, name: str) -> None:
        machine = self._machine(name)
        if machine is None:
            return
        state = self.published_state(machine)
        if state is None:
            return  # nothing known yet; the first state change publishes it
        self.board.machine_state(name, state)
        self.daemon.publisher.publish_state(name, state)

    # ------------------------------------------------------------------ learn

    def _start_learn(self, machine: MachineRuntime, control: str, request: LearnRequest) -> None:
        name = machine.config.name
        event_id = request.event_id or self._last_event.get(name)
        if event_id is None:
            raise ControlError(f"no event with a clip on {name} since the daemon started")
        if self.clips.dir is None:
            raise ControlError("clips are off (clips.dir is null): there is no audio to learn")
        path = self.clips.audio_path(event_id)
        if not path.is_file():
            raise ControlError(
                f"no clip {path.name} in {self.clips.dir} (clips are written "
                f"{self.clips.post_seconds:g} s after the event's end; retention may have "
                "deleted it)"
            )
        if self._learning is not None and self._learning.is_alive():
            raise ControlError("another learn is still running; try again when it is done")
        _LOGGER.warning("%s: learning event %s as normal running", name, event_id[:8])
        self._learning = threading.Thread(
            target=self._learn_worker,
            args=(machine, control, event_id, path, request.force),
            name="control-learn",
            daemon=True,
        )
        self._learning.start()

    def _learn_worker(
        self, machine: MachineRuntime, control: str, event_id: str, path: Path, force: bool
    ) -> None:
        """Off the inference thread: embedding a clip and refitting take seconds."""
        from edge_asd.detection.bundle import save_bundle
        from edge_asd.detection.calibration import Clip
        from edge_asd.detection.learn import learn

        name = machine.config.name
        try:
            samples = read_clip(path)
            learned, summary = learn(
                machine.bundle,
                [Clip(name=str(path), samples=samples)],
                self.daemon.encoder,
                force=force,
                progress=False,
            )
            # Atomic: the daemon (or a restart) reads either the old bundle or the new one.
            save_bundle(learned, machine.config.bundle)
            ack = Ack(
                True,
                None,
                event_id,
                extra=(
                    ("bundle_id", learned.bundle_id),
                    ("windows_added", summary.windows_added),
                ),
            )
        except Exception as exc:  # noqa: BLE001 - any failure is the command's answer
            _LOGGER.error("%s: learning event %s failed: %s", name, event_id[:8], exc)
            ack = Ack(False, f"learn failed: {exc}", event_id)
        self._learned.put(_LearnResult(name, control, ack))

    # ------------------------------------------------------------------ recalibrate

    def _record_calibration(self, machine: MachineRuntime, seconds: float) -> None:
        name = machine.config.name
        if name in self._recordings or (self._learning is not None and self._learning.is_alive()):
            raise ControlError("a learn or a recalibration is still running; try again later")
        self._recordings[name] = _Recording(target=round(seconds * SAMPLE_RATE_HZ))
        _LOGGER.warning("%s: recording %.0f s of audio for a new calibration", name, seconds)
        self._publish_ack(name, RECALIBRATE, Ack(True, "recording", seconds))

    def _start_recalibration(self, machine: MachineRuntime, recording: _Recording) -> None:
        samples = np.concatenate(recording.chunks)[: recording.target]
        recording.chunks.clear()
        self._learning = threading.Thread(
            target=self._recalibrate_worker,
            args=(machine, samples),
            name="control-recalibrate",
            daemon=True,
        )
        self._learning.start()

    def _recalibrate_worker(self, machine: MachineRuntime, pcm: npt.NDArray[np.int16]) -> None:
        """Off the inference thread: calibrating takes seconds to minutes."""
        from edge_asd.detection.bundle import save_bundle
        from edge_asd.detection.calibration import Clip, Framing, calibrate

        name = machine.config.name
        seconds = pcm.shape[0] / SAMPLE_RATE_HZ
        try:
            old = machine.bundle
            clip = Clip(name=f"recalibrate command, {seconds:.0f} s", samples=pcm / 32767.0)
            bundle = calibrate(
                [clip],
                self.daemon.encoder,
                Framing(old.window_samples, old.hop_samples),
                self.daemon.config.calibration,
                progress=False,
            )
            # The room with the machine stopped has not changed: keep those recordings.
            bundle.off_embeddings = old.off_embeddings
            save_bundle(bundle, machine.config.bundle)
            ack = Ack(True, None, seconds, extra=(("bundle_id", bundle.bundle_id),))
        except Exception as exc:  # noqa: BLE001 - any failure is the command's answer
            _LOGGER.error("%s: recalibration failed: %s", name, exc)
            ack = Ack(False, f"recalibration failed: {exc}", seconds)
        self._learned.put(_LearnResult(name, RECALIBRATE, ack))

    def _finish_learn(self, result: _LearnResult) -> None:
        ack = result.ack
        if ack.ok and not self.daemon.reload_bundles():
            ack = Ack(False, "learned and saved, but the reload was refused (see the log)", None)
        self._publish_ack(result.machine, result.command, ack)

    # ------------------------------------------------------------------ publishing

    def _publish_ack(self, machine: str, control: str, ack: Ack, *, retain: bool = True) -> None:
        topics = self.daemon.topics
        try:
            topic = control_state_topic(topics, machine, control)
        except ValueError:
            return  # not a topic level (cannot come from a subscription; defensive)
        payload = ack.to_json(time.time())
        publisher: Any = self.daemon.publisher
        if retain and hasattr(publisher, "publish_retained"):
            publisher.publish_retained(topic, payload, qos=ACK_QOS)
        else:
            publisher.publish_telemetry(topic, payload, qos=ACK_QOS)

    def command_topic(self, machine: str, control: str) -> str:
        return command_topic(self.daemon.topics, machine, control)

    # ------------------------------------------------------------------ main thread

    def update_totals(self, dropped_windows: Callable[[], int]) -> None:
        """Refresh the metrics' running totals (outbox, reconnects, drops, clips) and the
        status page's node warnings."""
        reason = self.daemon.outbox.degraded_reason
        self.board.set_warnings(
            ()
            if reason is None
            else (f"Outbox degraded, events are published without durability: {reason}",)
        )
        if self.metrics is None:
            return
        try:
            self._update_totals(dropped_windows)
        except Exception:
            # Called from the daemon's main loop: metrics must never take the daemon down.
            _LOGGER.exception("could not update the metrics")

    def _update_totals(self, dropped_windows: Callable[[], int]) -> None:
        from edge_asd.service.metrics import DaemonTotals

        assert self.metrics is not None
        daemon = self.daemon
        totals = [s.totals() for s in daemon.supervisors]
        clip_stats = self.clips.stats()
        outbox = daemon.outbox.status()
        publisher = daemon.publisher.stats()
        self.metrics.totals(
            DaemonTotals(
                capture_overruns=sum(t.overruns for t in totals),
                dropped_windows=dropped_windows(),
                reconnects=publisher.reconnects,
                outbox_depth=outbox.depth,
                outbox_discarded=outbox.discarded,
                outbox_degraded=outbox.degraded,
                outbox_write_errors=outbox.write_errors,
                outbox_recovered_corrupt=outbox.recovered_corrupt,
                outbox_quarantined=outbox.quarantined,
                events_lost=publisher.events_lost,
                clips_written=clip_stats.written,
                clips_dropped=clip_stats.dropped,
                clip_failures=clip_stats.failures,
            )
        )
