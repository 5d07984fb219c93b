"""PortAudio's ALSA enumeration loads every PCM plugin library; the daemon unloads them again
(`sources.release_alsa_plugins`) and still captures from its device. Real PortAudio, real
PulseAudio, in a subprocess (the mappings of a fresh process are what the daemon has)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pulse_fixture import VirtualMic
from tests.test_daemon_e2e import Machine

PLUGIN_DIR = Path("/usr/lib/x86_64-linux-gnu/alsa-lib")

_PROBE = """
import json, sys
import numpy as np
from edge_asd.audio.sources import SoundDeviceSource, _import_sounddevice

def plugins():
    maps = open("/proc/self/maps").read()
    return sorted({line.rsplit("/", 1)[-1] for line in maps.splitlines()
                   if "libasound_module_pcm_" in line or "libavcodec" in line})

sd = _import_sounddevice()
after_init = plugins()
source = SoundDeviceSource(sys.argv[1], channels=(0,), block_seconds=0.1)
source.start()
blocks = [b for b in (source.read(5.0) for _ in range(5)) if b is not None]
source.stop()
print(json.dumps({"after_init": after_init, "after_capture": plugins(),
                  "rms": float(np.sqrt(np.mean(np.concatenate(blocks) ** 2)))}))
"""


@pytest.mark.skipif(
    not (PLUGIN_DIR / "libasound_module_pcm_a52.so").exists(),
    reason="libasound2-plugins (the a52 plugin) is not installed",
)
def test_enumeration_plugins_are_unloaded_and_capture_still_works() -> None:
    with VirtualMic() as mic:
        mic.set_source(Machine(seed=5))
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, mic.device],
            env={**os.environ, **mic.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Without the release, the a52 plugin (and libavcodec with it) stays mapped after init.
    assert not any("a52" in name or "libavcodec" in name for name in report["after_init"]), report
    assert not any("a52" in name for name in report["after_capture"]), report
    assert report["rms"] > 1e-3, report  # the device still delivers the machine's sound
