"""benchmarks/make_breadth_sets.py and benchmarks/breadth.py on a small synthetic valve set and
on stand-in bearing files (no ../shared data: the factory noise and the CWRU recordings are
replaced by generated noise with the same names and durations)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from edge_asd.audio.files import write_wav
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.offline.dcase import discover_sections
from tests.benchmark_loader import benchmark_module

NOISE_SECONDS = 20.0


@pytest.fixture(scope="module")
def sets() -> Iterator[ModuleType]:
    with benchmark_module("make_breadth_sets") as module:
        yield module


@pytest.fixture(scope="module")
def breadth() -> Iterator[ModuleType]:
    with benchmark_module("breadth") as module:
        yield module


@pytest.fixture
def valve_root(sets: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sets, "VALVE_TRAIN_CLIPS", 8)
    monkeypatch.setattr(sets, "VALVE_TEST_CLIPS", 4)
    sections = sets.valve_sections(0)
    kept = {name: sections[name] for name in ("valve_late", "valve_leak")}
    noise = np.random.default_rng(0).standard_normal(round(NOISE_SECONDS * SAMPLE_RATE_HZ))
    sets._write_set(
        tmp_path / "valves",
        kept,
        seed=0,
        snr_db=sets.VALVE_SNR_DB,
        noise={"factory2": noise.astype(np.float32)},
        noise_types=sets.FACTORY_NOISE,
        description={"set": "valves"},
    )
    return tmp_path


def test_valve_sections_cover_every_fault_with_paired_clips(sets: ModuleType) -> None:
    sections = sets.valve_sections(0)
    assert set(sections) == {f"valve_{f}" for f in ("late", "missing", "double", "period")} | {
        f"valve_{s}" for s in sets.VALVE_LEAK_DB
    }
    for train, test in sections.values():
        assert len(train) == sets.VALVE_TRAIN_CLIPS
        normals = [c for c in test if c.info["label"] == "normal"]
        anomalies = [c for c in test if c.info["label"] == "anomaly"]
        assert len(normals) == len(anomalies) == sets.VALVE_TEST_CLIPS
        for normal, anomaly in zip(normals, anomalies, strict=True):
            # Paired: the same machine (seed) without and with the fault.
            np.testing.assert_array_equal(normal.clean, anomaly.clean)
            assert not np.allclose(anomaly.faulty, anomaly.clean)


def test_valve_set_is_read_by_evaluate_as_written(valve_root: Path) -> None:
    sections = discover_sections(valve_root / "valves")
    assert [s.name for s in sections] == ["valve_late", "valve_leak"]
    for section in sections:
        assert len(section.train) == 8
        assert {c.domain for c in section.train} == {"source"}
        assert sum(c.is_anomaly for c in section.test) == 4
        assert sum(not c.is_anomaly for c in section.test) == 4
    assert (valve_root / "valves" / "manifest.json").is_file()


def test_lists_option(breadth: ModuleType) -> None:
    text = "usage: edge-asd evaluate [-h] --out OUT [--views VIEWS]\n  --views-x  other\n"
    assert breadth.lists_option(text, "--views")
    assert breadth.lists_option(text, "--out")
    assert not breadth.lists_option(text.replace("[--views VIEWS]", ""), "--views")


@pytest.mark.slow
def test_breadth_runs_evaluate_and_writes_the_table(
    breadth: ModuleType, valve_root: Path, tmp_path: Path
) -> None:
    table = tmp_path / "table.md"
    runs = tmp_path / "runs"
    args = [str(valve_root), "--out", str(runs), "--markdown", str(table), "--rounds", "20"]
    assert breadth.main([*args, "--no-views"]) == 0
    text = table.read_text(encoding="utf-8")
    assert "#### valves" in text
    assert "| valve_late |" in text
    assert "yamnet-denoise - logmel-stats [95 %]" in text
    assert (runs / "valves" / "logmel-stats" / "results.json").is_file()
    stamp = runs / "valves" / "logmel-stats" / breadth.STAMP_FILE
    before = stamp.stat().st_mtime_ns
    # Unchanged set and arguments: the runs are reused, not recomputed.
    assert breadth.main([*args, "--no-views"]) == 0
    assert stamp.stat().st_mtime_ns == before


# Stand-ins for ../shared/data/bearing_dev and noise_dev with the real files' durations (s).
BEARING_NORMAL_S = {0: 5.08, 1: 2.35, 2: 2.35, 3: 2.35}
BEARING_FAULT_S = 10.1


def _fake_shared(root: Path) -> Path:
    """The file names and durations that the bearing sets read, filled with seeded noise."""
    rng = np.random.default_rng(0)
    folder = root / "data" / "bearing_dev"
    folder.mkdir(parents=True)

    def wav(path: Path, seconds: float) -> None:
        x = 0.03 * rng.standard_normal(round(seconds * SAMPLE_RATE_HZ))
        write_wav(path, x.astype(np.float32))

    for load, seconds in BEARING_NORMAL_S.items():
        wav(folder / f"normal_load{load}.wav", seconds)
        for fault in ("inner", "ball", "outer"):
            for size in ("007", "014", "021"):
                wav(folder / f"{fault}{size}_load{load}.wav", BEARING_FAULT_S)
    (root / "data" / "noise_dev").mkdir(parents=True)
    wav(root / "data" / "noise_dev" / "factory2.wav", NOISE_SECONDS)
    return root


@pytest.fixture(scope="module")
def fake_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fake_shared(tmp_path_factory.mktemp("shared"))


def _overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["start_s"] < b["end_s"] and b["start_s"] < a["end_s"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bearing_hard_split_rules(sets: ModuleType, fake_shared: Path, seed: int) -> None:
    train, normals, anomalies = sets.bearing_hard_clips(fake_shared, seed)
    assert train and normals and anomalies
    # Calibrated on one load only, all of it source domain.
    assert {c.info["load"] for c in train} == {sets.HARD_SOURCE_LOAD}
    assert {c.info["domain"] for c in train} == {"source"}
    # No test excerpt shares a sample with a train excerpt of the same recording.
    for clip in normals + anomalies:
        for t in train:
            if clip.info["recording"] == t.info["recording"]:
                assert not _overlaps(clip.info, t.info), (clip.name, t.name)
    # Source = the calibrated load, target = every other load.
    for clip in normals + anomalies:
        expected = "source" if clip.info["load"] == sets.HARD_SOURCE_LOAD else "target"
        assert clip.info["domain"] == expected
    assert {c.info["load"] for c in normals if c.info["domain"] == "target"} == set(
        sets.HARD_TARGET_LOADS
    )
    # Only the weakest fault size, every type at every load, excerpts not overlapping.
    assert {c.info["recording"].split("_")[0][-3:] for c in anomalies} == {"007"}
    assert {(c.info["fault"], c.info["load"]) for c in anomalies} == {
        (f, load)
        for f in sets.BEARING_FAULTS
        for load in (sets.HARD_SOURCE_LOAD, *sets.HARD_TARGET_LOADS)
    }
    for a in anomalies:
        for b in anomalies:
            if a is not b and a.info["recording"] == b.info["recording"]:
                assert not _overlaps(a.info, b.info)
    n = round(sets.BEARING_CLIP_S * SAMPLE_RATE_HZ)
    assert all(c.clean.size == n for c in train + normals + anomalies)


def test_bearing_hard_is_deterministic(sets: ModuleType, fake_shared: Path) -> None:
    first = sets.bearing_hard_clips(fake_shared, 5)
    again = sets.bearing_hard_clips(fake_shared, 5)
    for a, b in zip(first, again, strict=True):
        assert [c.name for c in a] == [c.name for c in b]
        for ca, cb in zip(a, b, strict=True):
            np.testing.assert_array_equal(ca.clean, cb.clean)


def test_bearing_hard_set_is_read_by_evaluate(
    sets: ModuleType, fake_shared: Path, tmp_path: Path
) -> None:
    manifest = sets.build(fake_shared, tmp_path, ["bearings-hard"], 0)["bearings-hard"]
    sections = discover_sections(tmp_path / "bearings-hard")
    assert len(sections) == len(sets.BEARING_FAULTS) * len(sets.HARD_SNRS_DB)
    assert {s["snr_db"] for s in manifest["sections"].values()} == set(sets.HARD_SNRS_DB)
    for section in sections:
        assert {c.domain for c in section.train} == {"source"}
        domains = {(c.domain, c.is_anomaly) for c in section.test}
        assert domains == {(d, a) for d in ("source", "target") for a in (False, True)}
        files = manifest["sections"][section.name]["files"]
        # Every clip has factory noise mixed in: train crops and test crops from separate halves.
        half_s = NOISE_SECONDS / 2
        for f in files:
            is_test = f["file"].startswith("test/")
            assert (f["noise_start_s"] >= half_s) == is_test
        faults = {f["fault"] for f in files if f["label"] == "anomaly"}
        assert len(faults) == 1 and section.name.startswith(f"bearing_{faults.pop()}007_")
