#!/usr/bin/env bash
# edge-asd quick start on a fresh Debian machine, as root:
#   1. installs the system packages and edge-asd (runtime only: no torch),
#   2. starts a local Mosquitto broker if none is listening on 127.0.0.1:1883,
#   3. runs `edge-asd demo` (calibrate + score on bundled audio),
#   4. calibrates from the bundled normal recording and starts the daemon on the bundled faulty
#      recording, replayed in real time as if it were a microphone (device "wav:..."),
#   5. follows the alarms for a while with `edge-asd tail`, sums them up, and leaves the daemon
#      running.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${EDGE_ASD_QUICKSTART_DIR:-/var/lib/edge-asd-quickstart}
watch_seconds=${EDGE_ASD_WATCH_SECONDS:-45}
node=quickstart
export PIP_BREAK_SYSTEM_PACKAGES=1 DEBIAN_FRONTEND=noninteractive

echo "== installing system packages (mosquitto, mosquitto-clients, libportaudio2, libsndfile1)"
apt-get update -qq
apt-get install -y -qq mosquitto mosquitto-clients libportaudio2 libsndfile1 >/dev/null

echo "== installing edge-asd from $repo"
python3 -m pip install -q "$repo"

echo "== local MQTT broker"
if mosquitto_sub -h 127.0.0.1 -p 1883 -t '$SYS/broker/version' -C 1 -W 3 >/dev/null 2>&1; then
  echo "a broker is already listening on 127.0.0.1:1883"
else
  mosquitto -d
  sleep 1
  echo "started mosquitto on 127.0.0.1:1883"
fi

echo "== edge-asd demo"
edge-asd demo

echo "== calibrating on the bundled normal recording"
assets=$(python3 -c 'from importlib import resources; print(resources.files("edge_asd") / "assets")')
mkdir -p "$state/normal" "$state/bundles"
cp "$assets/demo_normal.wav" "$state/normal/"
cat >"$state/config.yaml" <<YAML
node_id: $node
log_level: INFO
stats_interval_seconds: 10
machines:
  - name: demo-machine
    device: "wav:$assets/demo_test.wav"   # the bundled recording, replayed as a microphone
    channel: 0
    bundle: $state/bundles/demo-machine
mqtt:
  host: 127.0.0.1
  port: 1883
outbox:
  path: $state/outbox.sqlite
YAML
edge-asd calibrate --config "$state/config.yaml" --from-dir "$state/normal" \
  --out "$state/bundles/demo-machine"
edge-asd check-config --config "$state/config.yaml"

echo "== starting the daemon (log: $state/daemon.log)"
if [ -f "$state/daemon.pid" ] && kill -0 "$(cat "$state/daemon.pid")" 2>/dev/null; then
  kill "$(cat "$state/daemon.pid")" && sleep 2
fi
nohup edge-asd run --config "$state/config.yaml" >"$state/daemon.log" 2>&1 &
echo $! >"$state/daemon.pid"

echo "== alarms for ${watch_seconds} s (the recording turns faulty 8 s in, every 20 s)"
# `edge-asd tail` prints one readable line per state change and alarm; SIGTERM from timeout
# ends it cleanly. The summary below is made from its lines.
timeout "$watch_seconds" edge-asd tail --config "$state/config.yaml" | tee "$state/watch.log" || true
python3 - "$state/watch.log" "$watch_seconds" <<'PY'
import re
import sys
from datetime import datetime, timedelta

log, seconds = sys.argv[1], sys.argv[2]
end = re.compile(
    r"^(\S+) ALARM (\d\d:\d\d:\d\d) peak (\S+)(?: \((.*)\))?, ended after ([\d.]+) s"
)
start = re.compile(r"^(\S+) ALARM (\d\d:\d\d:\d\d) score (\S+)")
alarms: dict[tuple[str, str], str] = {}
with open(log, encoding="utf-8", errors="replace") as lines:
    for line in lines:
        if m := end.match(line):
            machine, at, peak, why, duration = m.groups()
            until = datetime.strptime(at, "%H:%M:%S") + timedelta(seconds=float(duration))
            alarm = f"{machine} ALARM {at}-{until:%H:%M:%S} peak {peak}"
            alarms[(machine, at)] = alarm + (f" ({why})" if why else "")
        elif m := start.match(line):
            machine, at, score = m.groups()
            alarms.setdefault((machine, at), f"{machine} ALARM {at}- (still on) score {score}")
print()
if not alarms:
    print(f"no alarms in {seconds} s: is the daemon running? see its log")
else:
    print(f"{len(alarms)} alarm{'s' if len(alarms) != 1 else ''} in {seconds} s:")
    for alarm in alarms.values():
        print(f"  {alarm}")
PY
cat <<TXT

The daemon is still running (pid $(cat "$state/daemon.pid")). Watch everything it publishes with
  mosquitto_sub -h 127.0.0.1 -v -t 'edge-asd/#'
Its log: $state/daemon.log     Stop it: kill \$(cat $state/daemon.pid)
For a real microphone, edit device in $state/config.yaml (see deploy/config.example.yaml),
recalibrate with --record, and install the service with deploy/install.sh.
TXT
