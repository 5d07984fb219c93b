"""benchmarks/make_breadth_sets.py and benchmarks/breadth.py on a small synthetic valve set
(no ../shared data: the factory noise is replaced by generated noise)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

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
