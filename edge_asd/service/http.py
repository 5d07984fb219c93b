"""The optional local HTTP endpoint: status page, status JSON, Prometheus metrics, clips.

- ``/``: a small read-only status page (plain HTML and a little JS polling ``/api/status``):
  machines, state, score against threshold over the last minutes, recent events with their
  clips;
- ``/api/status``: `StatusBoard.snapshot()` as JSON;
- ``/metrics``: Prometheus text format (when a metrics source is given);
- ``/clips/<event_id>.<flac|wav|png>``: a clip or its spectrogram, only plain files directly
  inside the clips directory with clip-shaped names.

stdlib `ThreadingHTTPServer` in a daemon thread: no framework to install on a gateway, and a
slow client only ties up its own thread. It binds 127.0.0.1 by default; the page is read-only,
has no controls and serves nothing outside the clips directory, but exposing it further is a
deliberate choice (`http.bind`).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

from edge_asd.service.clips import CLIP_NAME
from edge_asd.service.status import CLIPS_URL_PREFIX, StatusBoard

_LOGGER = logging.getLogger(__name__)

DEFAULT_BIND: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
REQUEST_TIMEOUT_SECONDS: Final = 10.0
"""A client that stops sending mid-request frees its thread after this."""
CONTENT_TYPES: Final = {"flac": "audio/flac", "wav": "audio/wav", "png": "image/png"}
_COPY_CHUNK: Final = 64 * 1024


class MetricsSource(Protocol):
    """`metrics.Metrics`, without importing prometheus-client here."""

    def exposition(self) -> tuple[bytes, str]: ...


class StatusServer:
    """Serves the board, the metrics and the clips until `stop`."""

    def __init__(
        self,
        board: StatusBoard,
        *,
        bind: str = DEFAULT_BIND,
        port: int = DEFAULT_PORT,
        clips_dir: str | Path | None = None,
        metrics: MetricsSource | None = None,
    ) -> None:
        self.board = board
        self.bind = bind
        self.requested_port = int(port)
        self.clips_dir = None if clips_dir is None else Path(clips_dir)
        self.metrics = metrics
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.bind if ":" not in self.bind else f"[{self.bind}]"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in the background; OSError (port in use, bad address) is the
        caller's to report: the daemon logs it and runs on without the page."""
        if self._server is not None:
            return
        server = _Server((self.bind, self.requested_port), _Handler)
        server.app = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="http-status", kwargs={"poll_interval": 0.2}
        )
        self._thread.daemon = True
        self._thread.start()
        _LOGGER.info("status page on %s (metrics at /metrics)", self.url)

    def stop(self, timeout: float = 2.0) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None

    # ------------------------------------------------------------------ responses

    def status_json(self) -> dict[str, Any]:
        snapshot = self.board.snapshot()
        for event in snapshot["events"]:
            # Clips are written after their post-roll: say whether the link works yet.
            event["clip_ready"] = self._clip_file(event.get("clip")) is not None
        return snapshot

    def _clip_file(self, url: str | None) -> Path | None:
        if not url or not url.startswith(CLIPS_URL_PREFIX):
            return None
        return self.clip_file(url[len(CLIPS_URL_PREFIX) :])

    def clip_file(self, name: str) -> Path | None:
        """The clip file `name` if it is a clip-shaped name of a plain file directly inside
        the clips directory (symlinks leading elsewhere do not count); None otherwise."""
        if self.clips_dir is None or CLIP_NAME.match(name) is None:
            return None
        try:
            root = self.clips_dir.resolve(strict=True)
            path = (root / name).resolve(strict=True)
        except OSError:
            return None
        if path.parent != root or not path.is_file():
            return None
        return path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: StatusServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "edge-asd"
    timeout = REQUEST_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        _LOGGER.debug("%s - %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def do_GET(self) -> None:
        self._respond(head=False)

    def _respond(self, *, head: bool) -> None:
        app = self.server.app
        path = unquote(urlsplit(self.path).path)
        try:
            if path in ("/", "/index.html"):
                self._send(
                    HTTPStatus.OK, STATUS_PAGE.encode("utf-8"), "text/html; charset=utf-8", head
                )
            elif path == "/api/status":
                body = json.dumps(app.status_json(), allow_nan=False).encode("utf-8")
                self._send(HTTPStatus.OK, body, "application/json", head)
            elif path == "/metrics":
                if app.metrics is None:
                    self._error(HTTPStatus.NOT_FOUND, head)
                    return
                body, content_type = app.metrics.exposition()
                self._send(HTTPStatus.OK, body, content_type, head)
            elif path.startswith(CLIPS_URL_PREFIX):
                self._clip(path[len(CLIPS_URL_PREFIX) :], head)
            else:
                self._error(HTTPStatus.NOT_FOUND, head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left; nothing to tell it

    def _clip(self, name: str, head: bool) -> None:
        app = self.server.app
        match = CLIP_NAME.match(name)
        if match is None:
            # Traversal attempts and other odd names: refused before touching the disk.
            self._error(HTTPStatus.BAD_REQUEST, head)
            return
        path = app.clip_file(name)
        if path is None:
            self._error(HTTPStatus.NOT_FOUND, head)
            return
        try:
            handle = path.open("rb")
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, head)
            return
        with handle:
            size = path.stat().st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", CONTENT_TYPES[match["ext"]])
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "max-age=3600")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if not head:
                shutil.copyfileobj(handle, self.wfile, _COPY_CHUNK)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, head: bool) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self._send(status, body, "text/plain; charset=utf-8", head)


STATUS_PAGE: Final = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge-asd</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
 h1 { font-size: 1.3em; margin: 0 0 .2em; }
 #meta { color: #666; font-size: .9em; margin-bottom: 1em; }
 table { border-collapse: collapse; width: 100%; margin-bottom: 1.5em; background: #fff; }
 th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e4e4e4; }
 th { font-weight: 600; font-size: .85em; color: #555; }
 .state { padding: .1em .5em; border-radius: .8em; font-size: .85em; color: #fff; }
 .normal { background: #2e7d32; } .anomalous { background: #c62828; }
 .idle { background: #757575; } .no_audio { background: #ef6c00; }
 .calibrating { background: #1565c0; } .unknown { background: #9e9e9e; }
 .muted { background: #6a1b9a; } .disabled { background: #424242; }
 .environment_changed { background: #f9a825; color: #222; } .fault { background: #000; }
 .env { font-size: .8em; color: #666; margin-left: .4em; }
 svg.spark { width: 240px; height: 40px; background: #f3f3f3; }
 .ongoing { font-weight: 600; color: #c62828; }
 #error { color: #c62828; }
 #warnings { color: #c62828; font-weight: bold; }
</style>
</head>
<body>
<h1>edge-asd <span id="node"></span></h1>
<div id="meta">loading&hellip;</div>
<div id="error"></div>
<div id="warnings"></div>
<table id="machines">
 <thead><tr><th>Machine</th><th>State</th><th>Score / threshold</th><th>Level</th>
 <th>Last minutes</th></tr></thead>
 <tbody></tbody>
</table>
<h2 style="font-size:1.1em">Recent events</h2>
<table id="events">
 <thead><tr><th>Start</th><th>Machine</th><th>Duration</th><th>Peak</th><th>Why</th>
 <th>Clip</th></tr></thead>
 <tbody></tbody>
</table>
<script>
"use strict";
const SVG = "http://www.w3.org/2000/svg";
function cell(row, text, cls) {
  const td = document.createElement("td");
  if (text !== null && text !== undefined) td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function num(x, digits) { return x === null || x === undefined ? "–" : x.toFixed(digits); }
function time(t) { return new Date(t * 1000).toLocaleTimeString(); }
function spark(m, now, span) {
  const w = 240, h = 40, svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  const pts = m.history, thr = m.threshold;
  let top = thr ? 2 * thr : 1;
  for (const p of pts) top = Math.max(top, p[1]);
  const x = t => w * (1 - (now - t) / span), y = s => h - 2 - (h - 4) * s / top;
  if (thr) {
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("x1", 0); line.setAttribute("x2", w);
    line.setAttribute("y1", y(thr)); line.setAttribute("y2", y(thr));
    line.setAttribute("stroke", "#c62828"); line.setAttribute("stroke-dasharray", "4 3");
    svg.appendChild(line);
  }
  if (pts.length) {
    const poly = document.createElementNS(SVG, "polyline");
    const xy = p => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1);
    poly.setAttribute("points", pts.map(xy).join(" "));
    poly.setAttribute("fill", "none"); poly.setAttribute("stroke", "#1565c0");
    poly.setAttribute("stroke-width", "1.5");
    svg.appendChild(poly);
  }
  return svg;
}
function link(td, href, text) {
  const a = document.createElement("a");
  a.href = href; a.textContent = text;
  td.appendChild(a);
  td.appendChild(document.createTextNode(" "));
}
function render(s) {
  document.getElementById("node").textContent = s.node;
  document.getElementById("meta").textContent =
    "version " + s.version + " · updated " + time(s.now);
  const wb = document.getElementById("warnings");
  wb.replaceChildren();
  for (const w of s.warnings || []) {
    const p = document.createElement("p");
    p.textContent = w;
    wb.appendChild(p);
  }
  const mb = document.querySelector("#machines tbody");
  mb.replaceChildren();
  for (const m of s.machines) {
    const tr = document.createElement("tr");
    tr.dataset.machine = m.name;
    cell(tr, m.name, "machine-name");
    const st = cell(tr, null);
    const badge = document.createElement("span");
    badge.className = "state " + (m.state || "unknown");
    badge.textContent = m.state || "starting";
    st.appendChild(badge);
    if (m.environment) {
      const env = document.createElement("span");
      env.className = "env";
      env.textContent = "surroundings changed: " + m.environment;
      st.appendChild(env);
    }
    cell(tr, num(m.score, 3) + " / " + num(m.threshold, 3));
    cell(tr, m.dbfs === null ? "–" : num(m.dbfs, 1) + " dBFS");
    cell(tr, null).appendChild(spark(m, s.now, s.history_seconds));
    mb.appendChild(tr);
  }
  const eb = document.querySelector("#events tbody");
  eb.replaceChildren();
  for (const e of s.events) {
    const tr = document.createElement("tr");
    tr.dataset.event = e.event_id;
    cell(tr, time(e.start));
    cell(tr, e.machine);
    if (e.ongoing) cell(tr, "ongoing", "ongoing");
    else cell(tr, num(e.end - e.start, 1) + " s");
    cell(tr, num(e.peak, 3));
    cell(tr, e.explanation || "", "explanation");
    const clip = cell(tr, null, "clip");
    if (e.clip) {
      link(clip, e.clip, e.clip_ready ? "audio" : "audio (writing…)");
      link(clip, e.spectrogram, "spectrogram");
    }
    eb.appendChild(tr);
  }
}
async function poll() {
  try {
    const r = await fetch("/api/status", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    document.getElementById("error").textContent = "";
  } catch (err) {
    document.getElementById("error").textContent = "cannot reach the daemon: " + err.message;
  }
}
poll();
setInterval(poll, 2000);
</script>
</body>
</html>
"""
