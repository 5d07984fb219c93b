"""Has the sound around the machine changed since calibration? (`environment_changed`)

A detector calibrated in one noise and run in a louder, different one loses its sensitivity
without a word: the machine's sound drowns, nothing scores high enough, and every fault goes
unheard. This module tells that case apart from a fault, from calibration data only:

- Calibration stores the 1/3-octave band levels of every `BLOCK_SECONDS` block of the normal
  audio (`EnvironmentProfile`): the set of conditions the bundle has heard (loads, shifts,
  neighbouring machines), not one average, so a bundle calibrated or `learn`ed in several
  conditions knows each of them.
- At run time the monitor keeps the same `BLOCK_SECONDS` energy average of the band levels and
  measures its distance to the NEAREST calibration block: the median over bands of the absolute
  level difference (dB). The median is what separates a changed environment from a fault: a
  fault (a whine, bearing impacts, rubbing) changes the few bands where its energy sits and
  leaves the median where it was, while a new noise source, a moved microphone or a changed
  gain moves most bands. Half the spectrum is where the median breaks down: no tuned share.
- The margin is the calibration's own spread (how far each calibration block is from the
  nearest block of another recording, the worst one) plus `MIN_CHANGE_DB`. The state is
  entered after `ENTER_SECONDS` of distances over the margin and left after `EXIT_SECONDS`
  under the spread plus `RELEASE_SHARE` of `MIN_CHANGE_DB` (hysteresis), so it does not flap.

What the operator gets (`EnvironmentSummary`): the broadband level change against the nearest
calibrated condition and the bands that changed most.

numpy only (the daemon imports no scipy); per window it costs one short FFT of the window and a
distance to at most `MAX_BLOCKS` stored blocks.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.explain import (
    FRAME_SAMPLES,
    band_edges,
    band_matrix,
    band_power,
    format_band,
    frame_power,
)

_LOGGER = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

BLOCK_SECONDS: Final = 10.0
"""Sound is compared in 10 s energy averages: long enough that a machine's own cycles (a press
stroke, a fan's beat) and a passing forklift average out, short enough to follow a change
within tens of seconds."""
MIN_CHANGE_DB: Final = 3.0
"""The smallest broad change reported, beyond the calibration's own spread: most bands 3 dB off,
i.e. twice (or half) the power. A new sound as loud as everything calibration heard in a band
raises it by 3 dB: from there on the machine's own sound no longer dominates most of its
spectrum, and the detector can no longer be trusted to hear its faults. A physical boundary,
not a tuned one; more than a microphone's gain drift over months (a dB or two)."""
RELEASE_SHARE: Final = 0.5
"""Hysteresis: the state ends when the distance is back under the calibration spread plus this
share of `MIN_CHANGE_DB`."""
ENTER_SECONDS: Final = 20.0
"""Seconds of distances over the margin (after the 10 s average filled) before the state is
entered: a change must be sustained, not a passing noise."""
EXIT_SECONDS: Final = 20.0
"""Seconds of distances under the release margin before the state ends."""
BAND_FLOOR_DB: Final = -120.0
"""Band levels are floored here (dB re full scale), below any real microphone's self-noise: an
empty band (a band-limited recording, digital silence) must not read as a change of hundreds
of dB."""
MAX_BLOCKS: Final = 1024
"""At most this many calibration blocks are kept (2.8 hours at 10 s; longer calibrations are
thinned evenly): bounds the per-window distance (docs/benchmarks.md) and the bundle's size."""
SUMMARY_BANDS: Final = 3
"""Bands named in the summary: the ones that changed most."""
SPREAD_CHUNK_BLOCKS: Final = 16
"""Blocks compared at once when measuring the calibration spread: 16 x 1024 blocks x 20 bands
is 2.6 MB (`learn` runs inside the daemon)."""


def _db(power: npt.ArrayLike) -> FloatArray:
    level = 10.0 * np.log10(np.maximum(np.asarray(power, dtype=np.float64), 1e-30))
    return np.asarray(np.maximum(level, BAND_FLOOR_DB))


def block_distance(levels_db: npt.ArrayLike, blocks_db: npt.ArrayLike) -> FloatArray:
    """Median over bands of |level difference| (dB) between `levels_db` [..., B] and each block
    [N, B]: [..., N]."""
    diff = np.abs(np.asarray(levels_db)[..., None, :] - np.asarray(blocks_db))
    return np.asarray(np.median(diff, axis=-1))


def calibration_spread(blocks_db: npt.ArrayLike, groups: npt.ArrayLike | None = None) -> float:
    """The largest distance of a calibration block to its nearest INDEPENDENT block (dB): how
    far normal sound strays from the rest of what calibration heard. Blocks of one recording
    (`groups`: the recording of each block) are near-copies of each other, so a block is
    compared with the other recordings' blocks; with a single recording, with its blocks that
    are not its neighbours in time. 0 when there is nothing to compare with."""
    blocks = np.asarray(blocks_db, dtype=np.float64)
    n = blocks.shape[0]
    group = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    several = np.unique(group).size > 1
    worst = 0.0
    for start in range(0, n, SPREAD_CHUNK_BLOCKS):
        rows = np.arange(start, min(n, start + SPREAD_CHUNK_BLOCKS))
        distances = block_distance(blocks[rows], blocks)
        if several:
            dependent = group[rows][:, None] == group[None, :]
        else:
            dependent = np.abs(rows[:, None] - np.arange(n)[None, :]) <= 1
        distances[dependent] = np.inf
        nearest = np.min(distances, axis=1)
        nearest = nearest[np.isfinite(nearest)]
        if nearest.size:
            worst = max(worst, float(np.max(nearest)))
    return worst


@dataclass(frozen=True)
class EnvironmentProfile:
    """The conditions calibration heard: band levels of each `BLOCK_SECONDS` block (stored in
    the bundle)."""

    edges_hz: FloatArray
    """[B, 2] band edges (the 1/3-octave bands of `explain.band_edges`)."""
    blocks_db: FloatArray
    """[N, B] energy-average level of each band over each block (dB re full-scale mean
    square, floored at `BAND_FLOOR_DB`)."""
    spread_db: float
    """`calibration_spread` of the blocks."""
    groups: npt.NDArray[np.int64] | None = None
    """[N] the recording each block came from (for the spread after `learn`); None: one."""
    block_seconds: float = BLOCK_SECONDS

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges_hz, dtype=np.float64)
        blocks = np.asarray(self.blocks_db, dtype=np.float64)
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise ValueError(f"environment profile: edges have shape {edges.shape}")
        if blocks.ndim != 2 or blocks.shape[0] == 0 or blocks.shape[1] != edges.shape[0]:
            raise ValueError(
                f"environment profile: blocks {blocks.shape} do not match {edges.shape[0]} bands"
            )
        if not np.all(np.isfinite(blocks)) or not math.isfinite(self.spread_db):
            raise ValueError("environment profile: levels must be finite")
        groups = (
            np.zeros(blocks.shape[0], dtype=np.int64)
            if self.groups is None
            else (np.asarray(self.groups, dtype=np.int64))
        )
        if groups.shape != (blocks.shape[0],):
            raise ValueError(
                f"environment profile: {groups.shape} groups for {blocks.shape[0]} blocks"
            )
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "edges_hz", edges)
        object.__setattr__(self, "blocks_db", blocks)
        object.__setattr__(self, "spread_db", float(self.spread_db))

    @property
    def enter_db(self) -> float:
        """Distance beyond which the sound no longer resembles calibration."""
        return self.spread_db + MIN_CHANGE_DB

    @property
    def release_db(self) -> float:
        """Distance under which it resembles calibration again."""
        return self.spread_db + RELEASE_SHARE * MIN_CHANGE_DB

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (bundle.json)."""
        return {
            "edges_hz": self.edges_hz.round(3).tolist(),
            "blocks_db": self.blocks_db.round(2).tolist(),
            "spread_db": round(self.spread_db, 3),
            "groups": np.asarray(self.groups).tolist(),
            "block_seconds": self.block_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvironmentProfile:
        edges = np.asarray(data["edges_hz"], dtype=np.float64).reshape(-1, 2)
        return cls(
            edges_hz=edges,
            blocks_db=np.asarray(data["blocks_db"], dtype=np.float64).reshape(-1, edges.shape[0]),
            spread_db=float(data["spread_db"]),
            groups=None if data.get("groups") is None else np.asarray(data["groups"]),
            block_seconds=float(data.get("block_seconds", BLOCK_SECONDS)),
        )

    def extended(self, clips: Sequence[npt.ArrayLike]) -> EnvironmentProfile:
        """This profile with the blocks of more normal recordings (`learn`)."""
        new, new_groups = clip_blocks(clips)
        old_groups = np.asarray(self.groups)
        blocks, groups = _thin(
            np.concatenate([self.blocks_db, new]),
            np.concatenate([old_groups, new_groups + int(old_groups.max()) + 1]),
        )
        return EnvironmentProfile(
            edges_hz=self.edges_hz,
            blocks_db=blocks,
            spread_db=calibration_spread(blocks, groups),
            groups=groups,
            block_seconds=self.block_seconds,
        )


def _thin(
    blocks: FloatArray, groups: npt.NDArray[np.int64]
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    if blocks.shape[0] <= MAX_BLOCKS:
        return blocks, groups
    keep = np.linspace(0, blocks.shape[0] - 1, MAX_BLOCKS).round().astype(np.int64)
    return blocks[keep], groups[keep]


def clip_blocks(
    clips: Sequence[npt.ArrayLike],
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """([N, B] band levels of each `BLOCK_SECONDS` block of each clip (16 kHz mono), [N] the
    clip of each block). A clip's tail shorter than half a block is left out unless it is the
    clip's only block."""
    block = round(BLOCK_SECONDS * SAMPLE_RATE_HZ)
    rows = []
    groups = []
    for index, clip in enumerate(clips):
        x = np.asarray(clip, dtype=np.float32)
        for start in range(0, x.size, block):
            part = x[start : start + block]
            if part.size < FRAME_SAMPLES or (start > 0 and part.size < block // 2):
                continue
            # Frames side by side (hop = frame): an energy average needs no overlap.
            _, power = band_power(part, SAMPLE_RATE_HZ, hop=FRAME_SAMPLES)
            rows.append(_db(np.mean(power, axis=0)))
            groups.append(index)
    n_bands = band_edges(SAMPLE_RATE_HZ).shape[0]
    return (
        np.asarray(rows, dtype=np.float64).reshape(-1, n_bands),
        np.asarray(groups, dtype=np.int64),
    )


def environment_profile(clips: Sequence[npt.ArrayLike]) -> EnvironmentProfile:
    """The profile of normal calibration recordings (16 kHz mono float32); ValueError when no
    clip is long enough for a block."""
    blocks, groups = _thin(*clip_blocks(clips))
    if blocks.shape[0] == 0:
        raise ValueError("environment profile: no recording is long enough")
    return EnvironmentProfile(
        edges_hz=band_edges(SAMPLE_RATE_HZ),
        blocks_db=blocks,
        spread_db=calibration_spread(blocks, groups),
        groups=groups,
    )


@dataclass(frozen=True)
class BandChange:
    """One band's level change against the nearest calibrated condition."""

    low_hz: float
    high_hz: float
    change_db: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "hz": [round(self.low_hz), round(self.high_hz)],
            "change_db": round(self.change_db, 1),
        }


@dataclass(frozen=True)
class EnvironmentSummary:
    """How the sound around the machine differs from the nearest calibrated condition."""

    level_change_db: float
    """Broadband (bands from 88 Hz up) level change, dB."""
    change_db: float
    """Median over bands of the absolute level change, dB (the monitor's distance)."""
    margin_db: float
    """The distance beyond which the environment counts as changed (this bundle's)."""
    bands: tuple[BandChange, ...]
    """The bands that changed most, largest change first."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "level_change_db": round(self.level_change_db, 1),
            "change_db": round(self.change_db, 1),
            "margin_db": round(self.margin_db, 1),
            "bands": [band.to_dict() for band in self.bands],
        }

    def describe(self) -> str:
        """'+9.5 dB overall, most at 500-630 Hz (+12.1 dB)'."""
        text = f"{self.level_change_db:+.1f} dB overall"
        if self.bands:
            top = self.bands[0]
            text += f", most at {format_band(top.low_hz, top.high_hz)} ({top.change_db:+.1f} dB)"
        return text


class EnvironmentMonitor:
    """Debounced 'the environment changed' decision over a stream of windows."""

    def __init__(self, profile: EnvironmentProfile, hop_samples: int) -> None:
        edges = band_edges(SAMPLE_RATE_HZ)
        if edges.shape != profile.edges_hz.shape or not np.allclose(edges, profile.edges_hz):
            raise ValueError("environment profile: its bands are not this version's bands")
        self.profile = profile
        self._matrix = band_matrix(edges, FRAME_SAMPLES, SAMPLE_RATE_HZ).T
        hop_seconds = hop_samples / SAMPLE_RATE_HZ
        self._average_windows = max(1, round(profile.block_seconds / hop_seconds))
        self._enter_windows = max(1, math.ceil(ENTER_SECONDS / hop_seconds))
        self._exit_windows = max(1, math.ceil(EXIT_SECONDS / hop_seconds))
        self._recent: deque[FloatArray] = deque(maxlen=self._average_windows)
        self._changed = False
        self._run = 0
        self._summary: EnvironmentSummary | None = None

    @property
    def changed(self) -> bool:
        return self._changed

    @property
    def summary(self) -> EnvironmentSummary | None:
        """While changed: how the sound differs (refreshed every window); None otherwise."""
        return self._summary if self._changed else None

    def reset(self) -> None:
        """Audio was lost: start the average afresh (the decision stands until audio says
        otherwise)."""
        self._recent.clear()
        self._run = 0

    def update(self, window: npt.ArrayLike) -> bool | None:
        """Feed one window of a running machine. Returns True when the environment just
        changed, False when it just returned to calibrated conditions, None otherwise."""
        # Frames side by side, as `clip_blocks` measured calibration (same scale).
        power = frame_power(window, FRAME_SAMPLES, FRAME_SAMPLES) @ self._matrix
        self._recent.append(np.mean(power, axis=0))
        if len(self._recent) < self._average_windows:
            return None
        levels = _db(np.mean(self._recent, axis=0))
        distances = block_distance(levels, self.profile.blocks_db)
        nearest = int(np.argmin(distances))
        distance = float(distances[nearest])
        if self._changed:
            self._summary = self._summarise(levels, nearest, distance)
        if self._changed:
            towards_other = distance < self.profile.release_db
        else:
            towards_other = distance > self.profile.enter_db
        if not towards_other:
            self._run = 0
            return None
        self._run += 1
        if self._run < (self._exit_windows if self._changed else self._enter_windows):
            return None
        self._run = 0
        self._changed = not self._changed
        if self._changed:
            self._summary = self._summarise(levels, nearest, distance)
            _LOGGER.info("environment changed: %s", self._summary.describe())
        return self._changed

    def _summarise(self, levels: FloatArray, nearest: int, distance: float) -> EnvironmentSummary:
        reference = self.profile.blocks_db[nearest]
        change = levels - reference
        total_now = float(np.sum(10.0 ** (levels / 10.0)))
        total_then = float(np.sum(10.0 ** (reference / 10.0)))
        order = np.argsort(-np.abs(change), kind="stable")[:SUMMARY_BANDS]
        edges = self.profile.edges_hz
        return EnvironmentSummary(
            level_change_db=10.0 * math.log10(total_now / total_then),
            change_db=distance,
            margin_db=self.profile.enter_db,
            bands=tuple(
                BandChange(float(edges[b, 0]), float(edges[b, 1]), float(change[b])) for b in order
            ),
        )
