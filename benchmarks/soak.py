"""Soak test of `edge-asd run`: leaks, lost events and broker outages over a long run.

Starts the daemon (`python -m edge_asd run --config ...`) as a subprocess on a `wav:` source
(synthetic machine sound from `edge_asd_dev.synth` with a fault every minute, so events
happen), with a local Mosquitto on a free loopback port that is restarted every few minutes,
and a paho subscriber with a persistent session. Every few seconds it samples the daemon's RSS
(/proc/PID/status VmRSS), open file descriptors (/proc/PID/fd), threads (Threads:) and the
outbox depth (the SQLite file, opened read-only). At the end it compares the events the
daemon logged with those the subscriber received (by event id, type and seq) and checks the
received seq numbers for gaps, and fits a line to RSS after the warm-up to extrapolate the
drift to 24 h.

The `wav:` device replays in real time (`open_source` builds `WavSource(realtime=True)`; it has
no speed factor), so the run takes `--duration` seconds of wall time: the default is one hour.
The WAV file itself (`--audio-seconds`, default 2 min) loops; `WavSource` decodes a single
looped file once (before it did so on every pass, which stepped the daemon's RSS by tens of MB
at each pass and drowned any leak). The daemon's inference-latency history (the last 1000
windows, for the stats percentiles) fills up in its first 500 s, a few pages: the default
warm-up of 10 min covers it. One 4 KB page every 70 s is already 5 MB/24 h, so the fit needs
tens of minutes after the warm-up to resolve the target: a short run validates the harness
and shows gross leaks, not the last MB.

By default the daemon runs under the systemd unit's syscall filter (`@system-service`,
EPERM), installed with libseccomp by tests/seccomp_filter.py, where that is possible.

Usage: python benchmarks/soak.py [--duration 3600] [--broker-restart-every 170] [--markdown]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.daemon import calibrate_synthetic_machine  # noqa: E402
from edge_asd.audio.files import write_wav  # noqa: E402
from edge_asd.constants import SAMPLE_RATE_HZ  # noqa: E402
from edge_asd_dev.synth import apply_fault, machine_sound  # noqa: E402
from tests import seccomp_filter  # noqa: E402
from tests.mqtt_fixture import MosquittoBroker, Subscriber  # noqa: E402

NODE: Final = "soak"
MACHINE_NAME: Final = "press"
SEGMENT_SECONDS: Final = 60.0
"""The WAV is made of segments this long, each with one fault in it: one event a minute."""
FAULT_AT_SECONDS: Final = 30.0
FAULT_SECONDS: Final = 6.0
STARTUP_TIMEOUT_SECONDS: Final = 120.0
DRAIN_TIMEOUT_SECONDS: Final = 90.0
STOP_TIMEOUT_SECONDS: Final = 30.0
SECONDS_PER_DAY: Final = 86_400.0
RSS_DRIFT_TARGET_MB_PER_DAY: Final = 5.0
STATS_INTERVAL_SECONDS: Final = 10
EVENT_LOG_RE: Final = re.compile(
    rf"{MACHINE_NAME}: event (?P<id>[0-9a-f]{{8}}) (?P<kind>start|update|end) score"
)
"""The line `Daemon._publish_transition` logs for every event message it hands over."""


@dataclass(frozen=True)
class Sample:
    t: float
    """Seconds since the daemon reported state normal."""
    rss_mb: float
    fds: int
    threads: int
    outbox_depth: int | None
    received_events: int
    broker_up: bool


def _status_fields(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _outbox_depth(path: Path) -> int | None:
    """Rows in the outbox, read through a read-only connection (never blocks the daemon)."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _sample(pid: int, t: float, outbox: Path, received: int, broker_up: bool) -> Sample:
    status = _status_fields(pid)
    return Sample(
        t=t,
        rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
        outbox_depth=_outbox_depth(outbox),
        received_events=received,
        broker_up=broker_up,
    )


def _make_audio(path: Path, seconds: float, seed: int) -> int:
    """Machine sound with one fault per segment; returns the number of faults."""
    rng = np.random.default_rng(seed)
    segments = max(1, round(seconds / SEGMENT_SECONDS))
    parts = []
    for _ in range(segments):
        normal = machine_sound(SEGMENT_SECONDS, rng=rng)
        a = int(FAULT_AT_SECONDS * SAMPLE_RATE_HZ)
        b = int((FAULT_AT_SECONDS + FAULT_SECONDS) * SAMPLE_RATE_HZ)
        faulty = apply_fault(normal[a:b].copy(), "bearing_impacts", rng=rng, level_db=6.0)
        faulty = apply_fault(faulty, "whine", rng=rng, level_db=0.0)
        segment = normal.copy()
        segment[a:b] = faulty
        parts.append(segment)
    write_wav(path, np.concatenate(parts), SAMPLE_RATE_HZ)
    return segments


def _drift_per_day(samples: list[Sample], warmup: float, attr: str) -> float | None:
    """Slope of a least-squares line through `attr` after the warm-up, per 24 h."""
    points = [(s.t, float(getattr(s, attr))) for s in samples if s.t >= warmup]
    if len(points) < 3:
        return None
    t, y = np.array(points).T
    slope = float(np.polyfit(t, y, 1)[0])
    return slope * SECONDS_PER_DAY


def _logged_events(log_text: str) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        (m.group("id"), m.group("kind")) for m in EVENT_LOG_RE.finditer(log_text)
    )


def _received_events(sub: Subscriber) -> list[dict[str, Any]]:
    """Event payloads, duplicates (at-least-once redeliveries) removed by (id, type, seq)."""
    unique: dict[tuple[str, str, int], dict[str, Any]] = {}
    for message in sub.messages(f"edge-asd/{NODE}/{MACHINE_NAME}/event"):
        event = json.loads(message.payload)
        unique.setdefault((event["event_id"], event["type"], int(event["seq"])), event)
    return list(unique.values())


STATS_COUNTERS: Final = (
    "outbox",
    "outbox_write_errors",
    "outbox_recovered_corrupt",
    "outbox_quarantined",
    "messages_quarantined",
    "outbox_clock_jumps",
    "events_not_stored",
    "events_lost",
)
"""The daemon's own outbox figures, from its last stats message (edge_asd/mqtt/messages.py)."""


def _last_stats(sub: Subscriber) -> dict[str, Any]:
    """The outbox counters of the daemon's last stats message ({} before the first)."""
    messages = sub.messages(f"edge-asd/{NODE}/stats")
    if not messages:
        return {}
    stats = json.loads(messages[-1].payload)
    return {key: stats.get(key) for key in STATS_COUNTERS}


def _compare(
    logged: collections.Counter[tuple[str, str]], received: list[dict[str, Any]]
) -> dict[str, int]:
    got = collections.Counter((e["event_id"][:8], e["type"]) for e in received)
    seqs = sorted(int(e["seq"]) for e in received)
    gaps = (seqs[-1] - seqs[0] + 1 - len(set(seqs))) if seqs else 0
    return {
        "logged": sum(logged.values()),
        "received_unique": len(received),
        "lost": sum((logged - got).values()),
        "unexpected": sum((got - logged).values()),
        "seq_gaps": gaps,
        "seq_repeats": len(seqs) - len(set(seqs)),
        "events_started": sum(n for (_, kind), n in logged.items() if kind == "start"),
    }


def _daemon_command(config: Path, use_filter: bool) -> list[str]:
    command = [sys.executable, "-m", "edge_asd", "run", "--config", str(config)]
    if not use_filter:
        return command
    wrapper = REPO / "tests" / "seccomp_filter.py"
    # exec() keeps the PID: the sampled process is the daemon itself.
    return [sys.executable, str(wrapper), seccomp_filter.DEFAULT_GROUP, "--", *command]


def run(args: argparse.Namespace) -> dict[str, Any]:
    use_filter = args.syscall_filter and seccomp_filter.available() is None
    with tempfile.TemporaryDirectory(prefix="edge-asd-soak-") as tmp:
        work = Path(tmp)
        bundle = calibrate_synthetic_machine(work, args.model)
        wav = work / "machine.wav"
        faults_in_file = _make_audio(wav, args.audio_seconds, seed=5)
        outbox = work / "outbox.sqlite"
        broker = MosquittoBroker(work / "broker", persistence=True)
        broker.start()
        config = work / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "node_id": NODE,
                    "log_level": "INFO",
                    **({"model": args.model} if args.model else {}),
                    "stats_interval_seconds": STATS_INTERVAL_SECONDS,
                    "machines": [
                        {
                            "name": MACHINE_NAME,
                            "device": f"wav:{wav}",
                            "bundle": str(bundle),
                            "trigger_windows": 2,
                            "release_windows": 2,
                        }
                    ],
                    "mqtt": {"host": broker.host, "port": broker.port},
                    "outbox": {"path": str(outbox)},
                }
            )
        )
        # Persistent session: what the daemon publishes while this client is reconnecting
        # after a broker restart is queued for it, so a miss is the daemon's, not ours.
        sub = Subscriber(
            broker.host,
            broker.port,
            [f"edge-asd/{NODE}/+/event", f"edge-asd/{NODE}/+/state", f"edge-asd/{NODE}/stats"],
            client_id="soak-subscriber",
            clean_session=False,
        ).start()
        log_path = work / "daemon.log"
        log = log_path.open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        daemon = subprocess.Popen(
            _daemon_command(config, use_filter),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
        samples: list[Sample] = []
        restarts = 0
        died: int | None = None
        try:
            state_topic = f"edge-asd/{NODE}/{MACHINE_NAME}/state"
            if not sub.wait_for_payload(state_topic, "normal", STARTUP_TIMEOUT_SECONDS):
                log.flush()
                tail = log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"daemon did not reach state normal; its log ends:\n{tail}")
            t0 = time.monotonic()
            next_sample = 0.0
            next_restart = args.broker_restart_every
            broker_up = True
            up_again_at = 0.0
            while (now := time.monotonic() - t0) < args.duration:
                if daemon.poll() is not None:
                    died = daemon.returncode
                    break
                if broker_up and now >= next_restart:
                    broker.stop()  # SIGTERM: the broker saves its store, sessions survive
                    broker_up = False
                    up_again_at = now + args.broker_down_seconds
                    next_restart += args.broker_restart_every
                elif not broker_up and now >= up_again_at:
                    broker.start()
                    broker_up = True
                    restarts += 1
                if now >= next_sample:  # sampled during outages too: the outbox fills then
                    samples.append(
                        _sample(daemon.pid, now, outbox, len(_received_events(sub)), broker_up)
                    )
                    next_sample += args.sample_every
                time.sleep(0.2)
            if not broker_up:
                broker.start()
                restarts += 1
            # Drain: the broker stays up until every logged event arrived (bounded).
            log.flush()

            def drained(_msgs: object) -> bool:
                logged = _logged_events(log_path.read_text(errors="replace"))
                return _compare(logged, _received_events(sub))["lost"] == 0

            drain_start = time.monotonic()
            sub.wait_for(drained, DRAIN_TIMEOUT_SECONDS)
            drain_seconds = time.monotonic() - drain_start
            # The events have arrived; the state, score and stats rows queued in the outage
            # are still being sent and acknowledged (a 2026-12-03 run read 6 rows 1.1 s after
            # the last event, 0 at the next sample). The end depth is read once that settles.
            final_depth = _outbox_depth(outbox)
            while final_depth and time.monotonic() - drain_start < DRAIN_TIMEOUT_SECONDS:
                time.sleep(0.5)
                final_depth = _outbox_depth(outbox)
            # One stats interval more, so the last snapshot is taken after the drain.
            time.sleep(STATS_INTERVAL_SECONDS + 1.0)
            final_stats = _last_stats(sub)
            logged = _logged_events(log_path.read_text(errors="replace"))
            comparison = _compare(logged, _received_events(sub))
            if died is None and daemon.poll() is None:
                samples.append(
                    _sample(
                        daemon.pid,
                        time.monotonic() - t0,
                        outbox,
                        comparison["received_unique"],
                        True,
                    )
                )
        finally:
            if daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(STOP_TIMEOUT_SECONDS)
            log.close()
            sub.close()
            broker.stop()
        log_text = log_path.read_text(errors="replace")
        # paho logs every failed reconnect attempt at ERROR through our logger; counted apart
        # from the daemon's own errors so that an outage's retries do not hide a real one.
        error_lines = [line for line in log_text.splitlines() if " ERROR " in line]
        paho_errors = sum(".paho:" in line for line in error_lines)
        own_errors = len(error_lines) - paho_errors + log_text.count("Traceback")
    warm = [s for s in samples if s.t >= args.warmup]
    result: dict[str, Any] = {
        "duration_s": samples[-1].t if samples else 0.0,
        "model": args.model or "default",
        "syscall_filter": "@system-service (EPERM)" if use_filter else "none",
        "broker_restarts": restarts,
        "daemon_died": died,
        "daemon_exit_code": daemon.returncode,
        "faults_per_file_pass": faults_in_file,
        "drain_seconds": round(drain_seconds, 1),
        "final_outbox_depth": final_depth,
        **comparison,
        "rss_mb_first_after_warmup": warm[0].rss_mb if warm else None,
        "rss_mb_last": samples[-1].rss_mb if samples else None,
        "rss_mb_max": max(s.rss_mb for s in samples) if samples else None,
        "rss_drift_mb_per_24h": _drift_per_day(samples, args.warmup, "rss_mb"),
        "fds_min_max": [min(s.fds for s in warm), max(s.fds for s in warm)] if warm else None,
        "threads_min_max": (
            [min(s.threads for s in warm), max(s.threads for s in warm)] if warm else None
        ),
        "outbox_depth_max": max((s.outbox_depth or 0) for s in samples) if samples else None,
        "daemon_stats": final_stats,
        "daemon_log_errors": own_errors,
        "paho_log_errors": paho_errors,
        "samples": [asdict(s) for s in samples],
    }
    if args.keep_log:
        Path(args.keep_log).write_text(log_text)
    return result


def _verdicts(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    drift = result["rss_drift_mb_per_24h"]
    stats = result["daemon_stats"]
    return [
        ("run (s, after start-up)", f"{result['duration_s']:.0f}", "as asked"),
        ("broker restarts", str(result["broker_restarts"]), ">= 1"),
        ("daemon alive throughout", "yes" if result["daemon_died"] is None else "NO", "yes"),
        (
            "event messages logged / received (unique)",
            f"{result['logged']} / {result['received_unique']}",
            "equal",
        ),
        ("events started", str(result["events_started"]), "> 0"),
        ("lost event messages", str(result["lost"]), "0"),
        ("seq gaps / repeats", f"{result['seq_gaps']} / {result['seq_repeats']}", "0 / 0"),
        (
            "outbox depth max / at the end",
            f"{result['outbox_depth_max']} / {result['final_outbox_depth']}",
            "bounded / 0",
        ),
        (
            "RSS after warm-up first / last / max (MB)",
            f"{result['rss_mb_first_after_warmup']:.1f} / {result['rss_mb_last']:.1f} / "
            f"{result['rss_mb_max']:.1f}",
            "<= 384 (MemoryMax)",
        ),
        (
            "RSS drift, linear fit, extrapolated (MB/24 h)",
            f"{drift:+.1f}" if drift is not None else "n/a",
            f"< {RSS_DRIFT_TARGET_MB_PER_DAY:.0f}",
        ),
        (
            "daemon stats: outbox mode, write errors, corrupt recovered, quarantined",
            "{} / {} / {} / {}".format(
                stats.get("outbox"),
                stats.get("outbox_write_errors"),
                stats.get("outbox_recovered_corrupt"),
                stats.get("outbox_quarantined"),
            ),
            "durable / 0 / 0 / 0",
        ),
        (
            "daemon stats: events not stored / lost, clock jumps",
            "{} / {}, {}".format(
                stats.get("events_not_stored"),
                stats.get("events_lost"),
                stats.get("outbox_clock_jumps"),
            ),
            "0 / 0, 0",
        ),
        ("open fds min / max", "{} / {}".format(*result["fds_min_max"]), "flat"),
        ("threads min / max", "{} / {}".format(*result["threads_min_max"]), "flat, <= 64"),
        (
            "ERROR lines in the log: edge_asd's / paho's reconnect attempts",
            f"{result['daemon_log_errors']} / {result['paho_log_errors']}",
            "0 / -",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=3600.0, help="seconds of real time (default 1 h)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=600.0,
        help="seconds excluded from the fit; must cover the daemon's latency history filling "
        "up (see docstring)",
    )
    # 170 s is not a multiple of the 60 s fault cycle: successive outages fall on different
    # phases of it, so some catch events starting, updating or ending while the broker is away.
    parser.add_argument("--broker-restart-every", type=float, default=170.0)
    parser.add_argument("--broker-down-seconds", type=float, default=20.0)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument(
        "--audio-seconds", type=float, default=120.0, help="length of the looped WAV"
    )
    parser.add_argument("--model", default=None, help="bundled model name (default: default)")
    parser.add_argument(
        "--no-syscall-filter",
        dest="syscall_filter",
        action="store_false",
        help="do not run the daemon under the unit's @system-service filter",
    )
    parser.add_argument("--json", dest="json_path", help="write every figure and sample here")
    parser.add_argument("--keep-log", help="copy the daemon's log here")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    # SIGTERM (and SIGINT, even where a background job inherited it ignored) unwinds through
    # `run`'s finally: the daemon and the broker are stopped, not orphaned.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    result = run(args)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=1))
    rows = _verdicts(result)
    if args.markdown:
        print("| measure | value | target |\n|---|---|---|")
        for name, value, goal in rows:
            print(f"| {name} | {value} | {goal} |")
    else:
        for name, value, goal in rows:
            print(f"{name:46s} {value:>24s}   target {goal}")
    ok = (
        result["daemon_died"] is None
        and result["lost"] == 0
        and result["seq_gaps"] == 0
        and result["seq_repeats"] == 0
        and result["daemon_stats"].get("outbox") == "durable"
        and result["daemon_stats"].get("events_lost") == 0
    )
    drift = result["rss_drift_mb_per_24h"]
    ok = ok and drift is not None and drift < RSS_DRIFT_TARGET_MB_PER_DAY
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
