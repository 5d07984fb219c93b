"""The machine pipeline: window -> embed -> score -> machine state -> detector, for one machine.

This is the only place where audio becomes decisions. The daemon feeds it captured blocks, and
`score`, `evaluate`, the demo, the pretraining validation and the benchmarks feed it recordings
(`run_recording`); none of them frames, scores or detects on its own, so an alarm counted offline
is one the daemon would have raised.

It does no I/O: each call returns what happened (`PipelineStep`: window scores, state changes,
event transitions), and the caller publishes or prints it. Times are in the caller's clock
(epoch seconds in the daemon, seconds from the start of a file offline): the caller gives the
time at the END of each block it pushes, and every window's start and end follow from it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np

from edge_asd.audio.levels import window_dbfs
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.bundle import Bundle, check_model
from edge_asd.detection.detector import Detector, DetectorSettings, EventTransition
from edge_asd.detection.environment import (
    EnvironmentMonitor,
    EnvironmentProfile,
    EnvironmentSummary,
)
from edge_asd.detection.fusion import ViewSet
from edge_asd.detection.memory_bank import MemoryBank
from edge_asd.detection.methods import check_method
from edge_asd.detection.running import (
    RunningMonitor,
    RunningProfile,
    RunningSettings,
    looks_stopped,
)
from edge_asd.detection.states import EventType, MachineState
from edge_asd.detection.windowing import Windower, iter_window_batches
from edge_asd.model.contract import ModelInfo

_LOGGER = logging.getLogger(__name__)

EMBED_BATCH_WINDOWS: Final = 32
"""Windows per encoder call offline: bounds memory (a 1 s window is 64 kB) without starving the
CPU. Batching does not change the scores: every window is embedded on its own inside the model."""


class EmbeddingModel(Protocol):
    """What the pipeline needs from `model.encoder.Encoder` (and what test fakes and the
    pretraining's torch student provide)."""

    @property
    def info(self) -> ModelInfo: ...

    def embed(self, windows: np.ndarray) -> np.ndarray: ...


def embed_windows(encoder: EmbeddingModel, windows: np.ndarray) -> np.ndarray:
    """Embed [B, S] windows; checks the encoder's output shape and values (ValueError)."""
    out = np.asarray(encoder.embed(windows), dtype=np.float32)
    dim = encoder.info.embedding_dim
    if out.ndim != 2 or out.shape[0] != windows.shape[0] or (dim > 0 and out.shape[1] != dim):
        raise ValueError(
            f"model {encoder.info.name} returned embeddings of shape {out.shape} for "
            f"{windows.shape[0]} windows (embedding_dim {dim})"
        )
    if not np.all(np.isfinite(out)):
        raise ValueError(f"model {encoder.info.name} returned NaN or inf embeddings")
    return out


def embed_recording(
    encoder: EmbeddingModel,
    samples: np.ndarray,
    window_samples: int,
    hop_samples: int,
    *,
    on_batch: Callable[[int], None] | None = None,
    levels: list[float] | None = None,
) -> np.ndarray:
    """float32 [n_windows, D] embeddings of every window of a mono recording, in batches (for
    building memory banks: calibration, evaluation, pretraining validation). `on_batch` gets
    the number of windows of each batch (progress bars); `levels`, when given, gets each
    window's RMS level in dBFS appended (calibration's running-level profile)."""
    parts = []
    for batch in iter_window_batches(samples, window_samples, hop_samples, EMBED_BATCH_WINDOWS):
        parts.append(embed_windows(encoder, batch))
        if levels is not None:
            levels.extend(window_dbfs(w) for w in batch)
        if on_batch is not None:
            on_batch(batch.shape[0])
    if not parts:
        dim = max(0, encoder.info.embedding_dim)
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(parts, axis=0)


@dataclass(frozen=True)
class WindowResult:
    """One analysed window."""

    index: int
    """Windows since the stream started (or since the last gap)."""
    start_time: float
    """Seconds, caller's clock."""
    end_time: float
    """Seconds, caller's clock: when the decision on this window could be made."""
    score: float
    dbfs: float
    """RMS level of the window."""


@dataclass(frozen=True)
class StateChange:
    """The machine's state changed at `time` (caller's clock)."""

    state: MachineState
    previous: MachineState | None
    time: float


@dataclass(frozen=True)
class EnvironmentChange:
    """The sound around the machine changed (`summary` says how) or returned to calibrated
    conditions (`summary` None) at `time` (caller's clock)."""

    summary: EnvironmentSummary | None
    time: float

    @property
    def changed(self) -> bool:
        return self.summary is not None


@dataclass
class PipelineStep:
    """Everything one call caused, in time order within each list."""

    windows: list[WindowResult] = field(default_factory=list)
    transitions: list[EventTransition] = field(default_factory=list)
    state_changes: list[StateChange] = field(default_factory=list)
    environment: list[EnvironmentChange] = field(default_factory=list)
    inference_seconds: float = 0.0
    """CPU wall time spent embedding and scoring the windows of this step."""

    def extend(self, other: PipelineStep) -> None:
        self.windows.extend(other.windows)
        self.transitions.extend(other.transitions)
        self.state_changes.extend(other.state_changes)
        self.environment.extend(other.environment)
        self.inference_seconds += other.inference_seconds


@dataclass(frozen=True)
class RecordingResult:
    """A whole recording through the pipeline from offset 0 (`run_recording`)."""

    step: PipelineStep
    duration_seconds: float

    @property
    def scores(self) -> np.ndarray:
        """float32 [n_windows] window scores in time order."""
        return np.asarray([w.score for w in self.step.windows], dtype=np.float32)

    @property
    def event_starts(self) -> list[EventTransition]:
        return [t for t in self.step.transitions if t.kind is EventType.START]


class MachinePipeline:
    """Framing, embedding, scoring, machine state and detection for one machine.

    Without `detector` settings the pipeline only scores (an evaluation before its threshold is
    known); with them it also tracks the machine state and raises events. With `running`
    settings it also tells a stopped machine (`idle`) from a running one, from the calibrated
    level `profile` and, when given, a bank of recordings of the stopped machine (`off_bank`).
    With an `environment` profile (and detector settings) it also tells when the sound around
    the running machine no longer resembles calibration (`environment_changed`).
    """

    def __init__(
        self,
        encoder: EmbeddingModel,
        bank: MemoryBank,
        *,
        method: str,
        window_samples: int,
        hop_samples: int,
        detector: DetectorSettings | None = None,
        running: RunningSettings | None = None,
        profile: RunningProfile | None = None,
        off_bank: MemoryBank | None = None,
        environment: EnvironmentProfile | None = None,
        views: ViewSet | None = None,
    ) -> None:
        check_method(method)
        if window_samples <= 0 or hop_samples <= 0:
            raise ValueError(
                f"window_samples ({window_samples}) and hop_samples ({hop_samples}) must be > 0"
            )
        info = encoder.info
        if info.window_samples > 0 and info.window_samples != window_samples:
            raise ValueError(
                f"model {info.name} takes {info.window_samples}-sample windows, the pipeline "
                f"was asked for {window_samples}"
            )
        self.encoder = encoder
        self.bank = bank
        self.method = method
        self.views = views
        self.window_samples = int(window_samples)
        self.hop_samples = int(hop_samples)
        self.detector_settings = detector
        self._detector = None if detector is None else Detector(detector)
        self._windower = Windower(self.window_samples, self.hop_samples)
        self.profile = profile
        self.off_bank = off_bank
        self._running = None if running is None else RunningMonitor(running)
        self._environment: EnvironmentMonitor | None = None
        if environment is not None and detector is not None:
            try:
                self._environment = EnvironmentMonitor(environment, self.hop_samples)
            except ValueError as exc:
                # A profile this version cannot use costs the monitor, never the machine.
                _LOGGER.warning("environment monitor off: %s; recalibrate to get it", exc)
        self._state: MachineState | None = None
        self._held: list[EventTransition] | None = None
        """An event that started on a window quieter than running (`_hold_start`), not yet
        reported: released once the machine is heard running on, dropped if it stops."""
        self._held_windows = 0
        self._audio_ok = False
        self._windows_since_gap = 0
        self._samples_since_gap = 0

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        encoder: EmbeddingModel,
        *,
        detector: DetectorSettings | None = None,
        hop_samples: int | None = None,
        running: RunningSettings | None = None,
        detect_environment: bool = True,
    ) -> MachinePipeline:
        """A pipeline with the bundle's bank, method, framing (hop overridable), running-level
        profile, stopped-machine bank and, with `detect_environment`, its environment profile;
        the encoder must be the calibrated one (BundleError otherwise)."""
        check_model(bundle, encoder.info, bundle.bundle_id)
        environment = bundle.environment if detect_environment else None
        if detect_environment and detector is not None and environment is None:
            _log_once(
                bundle.bundle_id,
                "bundle %s has no environment profile (calibrated by an older edge-asd, or "
                "built without audio): environment_changed is not reported; recalibrate to get it",
            )
        return cls(
            encoder,
            bundle.memory_bank(),
            method=bundle.method,
            window_samples=bundle.window_samples,
            hop_samples=bundle.hop_samples if hop_samples is None else hop_samples,
            detector=detector,
            running=running,
            profile=bundle.running_profile,
            off_bank=bundle.off_bank(),
            environment=environment,
            views=bundle.views,
        )

    # ------------------------------------------------------------------ state

    @property
    def threshold(self) -> float | None:
        return None if self.detector_settings is None else self.detector_settings.threshold

    @property
    def state(self) -> MachineState | None:
        """None until the first audio (or lack of it) is known."""
        return self._state

    @property
    def in_event(self) -> bool:
        """An event is open and reported (a held start is not yet one)."""
        return self._detector is not None and self._detector.in_event and self._held is None

    def _set_state(self, step: PipelineStep, state: MachineState, at: float) -> None:
        if self._detector is None or self._state == state:
            return
        step.state_changes.append(StateChange(state, self._state, at))
        self._state = state

    def _apply(self, step: PipelineStep, transitions: list[EventTransition]) -> None:
        context = self.environment
        for transition in transitions:
            if context is not None:
                transition = dataclasses.replace(transition, environment=context)
            step.transitions.append(transition)
            if transition.kind is EventType.START:
                self._set_state(step, MachineState.ANOMALOUS, transition.ts)
            elif transition.kind is EventType.END and self._audio_ok:
                self._set_state(step, self._heard_state(), transition.ts)

    @property
    def idle(self) -> bool:
        """The machine is known to be stopped."""
        return self._running is not None and self._running.idle

    @property
    def environment(self) -> EnvironmentSummary | None:
        """How the sound around the machine differs from calibration, while it does."""
        return None if self._environment is None else self._environment.summary

    @property
    def environment_changed(self) -> bool:
        return self._environment is not None and self._environment.changed

    def _heard_state(self) -> MachineState:
        """The state while audio flows and no event is open: a stop comes first (a stopped
        machine's room says nothing about its surroundings), then a changed environment."""
        if self.idle:
            return MachineState.IDLE
        if self.environment_changed:
            return MachineState.ENVIRONMENT_CHANGED
        return MachineState.NORMAL

    def set_audio(self, ok: bool, at: float) -> PipelineStep:
        """The machine's audio came (back) or was lost; lost audio ends an open event."""
        step = PipelineStep()
        if ok and not self._audio_ok:
            self._audio_ok = True
            self._set_state(step, self._heard_state(), at)
        elif not ok and (self._audio_ok or self._state is None):
            self._audio_ok = False
            if self._detector is not None:
                self._apply(step, self._close_detector(at))
            self._set_state(step, MachineState.NO_AUDIO, at)
        return step

    def reset(self) -> None:
        """Audio before the next push was lost: never splice a window across the gap."""
        self._windower.reset()
        if self._environment is not None:
            self._environment.reset()
        self._windows_since_gap = 0
        self._samples_since_gap = 0

    def close(self, at: float) -> PipelineStep:
        """End an open event now (shutdown)."""
        step = PipelineStep()
        if self._detector is not None:
            self._apply(step, self._close_detector(at))
        return step

    def _close_detector(self, at: float) -> list[EventTransition]:
        """End the detector's event; one whose start is still held was never reported, so it
        ends unreported too."""
        assert self._detector is not None
        transitions = self._detector.close(at)
        if self._held is not None:
            self._held = None
            return []
        return transitions

    # ------------------------------------------------------------------ scoring

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """float32 [B] scores of framed windows [B, window_samples] (no state, no events)."""
        return self._fused(windows, self.score_embeddings(embed_windows(self.encoder, windows)))

    def _fused(self, windows: np.ndarray, embedding_scores: np.ndarray) -> np.ndarray:
        """The window scores everything downstream sees: the embedding's, fused with the
        bundle's feature views when it has them."""
        if self.views is None:
            return embedding_scores
        return self.views.score(windows, embedding_scores)

    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """float32 [B] scores of the encoder's embeddings [B, D] against the bank with the
        pipeline's method: the scoring stage alone (benchmarks/latency.py times it)."""
        return self.bank.score(embeddings, self.method)

    def _score_and_distances(
        self, windows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Scores, and with an off bank each window's raw distance to the running and the
        stopped machine's recordings."""
        embeddings = embed_windows(self.encoder, windows)
        scores = self._fused(windows, self.bank.score(embeddings, self.method))
        if self.off_bank is None or self._running is None:
            return scores, None, None
        return scores, self.bank.score(embeddings, "raw"), self.off_bank.score(embeddings, "raw")

    def push(self, samples: np.ndarray, end_time: float) -> PipelineStep:
        """Feed the next mono block (float32, 16 kHz) of the stream; `end_time` is the time at
        its last sample. Returns the windows it completed and what they caused."""
        x = np.asarray(samples, dtype=np.float32)
        first_sample = self._samples_since_gap
        self._samples_since_gap += x.shape[0]
        windows = self._windower.push(x)
        step = PipelineStep()
        if windows.shape[0] == 0:
            return step
        block_end_sample = first_sample + x.shape[0]
        self._process(
            windows, step, lambda start: end_time - (block_end_sample - start) / SAMPLE_RATE_HZ
        )
        return step

    def _process(self, windows: np.ndarray, step: PipelineStep, time_of: _TimeOf) -> None:
        started = time.perf_counter()
        scores, running_d, off_d = self._score_and_distances(windows)
        step.inference_seconds += time.perf_counter() - started
        if self._detector is not None and not self._audio_ok:
            # Windows are audio: the machine is heard (first window, or after a gap in health).
            step.extend(self.set_audio(True, time_of(self._windows_since_gap * self.hop_samples)))
        for i, (window, score) in enumerate(zip(windows, scores, strict=True)):
            start_sample = self._windows_since_gap * self.hop_samples
            end_sample = start_sample + self.window_samples
            result = WindowResult(
                index=self._windows_since_gap,
                start_time=time_of(start_sample),
                end_time=time_of(end_sample),
                score=float(score),
                dbfs=window_dbfs(window),
            )
            self._windows_since_gap += 1
            step.windows.append(result)
            if self._detector is None:
                continue
            if self._running is not None:
                stopped = looks_stopped(
                    result.dbfs,
                    self.profile,
                    None if running_d is None else float(running_d[i]),
                    None if off_d is None else float(off_d[i]),
                )
                if not self._judge_running(step, stopped, result.end_time):
                    continue
            if self._environment is not None:
                self._judge_environment(step, window, result.end_time)
            transitions = self._detector.process(
                result.score,
                window_start_ts=result.start_time,
                window_end_ts=result.end_time,
                dbfs=result.dbfs,
            )
            self._apply(step, self._hold_start(transitions, result.dbfs))

    def _judge_running(self, step: PipelineStep, stopped: bool, at: float) -> bool:
        """Update the running state from one window; True if the window may feed detection."""
        assert self._running is not None and self._detector is not None
        change = self._running.update(stopped, at)
        if stopped and self._held is not None:
            # The quiet start was the machine running down: a stop, not a fault.
            self._close_detector(at)
        if change is True:
            # A machine that stops ends its event: what follows is silence, not the fault.
            self._apply(step, self._close_detector(at))
            self._set_state(step, MachineState.IDLE, at)
        elif change is False:
            self._set_state(step, self._heard_state(), at)
        if stopped and not self._detector.in_event:
            # The windows just before a stop are its transient: do not keep their evidence.
            self._detector.close(at)
        return not (stopped or self._running.idle or self._running.holding_off(at))

    def _hold_start(self, transitions: list[EventTransition], dbfs: float) -> list[EventTransition]:
        """The transitions to report now. A machine that is switched off first runs down: its
        windows grow quieter than any calibrated running window and sound unlike normal before
        they are quiet enough to look stopped. So an event that starts on a window quieter than
        the running level's 1st percentile is held until the machine is heard running on for as
        many windows as it takes to call it idle (then reported, with its own start time), and
        dropped if it looks stopped first. A fault that adds sound starts at once."""
        if self._held is not None:
            self._held.extend(transitions)
            self._held_windows += 1
            assert self._running is not None
            ended = any(t.kind is EventType.END for t in self._held)
            if not ended and self._held_windows < self._running.settings.idle_windows:
                return []
            released, self._held = self._held, None
            return released
        starts = any(t.kind is EventType.START for t in transitions)
        if (
            starts
            and self._running is not None
            and self.profile is not None
            and dbfs < self.profile.running_dbfs_low
        ):
            self._held, self._held_windows = list(transitions), 0
            return []
        return transitions

    def _judge_environment(self, step: PipelineStep, window: np.ndarray, at: float) -> None:
        """Feed one window of the running machine to the environment monitor."""
        assert self._environment is not None and self._detector is not None
        change = self._environment.update(window)
        if change is None:
            return
        step.environment.append(EnvironmentChange(self._environment.summary, at))
        if not self.in_event:
            # An open alarm outranks the surroundings: a fault that changes most of the
            # spectrum (a broken blade) reads the same to this monitor as a new noise, and must
            # not be shown as one. The event carries the environment as its context instead,
            # and its end shows the environment_changed state.
            self._set_state(step, self._heard_state(), at)

    def run_recording(
        self, samples: np.ndarray, *, pad_short: bool = False, close: bool = True
    ) -> RecordingResult:
        """A whole mono recording (float32, 16 kHz) as one stream from offset 0, in batches so
        hours of audio are never framed at once. Times are seconds from the file's start.

        `pad_short` zero-pads a recording shorter than one window to one window (so a short
        evaluation clip still gets a score); otherwise it yields no window. With `close`, an
        event still open at the end is ended there.
        """
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"recording must be 1-D samples, got shape {x.shape}")
        if x.size == 0:
            raise ValueError("recording is empty")
        if not np.all(np.isfinite(x)):
            raise ValueError("recording contains NaN or inf samples")
        if pad_short and x.shape[0] < self.window_samples:
            x = np.pad(x, (0, self.window_samples - x.shape[0]))
        self.reset()
        duration = x.shape[0] / SAMPLE_RATE_HZ
        step = PipelineStep()
        for batch in self._batches(x):
            self._process(batch, step, lambda sample: sample / SAMPLE_RATE_HZ)
        self._samples_since_gap = x.shape[0]
        if close:
            step.extend(self.close(duration))
        return RecordingResult(step=step, duration_seconds=duration)

    def _batches(self, x: np.ndarray) -> Iterator[np.ndarray]:
        return iter_window_batches(x, self.window_samples, self.hop_samples, EMBED_BATCH_WINDOWS)


_LOGGED_BUNDLES: set[str] = set()


def _log_once(bundle_id: str, message: str) -> None:
    """Log `message` (with the bundle id) once per bundle and process: not again for every
    replayed file or reload."""
    if bundle_id not in _LOGGED_BUNDLES:
        _LOGGED_BUNDLES.add(bundle_id)
        _LOGGER.info(message, bundle_id)


class _TimeOf(Protocol):
    def __call__(self, sample: int, /) -> float: ...
