"""The status page in a real browser: headless Chromium through Playwright.

Needs Debian's `chromium` package (the test command's apt-get installs it) and the `playwright`
Python package (the test extra); `playwright install` is never run, the system browser is used.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_asd.service.http import StatusServer
from edge_asd.service.status import StatusBoard

CHROMIUM = "/usr/bin/chromium"
EVENT_ID = "fedcba9876543210fedcba9876543210"

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright (pip install playwright)"
)
if shutil.which(CHROMIUM) is None:
    pytest.skip(
        f"the browser test needs Chromium at {CHROMIUM} (apt-get install chromium)",
        allow_module_level=True,
    )


@pytest.fixture
def page_url(tmp_path: Path) -> Iterator[str]:
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / f"{EVENT_ID}.wav").write_bytes(b"RIFF")
    board = StatusBoard("gateway-07", "1.2.3")
    board.add_machine("press-1", threshold=0.5)
    for n in range(20):
        board.window("press-1", board.snapshot()["now"] - 20 + n, 0.2 + 0.05 * n, 0.5, -27.5)
    board.machine_state("press-1", "anomalous")
    board.event("press-1", "start", EVENT_ID, board.snapshot()["now"] - 8.0, 0.9)
    board.event(
        "press-1",
        "end",
        EVENT_ID,
        board.snapshot()["now"] - 2.0,
        1.4,
        "impulses at 12 per s in 3.6-4.5 kHz, +7 dB",
        clips / f"{EVENT_ID}.wav",
    )
    board.set_warnings(("Outbox degraded, events are published without durability",))
    server = StatusServer(board, port=0, clips_dir=clips)
    server.start()
    try:
        yield server.url + "/"
    finally:
        server.stop()


def test_status_page_renders_machines_and_events(page_url: str) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_url)
            row = page.locator('#machines tr[data-machine="press-1"]')
            row.wait_for(timeout=15_000)
            assert row.locator(".machine-name").inner_text() == "press-1"
            assert row.locator(".state").inner_text() == "anomalous"
            assert row.locator("svg polyline").count() == 1  # the score sparkline
            assert page.locator("#node").inner_text() == "gateway-07"
            assert "Outbox degraded" in page.locator("#warnings").inner_text()
            event = page.locator(f'#events tr[data-event="{EVENT_ID}"]')
            assert "impulses at 12 per s" in event.locator(".explanation").inner_text()
            audio = event.locator(".clip a").first
            assert audio.get_attribute("href") == f"/clips/{EVENT_ID}.wav"
            assert audio.inner_text() == "audio"  # the file exists: no "(writing…)"
            response = page.request.get(page_url + f"clips/{EVENT_ID}.wav")
            assert response.status == 200
            assert errors == []
        finally:
            browser.close()
