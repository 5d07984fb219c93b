"""Fault injection for tests/test_fault_injection.py. TEST-ONLY: never set it in production.

The fault-injection suite runs the real daemon as a subprocess and needs to make a worker
thread crash or hang, or the wall clock jump, at a known moment. It sets
``EDGE_ASD_FAULT_INJECT`` to comma-separated faults, each ``NAME[:TARGET][@SECONDS]``:

- ``inference-crash@S``: the inference thread raises S seconds after start.
- ``capture-crash:DEVICE@S``: the capture thread of DEVICE (the configured device string)
  raises S seconds after start.
- ``capture-hang:DEVICE@S``: the capture thread of DEVICE blocks for good (no more heartbeats).
- ``clock-jump:SECONDS@S``: the wall clock the daemon reads jumps by SECONDS (negative: back).

``@S`` defaults to 0. Unset (the normal case) nothing here does anything; an entry that does not
parse is logged and ignored, so a typo cannot stop a production daemon.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from edge_asd.audio.sources import AudioSource, SourceStats

_LOGGER = logging.getLogger(__name__)

FAULT_INJECT_ENV: Final = "EDGE_ASD_FAULT_INJECT"
INFERENCE_CRASH: Final = "inference-crash"
CAPTURE_CRASH: Final = "capture-crash"
CAPTURE_HANG: Final = "capture-hang"
CLOCK_JUMP: Final = "clock-jump"
_KNOWN: Final = (INFERENCE_CRASH, CAPTURE_CRASH, CAPTURE_HANG, CLOCK_JUMP)


class InjectedFaultError(RuntimeError):
    """Raised by an injected crash: stands for a bug in a worker thread."""


@dataclass(frozen=True)
class Fault:
    name: str
    target: str
    after_seconds: float


def parse_faults(text: str) -> list[Fault]:
    faults = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        spec, _, after = item.partition("@")
        name, _, target = spec.partition(":")
        try:
            seconds = float(after) if after else 0.0
        except ValueError:
            _LOGGER.error("%s: ignoring %r (bad @seconds)", FAULT_INJECT_ENV, item)
            continue
        if name not in _KNOWN:
            _LOGGER.error("%s: ignoring unknown fault %r", FAULT_INJECT_ENV, item)
            continue
        faults.append(Fault(name, target, seconds))
    return faults


class FaultInjection:
    """The faults asked for, and whether each is due; a no-op when there are none."""

    def __init__(
        self, faults: Sequence[Fault] = (), *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._faults = list(faults)
        self._mono = monotonic
        self._started = monotonic()
        if self._faults:
            _LOGGER.warning(
                "TEST-ONLY fault injection active (%s): %s",
                FAULT_INJECT_ENV,
                ", ".join(f"{f.name}:{f.target}@{f.after_seconds:g}" for f in self._faults),
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultInjection:
        env = os.environ if environ is None else environ
        return cls(parse_faults(env.get(FAULT_INJECT_ENV, "")))

    @property
    def active(self) -> bool:
        return bool(self._faults)

    def _due(self, name: str, target: str | None = None) -> Fault | None:
        elapsed = self._mono() - self._started
        for fault in self._faults:
            if fault.name != name or elapsed < fault.after_seconds:
                continue
            if target is None or fault.target == target:
                return fault
        return None

    def check_inference(self) -> None:
        """Called by the inference thread between blocks."""
        if self._faults and self._due(INFERENCE_CRASH) is not None:
            raise InjectedFaultError("injected inference-crash")

    def wall_offset(self) -> float:
        """Seconds to add to the wall clock (clock-jump faults that are due)."""
        if not self._faults:
            return 0.0
        return sum(
            float(f.target or 0.0)
            for f in self._faults
            if f.name == CLOCK_JUMP and self._mono() - self._started >= f.after_seconds
        )

    def wall_clock(self) -> float:
        return time.time() + self.wall_offset()

    def wrap_source_factory(
        self, factory: Callable[[str | int, Sequence[int]], AudioSource]
    ) -> Callable[[str | int, Sequence[int]], AudioSource]:
        """`factory` whose sources crash or hang as asked (unchanged without capture faults)."""
        if not any(f.name in (CAPTURE_CRASH, CAPTURE_HANG) for f in self._faults):
            return factory

        def make(device: str | int, channels: Sequence[int]) -> AudioSource:
            return _FaultySource(factory(device, channels), str(device), self)

        return make


class _FaultySource:
    """Delegates to a real source; its `read` crashes or hangs once the fault is due."""

    def __init__(self, inner: AudioSource, device: str, faults: FaultInjection) -> None:
        self._inner = inner
        self._device = device
        self._faults = faults

    @property
    def description(self) -> str:
        return self._inner.description

    @property
    def sample_rate(self) -> int:
        return self._inner.sample_rate

    @property
    def channels(self) -> int:
        return self._inner.channels

    def start(self) -> None:
        self._inner.start()

    def read(self, timeout_seconds: float) -> npt.NDArray[np.float32] | None:
        if self._faults._due(CAPTURE_CRASH, self._device) is not None:
            raise InjectedFaultError(f"injected capture-crash on {self._device!r}")
        if self._faults._due(CAPTURE_HANG, self._device) is not None:
            _LOGGER.warning("injected capture-hang on %r: this thread now blocks", self._device)
            threading.Event().wait()
        return self._inner.read(timeout_seconds)

    def stop(self) -> None:
        self._inner.stop()

    def stats(self) -> SourceStats:
        return self._inner.stats()
