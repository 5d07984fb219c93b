"""Resource and latency benchmark of `edge-asd run` with real parts.

Starts a Mosquitto broker on a free loopback port and a PulseAudio virtual microphone (the same
helpers the end-to-end test uses), calibrates on synthetic normal machine sound, runs the daemon
as a subprocess on the virtual microphone, and measures:

- steady-state CPU of the daemon process (utime + stime from /proc over a normal stretch), as a
  percentage of one core;
- peak RSS (VmHWM) of the daemon;
- whether torch was ever mapped into the process (/proc/PID/maps);
- event latency: from the moment the fault starts in the microphone signal to the arrival of the
  MQTT `start` message, over several faults.

Usage: python benchmarks/daemon.py [--steady-seconds 60] [--faults 5] [--model M] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_asd.audio.files import write_wav  # noqa: E402
from edge_asd.constants import SAMPLE_RATE_HZ  # noqa: E402
from edge_asd_dev.synth import machine_sound  # noqa: E402
from tests.mqtt_fixture import MosquittoBroker, Subscriber  # noqa: E402
from tests.pulse_fixture import VirtualMic  # noqa: E402
from tests.test_daemon_e2e import Machine  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NODE = "bench"
MACHINE_NAME = "press"
TRIGGER_WINDOWS = 2
HOP_SECONDS = 0.5
WINDOW_SECONDS = 1.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _torch_mapped(pid: int) -> bool:
    return "torch" in Path(f"/proc/{pid}/maps").read_text()


def calibrate_synthetic_machine(work: Path, model: str | None, seed: int = 11) -> Path:
    """`edge-asd calibrate` on 60 s of a synthetic machine (6 clips); returns the bundle. Also
    used by benchmarks/soak.py."""
    rng = np.random.default_rng(seed)
    normal = work / "normal"
    normal.mkdir()
    for index in range(6):
        write_wav(normal / f"n{index}.wav", machine_sound(10.0, rng=rng), SAMPLE_RATE_HZ)
    bundle = work / "bundle"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_asd",
            "calibrate",
            "--from-dir",
            str(normal),
            "--out",
            str(bundle),
            *(["--model", model] if model else []),
        ],
        check=True,
        capture_output=True,
    )
    return bundle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--faults", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument(
        "--model", default=None, help="bundled model name or ONNX (default: the default)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edge-asd-bench-") as tmp:
        work = Path(tmp)
        bundle = calibrate_synthetic_machine(work, args.model)
        broker = MosquittoBroker(work / "broker")
        broker.start()
        mic = VirtualMic()
        mic.start()
        machine = Machine(seed=5)
        mic.set_source(machine)
        config = work / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "node_id": NODE,
                    **({"model": args.model} if args.model else {}),
                    "stats_interval_seconds": 10,
                    "machines": [
                        {
                            "name": MACHINE_NAME,
                            "device": mic.device,
                            "bundle": str(bundle),
                            "trigger_windows": TRIGGER_WINDOWS,
                            "release_windows": 2,
                        }
                    ],
                    "mqtt": {"host": broker.host, "port": broker.port},
                    "outbox": {"path": str(work / "outbox.sqlite")},
                }
            )
        )
        sub = Subscriber(broker.host, broker.port, f"edge-asd/{NODE}/#").start()
        env = {**os.environ, **mic.env}
        log = (work / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "edge_asd", "run", "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            if not sub.wait_for_payload(f"edge-asd/{NODE}/{MACHINE_NAME}/state", "normal", 60):
                log.flush()
                tail = (work / "daemon.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"daemon did not reach state normal; its log ends:\n{tail}")
            time.sleep(5)  # past start-up work
            cpu0, t0 = _cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(args.steady_seconds)
            cpu1, t1 = _cpu_seconds(daemon.pid), time.monotonic()
            cpu_percent = 100.0 * (cpu1 - cpu0) / (t1 - t0)
            latencies = []
            missed: list[int] = []
            event_topic = f"edge-asd/{NODE}/{MACHINE_NAME}/event"
            # Events during the normal stretch are false alarms.
            false_starts = sum(
                json.loads(m.payload)["type"] == "start" for m in sub.messages(event_topic)
            )
            for _ in range(args.faults):
                before = len(sub.messages(event_topic))
                onset = machine.set_anomalous(True)

                def started(_msgs: object, before: int = before) -> bool:
                    new = sub.messages(event_topic)[before:]
                    return any(json.loads(m.payload)["type"] == "start" for m in new)

                if sub.wait_for(started, 20):
                    msg = next(
                        m
                        for m in sub.messages(event_topic)[before:]
                        if json.loads(m.payload)["type"] == "start"
                    )
                    latencies.append(msg.received_monotonic - onset)
                else:
                    missed.append(len(latencies) + len(missed) + 1)
                machine.set_anomalous(False)
                sub.wait_for(
                    lambda _m, b=before: any(
                        json.loads(m.payload)["type"] == "end"
                        for m in sub.messages(event_topic)[b:]
                    ),
                    20,
                )
                time.sleep(4)
            rss = _vm_hwm_mb(daemon.pid)
            torch = _torch_mapped(daemon.pid)
        finally:
            daemon.terminate()
            daemon.wait(15)
            sub.close()
            mic.stop()
            broker.stop()
    target = WINDOW_SECONDS + TRIGGER_WINDOWS * HOP_SECONDS + 0.3
    rows = [
        ("steady-state CPU (% of one core)", f"{cpu_percent:.2f}", "<= 2"),
        ("peak RSS (MB, VmHWM)", f"{rss:.1f}", "<= 100"),
        ("torch loaded", "yes" if torch else "no", "no"),
        (f"false alarms in {args.steady_seconds:.0f} s of normal running", str(false_starts), "0"),
        (
            "event latency p50 (s)",
            f"{np.median(latencies):.2f}" if latencies else "n/a",
            f"<= {target:.1f}",
        ),
        (
            "event latency max (s)",
            f"{max(latencies):.2f}" if latencies else "n/a",
            f"<= {target:.1f}",
        ),
        (
            "faults detected",
            f"{len(latencies)}/{args.faults}"
            + (f" (missed: fault {', '.join(map(str, missed))})" if missed else ""),
            "all",
        ),
    ]
    if args.markdown:
        print("| measure | value | target |\n|---|---|---|")
        for name, value, goal in rows:
            print(f"| {name} | {value} | {goal} |")
    else:
        for name, value, goal in rows:
            print(f"{name:36s} {value:>10s}   target {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
