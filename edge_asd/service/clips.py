"""Event clips: the audio around each event, on disk, for the people on shift to listen to.

`ClipRecorder` keeps a short ring of each machine's recent audio (the pre-roll). When an event
starts it begins collecting from `pre_seconds` before the event's first window; when the event
ends it keeps collecting for `post_seconds` and then hands the clip to a background writer
thread, which writes ``<event_id>.flac`` (``.wav`` without soundfile/libsndfile) and a
spectrogram ``<event_id>.png`` with the explained region marked, and applies retention (age,
then total size, oldest first).

It never blocks inference: the inference thread only copies samples into numpy buffers; the
hand-over is a bounded queue that drops (and counts) a clip when the writer is behind; a clip
directory that is missing, unwritable or full is logged once, counted, and retried with the next
clip; nothing here raises into the daemon.

The clip directory belongs to edge-asd: retention deletes files there whose names look like
clips (``<id>.flac|wav|png``), and only those.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import re
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from edge_asd.service.spectrogram import Marks, write_spectrogram_png

_LOGGER = logging.getLogger(__name__)

CLIP_NAME: Final = re.compile(r"^(?P<id>[A-Za-z0-9][A-Za-z0-9_-]{0,127})\.(?P<ext>flac|wav|png)$")
"""A clip file's name: what retention may delete and the HTTP endpoint may serve."""
AUDIO_EXTENSIONS: Final = ("flac", "wav")
LOOKBACK_SECONDS: Final = 30.0
"""Ring length beyond the pre-roll: an event's start time is its first window of evidence,
which the detector only confirms a few windows (or, with the evidence rule, seconds) later."""
DEFAULT_QUEUE_SIZE: Final = 4
"""Clips waiting for the writer; a clip is seconds of audio, so more would mean the disk is
hopeless anyway."""
DEFAULT_MAX_CLIP_SECONDS: Final = 90.0
"""Audio kept per clip at most (pre-roll, the start of the event, post-roll): enough to hear a
fault, and it bounds memory at about 6 MB per machine in an endless event (the daemon has a
100 MB target)."""
WRITER_POLL_SECONDS: Final = 0.5
PCM16_MAX: Final = 32767
PCM16_SCALE: Final = 32768.0
_SECONDS_PER_DAY: Final = 86_400.0
_BYTES_PER_MB: Final = 1024 * 1024


class MarkedRegion(Protocol):
    """The time-frequency region to outline (an `explain.Explanation` is one); times are
    seconds from the event's start."""

    @property
    def start_s(self) -> float: ...

    @property
    def end_s(self) -> float: ...

    @property
    def band_hz(self) -> tuple[float, float]: ...


@dataclass(frozen=True)
class EventAudio:
    """What a recorder holds of an open (or just ended) event, as float32 in [-1, 1]."""

    pre: npt.NDArray[np.float32]
    """Audio before the event's start: normal, a reference when the bundle has no profile."""
    event: npt.NDArray[np.float32]
    """From the event's start to now."""


@dataclass(frozen=True)
class ClipStats:
    written: int
    dropped: int
    """Clips the writer queue had no room for."""
    failures: int
    """Clip or retention writes that failed (unwritable or full directory)."""
    deleted: int
    """Clip files removed by retention."""
    pending: int
    """Clips waiting in the queue."""


def _to_pcm16(samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.asarray(np.round(np.clip(x, -1.0, 1.0) * PCM16_MAX), dtype=np.int16)


def _float_span(
    chunks: list[npt.NDArray[np.int16]], start: int, end: int
) -> npt.NDArray[np.float32]:
    """Samples [start, end) of the concatenated int16 `chunks` as float32 in [-1, 1], copied
    once: neither the int16 concatenation nor a second float temporary is made."""
    out = np.empty(max(0, end - start), dtype=np.float32)
    pos = 0
    for chunk in chunks:
        lo, hi = max(start - pos, 0), min(end - pos, chunk.size)
        if lo < hi:
            out[pos + lo - start : pos + hi - start] = chunk[lo:hi]
        pos += chunk.size
        if pos >= end:
            break
    out *= np.float32(1.0 / PCM16_SCALE)
    return out


class _Ring:
    """The last `capacity` samples of a stream, int16."""

    def __init__(self, capacity: int) -> None:
        self._data = np.zeros(max(1, capacity), dtype=np.int16)
        self._end = 0
        """Write position."""
        self.size = 0

    def write(self, pcm: npt.NDArray[np.int16]) -> None:
        cap = self._data.size
        if pcm.size >= cap:
            self._data[:] = pcm[-cap:]
            self._end = 0
            self.size = cap
            return
        first = min(pcm.size, cap - self._end)
        self._data[self._end : self._end + first] = pcm[:first]
        self._data[: pcm.size - first] = pcm[first:]
        self._end = (self._end + pcm.size) % cap
        self.size = min(cap, self.size + pcm.size)

    def last(self, n: int) -> npt.NDArray[np.int16]:
        """A copy of the last `n` samples (fewer if the ring holds fewer)."""
        n = max(0, min(n, self.size))
        start = (self._end - n) % self._data.size
        if start + n <= self._data.size:
            return self._data[start : start + n].copy()
        return np.concatenate([self._data[start:], self._data[: self._end]])


@dataclass
class _Recording:
    event_id: str
    start_time: float
    """The audio's first sample, caller's clock."""
    event_offset: int
    """Samples from the clip's start to the event's start."""
    chunks: list[npt.NDArray[np.int16]] = field(default_factory=list)
    samples: int = 0
    target: int | None = None
    """Total samples once the event ended (post-roll included)."""
    event_samples: int | None = None
    """Event length in samples, once ended."""
    region: MarkedRegion | None = None
    truncated: bool = False

    def append(self, pcm: npt.NDArray[np.int16], limit: int) -> None:
        room = limit - self.samples
        if room <= 0:
            self.truncated = True
            return
        part = pcm[:room]
        self.chunks.append(part)
        self.samples += part.size
        if part.size < pcm.size:
            self.truncated = True


@dataclass
class _Track:
    ring: _Ring
    latest_time: float | None = None
    recording: _Recording | None = None


@dataclass(frozen=True)
class _ClipJob:
    event_id: str
    pcm: npt.NDArray[np.int16]
    audio_path: Path
    png_path: Path
    marks: Marks


def _soundfile_flac() -> bool:
    """soundfile is importable and its libsndfile writes FLAC."""
    try:
        import soundfile
    except (ImportError, OSError):  # OSError: the wheel's or the system's libsndfile is missing
        return False
    return "FLAC" in soundfile.available_formats()


def _write_wav(path: Path, pcm: npt.NDArray[np.int16], sample_rate: int) -> None:
    # The standard library's wave module: files.write_wav would import scipy into the daemon.
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.astype("<i2").tobytes())


def _write_flac(path: Path, pcm: npt.NDArray[np.int16], sample_rate: int) -> None:
    import soundfile

    soundfile.write(str(path), pcm, sample_rate, format="FLAC", subtype="PCM_16")


class ClipRecorder:
    """Pre-roll rings, event clips and their background writer, for every machine."""

    def __init__(
        self,
        dir: str | os.PathLike[str] | None,  # the config key is `clips.dir`
        pre_seconds: float,
        post_seconds: float,
        max_total_mb: float,
        max_age_days: float,
        sample_rate: int,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_clip_seconds: float = DEFAULT_MAX_CLIP_SECONDS,
        audio_format: str | None = None,
    ) -> None:
        """`audio_format` "flac" or "wav" forces one; by default FLAC when soundfile can.

        `dir` None keeps the pre-roll and each event's audio for `event_audio` (explanations)
        but writes nothing: no writer thread, no files, `event_ended` returns None."""
        if pre_seconds < 0 or post_seconds < 0:
            raise ValueError("clips: pre_seconds and post_seconds must be >= 0")
        if max_total_mb <= 0 or max_age_days <= 0:
            raise ValueError("clips: max_total_mb and max_age_days must be > 0")
        if sample_rate <= 0 or queue_size < 1 or max_clip_seconds <= 0:
            raise ValueError("clips: sample_rate, queue_size and max_clip_seconds must be > 0")
        if audio_format not in (None, *AUDIO_EXTENSIONS):
            raise ValueError(f"clips: audio_format must be one of {AUDIO_EXTENSIONS}")
        self.dir = None if dir is None else Path(dir)
        self._root = self.dir if self.dir is not None else Path()
        """The directory, for the writer (which only runs when there is one)."""
        self.pre_seconds = float(pre_seconds)
        self.post_seconds = float(post_seconds)
        self.max_total_bytes = int(max_total_mb * _BYTES_PER_MB)
        self.max_age_seconds = float(max_age_days) * _SECONDS_PER_DAY
        self.sample_rate = int(sample_rate)
        self.extension = audio_format or ("flac" if _soundfile_flac() else "wav")
        self._ring_samples = round((self.pre_seconds + LOOKBACK_SECONDS) * self.sample_rate)
        self._max_clip_samples = round(max_clip_seconds * self.sample_rate)
        self._tracks: dict[str, _Track] = {}
        self._lock = threading.Lock()
        """Guards tracks and counters: the inference thread records, others read stats."""
        self._queue: queue.Queue[_ClipJob] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._written = 0
        self._dropped = 0
        self._failures = 0
        self._deleted = 0
        self._failing = False
        """The last write failed: the next failure is not logged again."""
        self._thread: threading.Thread | None = None
        if self.dir is not None:
            self._thread = threading.Thread(
                target=self._writer_loop, name="clip-writer", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ inference thread

    def _track(self, machine: str) -> _Track:
        track = self._tracks.get(machine)
        if track is None:
            track = self._tracks[machine] = _Track(_Ring(self._ring_samples))
        return track

    def push(self, machine: str, samples: npt.ArrayLike, end_time: float) -> None:
        """The machine's next mono block (float, [-1, 1]); `end_time` is its last sample's time."""
        pcm = _to_pcm16(samples)
        with self._lock:
            track = self._track(machine)
            track.ring.write(pcm)
            track.latest_time = float(end_time)
            rec = track.recording
            if rec is None:
                return
            rec.append(pcm, self._max_clip_samples)
            if rec.target is not None and rec.samples >= rec.target:
                self._finish(machine, track)

    def event_started(self, machine: str, event_id: str, start_time: float) -> None:
        """Begin a clip at `start_time - pre_seconds` (as far back as the ring reaches)."""
        with self._lock:
            track = self._track(machine)
            if track.recording is not None:
                # A new event during the last one's post-roll: that clip ends here.
                self._finish(machine, track)
            if track.latest_time is None:
                track.recording = _Recording(event_id, float(start_time), 0)
                return
            back = round((track.latest_time - (start_time - self.pre_seconds)) * self.sample_rate)
            pre = track.ring.last(back)
            clip_start = track.latest_time - pre.size / self.sample_rate
            offset = round((start_time - clip_start) * self.sample_rate)
            rec = _Recording(event_id, clip_start, int(np.clip(offset, 0, pre.size)))
            rec.append(pre, self._max_clip_samples)
            track.recording = rec

    def event_audio(
        self, machine: str, *, max_event_seconds: float | None = None, with_pre: bool = True
    ) -> EventAudio | None:
        """The open (or post-rolling) event's audio so far, for `explain`; None without one.

        `max_event_seconds` keeps only the event's head, and `with_pre` False leaves `pre`
        empty (a bundle with a band profile needs no pre-roll): only what is returned is
        copied, straight from the recorded blocks into float, so a long event's clip is never
        copied whole (the daemon's peak memory)."""
        with self._lock:
            track = self._tracks.get(machine)
            rec = None if track is None else track.recording
            if rec is None:
                return None
            offset = min(rec.event_offset, rec.samples)
            end = rec.samples if rec.event_samples is None else offset + rec.event_samples
            if max_event_seconds is not None:
                end = min(end, offset + max(0, round(max_event_seconds * self.sample_rate)))
            end = min(end, rec.samples)
            pre = _float_span(rec.chunks, 0, offset if with_pre else 0)
            event = _float_span(rec.chunks, offset, end)
        return EventAudio(pre=pre, event=event)

    def event_ended(
        self,
        machine: str,
        event_id: str,
        end_time: float,
        explanation_region: MarkedRegion | None = None,
    ) -> Path | None:
        """Finish the clip `post_seconds` after `end_time`; returns where it will be written.

        None when no clip of that event is being recorded, or while the clip directory is
        failing (a payload should not point at a file that will not exist)."""
        with self._lock:
            track = self._tracks.get(machine)
            rec = None if track is None else track.recording
            if track is None or rec is None or rec.event_id != event_id:
                return None
            rec.target = max(
                0, round((end_time + self.post_seconds - rec.start_time) * self.sample_rate)
            )
            event_end = round((end_time - rec.start_time) * self.sample_rate)
            rec.event_samples = max(0, event_end - rec.event_offset)
            rec.region = explanation_region
            failing = self._failing
            if rec.samples >= rec.target:
                self._finish(machine, track)
        return None if failing or self.dir is None else self.audio_path(event_id)

    def audio_path(self, event_id: str) -> Path:
        return self._root / f"{event_id}.{self.extension}"

    def png_path(self, event_id: str) -> Path:
        return self._root / f"{event_id}.png"

    def _finish(self, machine: str, track: _Track) -> None:
        """Hand the track's clip to the writer (lock held); never waits."""
        rec = track.recording
        track.recording = None
        if rec is None or not rec.chunks or self.dir is None:
            return
        pcm = np.concatenate(rec.chunks)
        if rec.target is not None:
            pcm = pcm[: rec.target]
        if rec.truncated:
            _LOGGER.warning(
                "%s: clip of event %s cut at %.0f s",
                machine,
                rec.event_id[:8],
                pcm.size / self.sample_rate,
            )
        job = _ClipJob(
            event_id=rec.event_id,
            pcm=pcm,
            audio_path=self.audio_path(rec.event_id),
            png_path=self.png_path(rec.event_id),
            marks=self._marks(rec),
        )
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._dropped += 1
            _LOGGER.warning(
                "%s: clip of event %s dropped: the clip writer is behind (%d dropped so far)",
                machine,
                rec.event_id[:8],
                self._dropped,
            )

    def _marks(self, rec: _Recording) -> Marks:
        rate = self.sample_rate
        start = rec.event_offset / rate
        event = None
        if rec.event_samples is not None:
            event = (start, start + rec.event_samples / rate)
        region = None
        if rec.region is not None:
            low, high = rec.region.band_hz
            region = (start + rec.region.start_s, start + rec.region.end_s, low, high)
        return Marks(region=region, event=event)

    # ------------------------------------------------------------------ any thread

    def stats(self) -> ClipStats:
        with self._lock:
            return ClipStats(
                written=self._written,
                dropped=self._dropped,
                failures=self._failures,
                deleted=self._deleted,
                pending=self._queue.qsize(),
            )

    def close(self, timeout: float = 5.0) -> None:
        """Hand over clips still collecting (with the post-roll they have), let the writer
        finish what it can within `timeout`, and stop it."""
        with self._lock:
            for machine, track in self._tracks.items():
                if track.recording is not None:
                    self._finish(machine, track)
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            _LOGGER.warning("clip writer still busy after %.1f s; leaving it", timeout)

    # ------------------------------------------------------------------ writer thread

    def _writer_loop(self) -> None:
        self._guarded(self._prepare, proves_writable=False)
        while True:
            try:
                job = self._queue.get(timeout=WRITER_POLL_SECONDS)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if self._guarded(functools.partial(self._write_clip, job)):
                with self._lock:
                    self._written += 1
            self._guarded(self._enforce_retention, proves_writable=False)

    def _guarded(self, action: Callable[[], None], *, proves_writable: bool = True) -> bool:
        """Run a write; a failure is counted and logged once per streak, never raised. Only a
        clip written (`proves_writable`) ends a streak: retention in a missing directory
        succeeds without proving anything."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - any failure here must not stop the writer
            with self._lock:
                self._failures += 1
                first = not self._failing
                self._failing = True
            if first:
                _LOGGER.error(
                    "clips: cannot write in %s (%s); detection goes on, clips are skipped until "
                    "the directory works again",
                    self._root,
                    exc,
                )
            return False
        if not proves_writable:
            return True
        with self._lock:
            recovered = self._failing
            self._failing = False
        if recovered:
            _LOGGER.info("clips: %s is writable again", self._root)
        return True

    def _prepare(self) -> None:
        """Create the directory and apply retention once at start-up (off the caller's thread:
        a slow or hung mount must not delay the daemon's start)."""
        self._root.mkdir(parents=True, exist_ok=True)
        self._enforce_retention()

    def _write_clip(self, job: _ClipJob) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        # Write under a hidden temporary name and rename: a reader (the HTTP endpoint, a
        # person copying files) never sees half a clip, and retention never matches it.
        tmp = job.audio_path.with_name(f".{job.audio_path.name}.tmp")
        try:
            if job.audio_path.suffix == ".flac":
                _write_flac(tmp, job.pcm, self.sample_rate)
            else:
                _write_wav(tmp, job.pcm, self.sample_rate)
            os.replace(tmp, job.audio_path)
            png_tmp = job.png_path.with_name(f".{job.png_path.name}.tmp")
            # Scaled in place: a 90 s clip is 5.8 MB of float32, one copy is enough.
            samples = job.pcm.astype(np.float32)
            samples /= np.float32(PCM16_SCALE)
            write_spectrogram_png(png_tmp, samples, sample_rate=self.sample_rate, marks=job.marks)
            os.replace(png_tmp, job.png_path)
        finally:
            for leftover in (tmp, job.png_path.with_name(f".{job.png_path.name}.tmp")):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
        _LOGGER.info("clip %s written (%.1f s)", job.audio_path, job.pcm.size / self.sample_rate)

    def _enforce_retention(self) -> None:
        """Delete clips older than max_age_days, then the oldest until under max_total_mb.

        A clip's audio and picture go together (grouped by event id)."""
        if not self._root.is_dir():
            return
        groups: dict[str, list[tuple[Path, float, int]]] = {}
        with os.scandir(self._root) as entries:
            for entry in entries:
                match = CLIP_NAME.match(entry.name)
                if match is None or not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
                groups.setdefault(match["id"], []).append(
                    (Path(entry.path), stat.st_mtime, stat.st_size)
                )
        now = time.time()
        # Oldest first, by the group's newest file (a clip's picture follows its audio).
        ordered = sorted(groups.values(), key=lambda files: max(f[1] for f in files))
        total = sum(f[2] for files in ordered for f in files)
        deleted = 0
        for files in ordered:
            too_old = now - max(f[1] for f in files) > self.max_age_seconds
            if not too_old and total <= self.max_total_bytes:
                break
            for path, _mtime, size in files:
                path.unlink(missing_ok=True)
                total -= size
                deleted += 1
        if deleted:
            with self._lock:
                self._deleted += deleted
            _LOGGER.info("clips: retention deleted %d file(s) in %s", deleted, self._root)
