"""Prometheus metrics of the daemon (served at ``/metrics`` by `http.StatusServer`).

Imported only when the HTTP endpoint is enabled: prometheus-client is light, but a gateway that
does not serve metrics should not load it.

Per-window facts (windows, scores, states, events) arrive through the same calls as the status
board's (`StatusBoard` forwards them); the daemon's running totals (overruns, dropped windows,
reconnects, outbox depth, clip counters) are handed over as a snapshot with `totals` and exposed
as counters at scrape time, because the daemon already keeps them as totals and Prometheus
counters only go up by increments.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_asd.detection.states import EventType, MachineState

SCORE_RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
"""Score over threshold: comparable across machines and methods, and 1.0 is the alarm line."""
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Seconds of embedding + scoring per window; windows come every 0.5 s by default."""


@dataclass(frozen=True)
class DaemonTotals:
    """Running totals kept by the daemon, as in its stats message."""

    capture_overruns: int = 0
    dropped_windows: int = 0
    reconnects: int = 0
    outbox_depth: int = 0
    outbox_discarded: int = 0
    outbox_degraded: bool = False
    """The outbox cannot store (full or read-only disk): events go out without durability."""
    outbox_write_errors: int = 0
    outbox_recovered_corrupt: int = 0
    outbox_quarantined: int = 0
    events_lost: int = 0
    clips_written: int = 0
    clips_dropped: int = 0
    clip_failures: int = 0


class _SnapshotCollector(Collector):
    """Exposes the totals snapshot and per-machine audio silence at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        totals, last_audio, started = self._metrics._scrape_state()
        counters = (
            ("edge_asd_capture_overruns", "Capture overruns", totals.capture_overruns),
            (
                "edge_asd_dropped_windows",
                "Windows dropped before inference",
                totals.dropped_windows,
            ),
            ("edge_asd_mqtt_reconnects", "MQTT reconnects", totals.reconnects),
            (
                "edge_asd_outbox_discarded",
                "Events dropped by the outbox bounds",
                totals.outbox_discarded,
            ),
            (
                "edge_asd_outbox_write_errors",
                "Outbox writes that failed (disk full, I/O error)",
                totals.outbox_write_errors,
            ),
            (
                "edge_asd_outbox_recovered_corrupt",
                "Corrupt outbox files moved aside and replaced",
                totals.outbox_recovered_corrupt,
            ),
            (
                "edge_asd_outbox_quarantined",
                "Messages the broker refused, set aside in the outbox",
                totals.outbox_quarantined,
            ),
            (
                "edge_asd_events_lost",
                "Events neither stored nor delivered (degraded outbox, broker away)",
                totals.events_lost,
            ),
            ("edge_asd_clips_written", "Event clips written", totals.clips_written),
            ("edge_asd_clips_dropped", "Event clips dropped (writer behind)", totals.clips_dropped),
            ("edge_asd_clip_failures", "Failed clip writes", totals.clip_failures),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "edge_asd_outbox_depth", "Events waiting in the outbox", value=totals.outbox_depth
        )
        yield GaugeMetricFamily(
            "edge_asd_outbox_degraded",
            "1 while the outbox cannot store and events are published without durability",
            value=float(totals.outbox_degraded),
        )
        silence = GaugeMetricFamily(
            "edge_asd_seconds_without_audio",
            "Seconds since the machine's last analysed window (since start-up before the first)",
            labels=["machine"],
        )
        now = self._metrics.clock()
        for machine, last in sorted(last_audio.items()):
            silence.add_metric([machine], max(0.0, now - (started if last is None else last)))
        yield silence


class Metrics:
    """The daemon's metrics in a registry of their own (several instances can coexist)."""

    def __init__(
        self,
        *,
        node_id: str = "",
        version: str = "",
        machines: tuple[str, ...] | list[str] = (),
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        r = self.registry
        self._lock = threading.Lock()
        self._totals = DaemonTotals()
        self._started = clock()
        self._last_audio: dict[str, float | None] = dict.fromkeys(machines)
        self._states: dict[str, str] = {}
        info = Gauge(
            "edge_asd_build_info",
            "Version and node of this daemon",
            ["version", "node"],
            registry=r,
        )
        info.labels(version=version, node=node_id).set(1)
        self._windows = Counter(
            "edge_asd_windows_processed", "Windows analysed", ["machine"], registry=r
        )
        self._score_ratio = Histogram(
            "edge_asd_score_ratio",
            "Window score divided by the machine's threshold",
            ["machine"],
            buckets=SCORE_RATIO_BUCKETS,
            registry=r,
        )
        self._score = Gauge("edge_asd_score", "Latest window score", ["machine"], registry=r)
        self._threshold = Gauge(
            "edge_asd_threshold", "Alarm threshold of the machine's score", ["machine"], registry=r
        )
        self._level = Gauge(
            "edge_asd_level_dbfs", "Latest window level, dB full scale", ["machine"], registry=r
        )
        self._events = Counter(
            "edge_asd_events", "Event transitions", ["machine", "kind"], registry=r
        )
        self._state = Gauge(
            "edge_asd_machine_state",
            "1 for the machine's current state, 0 for the others",
            ["machine", "state"],
            registry=r,
        )
        self._latency = Histogram(
            "edge_asd_inference_seconds",
            "Embedding and scoring time per window",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_SnapshotCollector(self))
        for machine in machines:
            self._windows.labels(machine=machine)

    # --------------------------------------------------------------- StatusBoard's sink

    def machine_state(self, name: str, state: MachineState | str) -> None:
        value = MachineState(state).value
        with self._lock:
            self._states[name] = value
            self._last_audio.setdefault(name, None)
        # Every state gets a series, so a query for `state="anomalous"` is 0, not absent.
        for candidate in MachineState:
            self._state.labels(machine=name, state=candidate.value).set(
                1.0 if candidate.value == value else 0.0
            )

    def window(
        self, name: str, end_time: float, score: float, threshold: float, dbfs: float
    ) -> None:
        with self._lock:
            self._last_audio[name] = float(end_time)
        self._windows.labels(machine=name).inc()
        if math.isfinite(score):
            self._score.labels(machine=name).set(score)
            if threshold > 0 and math.isfinite(threshold):
                self._score_ratio.labels(machine=name).observe(score / threshold)
        if math.isfinite(threshold):
            self._threshold.labels(machine=name).set(threshold)
        if math.isfinite(dbfs):
            self._level.labels(machine=name).set(dbfs)

    def event(self, name: str, transition_kind: EventType | str) -> None:
        self._events.labels(machine=name, kind=EventType(transition_kind).value).inc()

    # --------------------------------------------------------------- daemon's other facts

    def inference(self, seconds_per_window: float, windows: int = 1) -> None:
        """Per-window embedding + scoring time (a step's time over its windows)."""
        for _ in range(max(0, windows)):
            self._latency.observe(seconds_per_window)

    def totals(self, totals: DaemonTotals) -> None:
        """The daemon's running totals (call it with each stats snapshot)."""
        with self._lock:
            self._totals = totals

    def _scrape_state(self) -> tuple[DaemonTotals, dict[str, float | None], float]:
        with self._lock:
            return self._totals, dict(self._last_audio), self._started

    # --------------------------------------------------------------- exposition

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
