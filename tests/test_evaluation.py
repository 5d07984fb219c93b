"""Tests for edge_asd.offline.evaluation on small DCASE trees made with edge_asd_dev.synth."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio.files import write_wav
from edge_asd.config import CalibrationConfig
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.detector import DEFAULT_TRIGGER_WINDOWS, DetectorSettings
from edge_asd.detection.memory_bank import MemoryBank
from edge_asd.detection.pipeline import RecordingResult
from edge_asd.detection.scoring import ClipScorer
from edge_asd.detection.states import EventType
from edge_asd.model.contract import ModelInfo
from edge_asd.offline.dcase import (
    LabelledClip,
    discover_sections,
    parse_test_name,
    train_domain,
)
from edge_asd.offline.evaluation import (
    EvaluationError,
    evaluate,
    format_table,
    operating_point,
)
from edge_asd_dev import synth

CLIP_SECONDS = 2.0
WINDOW = SAMPLE_RATE_HZ  # 1 s
HOP = SAMPLE_RATE_HZ // 2  # 0.5 s -> 3 windows per 2 s clip
N_BANDS = 32
TARGET_CONDITION = 1.15
FAULT_LEVEL_DB = 0.0


class FakeEncoder:
    """Log band energies of the window's spectrum: a tiny stand-in for the ONNX encoder."""

    def __init__(self) -> None:
        self.info = ModelInfo(
            path="/fake/bands.onnx",
            sha256="0" * 64,
            name="fake-bands",
            version="1",
            sample_rate=SAMPLE_RATE_HZ,
            window_samples=WINDOW,
            embedding_dim=N_BANDS,
        )

    def embed(self, windows: np.ndarray) -> np.ndarray:
        power = np.abs(np.fft.rfft(np.asarray(windows, dtype=np.float64), axis=1)) ** 2
        bands = np.array_split(power, N_BANDS, axis=1)
        return np.log(np.stack([b.sum(axis=1) for b in bands], axis=1) + 1e-9).astype(np.float32)


def _normal(seed: int, condition: float = 1.0) -> np.ndarray:
    return synth.machine_sound(CLIP_SECONDS, rng=np.random.default_rng(seed), condition=condition)


def _anomalous(seed: int, condition: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed + 10_000)
    return synth.whine(_normal(seed, condition), rng=rng, level_db=FAULT_LEVEL_DB)


def _make_dcase2023_section(section_dir: Path) -> None:
    train = section_dir / "train"
    test = section_dir / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    seed = 0
    for i in range(8):
        write_wav(train / f"section_00_source_train_normal_{i:04d}_a_1.wav", _normal(seed))
        seed += 1
    for i in range(2):
        x = _normal(seed, TARGET_CONDITION)
        write_wav(train / f"section_00_target_train_normal_{i:04d}_a_2.wav", x)
        seed += 1
    for domain, condition in (("source", 1.0), ("target", TARGET_CONDITION)):
        for i in range(3):
            x = _normal(seed, condition)
            write_wav(test / f"section_00_{domain}_test_normal_{i:04d}_a.wav", x)
            seed += 1
        for i in range(3):
            x = _anomalous(seed, condition)
            write_wav(test / f"section_00_{domain}_test_anomaly_{i:04d}_a.wav", x)
            seed += 1


@pytest.fixture(scope="module")
def dcase_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dev")
    _make_dcase2023_section(root / "fan")
    return root


@pytest.fixture(scope="module")
def evaluated(dcase_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out")
    results = evaluate(
        dcase_root, out, FakeEncoder(), window_samples=WINDOW, hop_samples=HOP, progress=False
    )
    return out, results


def test_results_structure_and_metrics(evaluated: tuple[Path, dict]) -> None:
    out, results = evaluated
    section = results["sections"]["fan"]
    # A 0 dB whine is obvious: both domains separate well.
    assert section["auc_source"] > 0.9
    assert section["auc_target"] > 0.9
    assert 0.5 <= section["pauc"] <= 1.0
    assert 0.0 <= results["official_score"] <= 1.0
    assert section["n_train_windows"] == 10 * 3
    assert (section["n_train_clips_source"], section["n_train_clips_target"]) == (8, 2)
    assert (section["n_test_source_normal"], section["n_test_target_normal"]) == (3, 3)
    assert section["n_test_anomaly"] == 6
    assert results["model"] == {
        "name": "fake-bands",
        "version": "1",
        "sha256": "0" * 64,
        "path": "/fake/bands.onnx",
    }
    assert results["scoring"] == {
        "method": "density",
        "k": 1,
        "rho_scope": CalibrationConfig().rho_scope,
        "window_seconds": 1.0,
        "hop_seconds": 0.5,
        "aggregate": "mean",
        "views": CalibrationConfig().views,
    }
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["official_score"] == pytest.approx(results["official_score"])
    assert on_disk["sections"]["fan"]["auc_source"] == pytest.approx(section["auc_source"])


def test_score_csv_is_dcase_submission_format(evaluated: tuple[Path, dict]) -> None:
    out, _ = evaluated
    path = out / "anomaly_score_fan_section_00_test.csv"
    rows = list(csv.reader(path.open()))
    assert len(rows) == 12  # no header
    names = {row[0] for row in rows}
    assert "section_00_target_test_anomaly_0002_a.wav" in names
    scores = {row[0]: float(row[1]) for row in rows}
    normal = [v for n, v in scores.items() if "_normal_" in n]
    anomaly = [v for n, v in scores.items() if "_anomaly_" in n]
    # Higher = more anomalous.
    assert np.mean(anomaly) > np.mean(normal)


def test_operating_point_is_reported(evaluated: tuple[Path, dict]) -> None:
    _, results = evaluated
    op = results["sections"]["fan"]["operating_point"]
    assert op["trigger_windows"] == DEFAULT_TRIGGER_WINDOWS == 2
    assert op["normal_hours"] == pytest.approx(6 * CLIP_SECONDS / 3600)
    assert op["false_alarms_per_hour"] >= 0.0
    assert op["false_alarms_per_hour"] == pytest.approx(op["false_alarms"] * 3600 / 12.0)
    assert 0.0 <= op["anomalous_clips_caught"] <= 1.0
    # The whine sits far above normal variation: the held-out threshold catches most faults.
    assert op["anomalous_clips_caught"] >= 0.5
    assert np.isfinite(op["threshold"])


def test_operating_point_uses_the_daemons_default_decision(
    evaluated: tuple[Path, dict],
) -> None:
    """Each section is calibrated as `edge-asd calibrate` does, evidence decision included."""
    _, results = evaluated
    op = results["sections"]["fan"]["operating_point"]
    assert op["decision"] == "evidence"


def test_unknown_decision_rule_is_refused(dcase_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decision rule"):
        evaluate(dcase_root, tmp_path, FakeEncoder(), decision="vote", progress=False)


def test_operating_point_follows_the_detector_settings(dcase_root: Path, tmp_path: Path) -> None:
    """The trigger run reaches the detector: a clip of 3 windows can never hold 4 over in a row,
    and one window over is enough with trigger 1."""
    ops = {
        trigger: evaluate(
            dcase_root,
            tmp_path / str(trigger),
            FakeEncoder(),
            window_samples=WINDOW,
            hop_samples=HOP,
            progress=False,
            trigger_windows=trigger,
            decision="hysteresis",
        )["sections"]["fan"]["operating_point"]
        for trigger in (1, 2, 4)
    }
    assert {op["decision"] for op in ops.values()} == {"hysteresis"}
    assert ops[4]["false_alarms"] == 0
    assert ops[4]["anomalous_clips_caught"] == 0.0
    assert ops[4]["median_seconds_to_alarm"] is None
    assert ops[1]["false_alarms"] >= ops[2]["false_alarms"]
    assert ops[1]["anomalous_clips_caught"] >= ops[2]["anomalous_clips_caught"]
    # The first alarm is known at the end of the window completing the trigger run.
    assert ops[1]["median_seconds_to_alarm"] >= WINDOW / SAMPLE_RATE_HZ
    assert ops[2]["median_seconds_to_alarm"] >= (WINDOW + HOP) / SAMPLE_RATE_HZ


def test_format_table(evaluated: tuple[Path, dict]) -> None:
    _, results = evaluated
    table = format_table(results)
    assert "| fan | 8/2 |" in table
    assert f"{100 * results['official_score']:.2f} %" in table
    assert "fake-bands" in table


def test_raw_and_difference_methods_run(dcase_root: Path, tmp_path: Path) -> None:
    for method in ("raw", "difference"):
        results = evaluate(
            dcase_root,
            tmp_path / method,
            FakeEncoder(),
            method=method,
            window_samples=WINDOW,
            hop_samples=HOP,
            aggregate="max",
            progress=False,
        )
        assert results["scoring"]["method"] == method
        assert results["scoring"]["aggregate"] == "max"
        assert results["sections"]["fan"]["auc_source"] > 0.8


def test_rho_scope_reaches_the_bank(dcase_root: Path, tmp_path: Path) -> None:
    """Each scope gives its own density scores; the scope is recorded and printed."""
    scores: dict[str, list[str]] = {}
    for scope in ("all", "non_overlapping", "other_groups"):
        out = tmp_path / scope
        results = evaluate(
            dcase_root,
            out,
            FakeEncoder(),
            rho_scope=scope,
            window_samples=WINDOW,
            hop_samples=HOP,
            progress=False,
        )
        assert results["scoring"]["rho_scope"] == scope
        assert f"rho_scope={scope}" in format_table(results)
        assert results["sections"]["fan"]["operating_point"] is not None
        scores[scope] = (out / "anomaly_score_fan_section_00_test.csv").read_text().splitlines()
    assert scores["all"] != scores["non_overlapping"] != scores["other_groups"]
    with pytest.raises(ValueError, match="rho_scope: unknown rho scope 'nearest'"):
        evaluate(dcase_root, tmp_path / "x", FakeEncoder(), rho_scope="nearest", progress=False)


def test_too_large_k_for_the_scope_names_section_and_scope(
    dcase_root: Path, tmp_path: Path
) -> None:
    # 10 clips of 3 windows: 27 windows of other clips, fewer than k = 28.
    with pytest.raises(EvaluationError, match=r"section fan: .*k=28.*'other_groups'"):
        evaluate(
            dcase_root,
            tmp_path,
            FakeEncoder(),
            k=28,
            rho_scope="other_groups",
            window_samples=WINDOW,
            hop_samples=HOP,
            progress=False,
        )


def test_dcase2020_names_are_source_only(tmp_path: Path) -> None:
    section = tmp_path / "root" / "valve"
    (section / "train").mkdir(parents=True)
    (section / "test").mkdir(parents=True)
    for i in range(6):
        write_wav(section / "train" / f"normal_id_00_{i:08d}.wav", _normal(100 + i))
    for i in range(3):
        write_wav(section / "test" / f"normal_id_00_{i:08d}.wav", _normal(200 + i))
        write_wav(section / "test" / f"anomaly_id_00_{i:08d}.wav", _anomalous(300 + i))
    results = evaluate(
        tmp_path / "root",
        tmp_path / "out",
        FakeEncoder(),
        window_samples=WINDOW,
        hop_samples=HOP,
        progress=False,
    )
    sec = results["sections"]["valve"]
    assert sec["auc_target"] is None
    assert sec["n_train_clips_target"] == 0
    expected = 2 / (1 / sec["auc_source"] + 1 / sec["pauc"])
    assert results["official_score"] == pytest.approx(expected)
    assert "| valve | 6/0 |" in format_table(results)
    assert (tmp_path / "out" / "anomaly_score_valve_id_00.csv").is_file()


def test_dcase2020_machine_ids_are_separate_sections(tmp_path: Path) -> None:
    section = tmp_path / "root" / "slider"
    (section / "train").mkdir(parents=True)
    (section / "test").mkdir(parents=True)
    # ID 02 is a different machine (another operating speed); it gets its own bank.
    for machine_id, condition, seed in (("00", 1.0, 400), ("02", 1.3, 500)):
        for i in range(5):
            x = _normal(seed + i, condition)
            write_wav(section / "train" / f"normal_id_{machine_id}_{i:08d}.wav", x)
        for i in range(2):
            x = _normal(seed + 10 + i, condition)
            write_wav(section / "test" / f"normal_id_{machine_id}_{i:08d}.wav", x)
            x = _anomalous(seed + 20 + i, condition)
            write_wav(section / "test" / f"anomaly_id_{machine_id}_{i:08d}.wav", x)
    sections = discover_sections(tmp_path / "root")
    assert [s.name for s in sections] == ["slider_id_00", "slider_id_02"]
    assert all(len(s.train) == 5 and len(s.test) == 4 for s in sections)
    assert all(f"_id_{s.number}_" in c.path.name for s in sections for c in s.train)
    results = evaluate(
        tmp_path / "root",
        tmp_path / "out",
        FakeEncoder(),
        window_samples=WINDOW,
        hop_samples=HOP,
        progress=False,
    )
    assert set(results["sections"]) == {"slider_id_00", "slider_id_02"}
    assert results["sections"]["slider_id_02"]["n_train_windows"] == 5 * 3
    assert (tmp_path / "out" / "anomaly_score_slider_id_02.csv").is_file()


def test_section_without_anomalies_is_a_clear_error(tmp_path: Path) -> None:
    section = tmp_path / "root" / "belt"
    (section / "train").mkdir(parents=True)
    (section / "test").mkdir(parents=True)
    for i in range(3):
        write_wav(section / "train" / f"section_00_source_train_normal_{i:04d}.wav", _normal(i))
        write_wav(section / "test" / f"section_00_source_test_normal_{i:04d}.wav", _normal(9 + i))
    with pytest.raises(EvaluationError, match="section belt: section has no anomalous clips"):
        evaluate(
            tmp_path / "root",
            tmp_path / "out",
            FakeEncoder(),
            window_samples=WINDOW,
            hop_samples=HOP,
            progress=False,
        )


def test_unreadable_test_file_is_skipped_and_named(
    dcase_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    section = tmp_path / "root" / "pump"
    shutil.copytree(dcase_root / "fan", section)
    bad = section / "test" / "section_00_source_test_normal_0099_a.wav"
    bad.write_bytes(b"this is not a RIFF file at all")
    results = evaluate(
        tmp_path / "root",
        tmp_path / "out",
        FakeEncoder(),
        window_samples=WINDOW,
        hop_samples=HOP,
        progress=False,
    )
    sec = results["sections"]["pump"]
    assert any(str(bad) in message for message in sec["skipped_files"])
    assert any(str(bad) in record.getMessage() for record in caplog.records)
    rows = list(csv.reader((tmp_path / "out" / "anomaly_score_pump_section_00_test.csv").open()))
    assert len(rows) == 12
    assert sec["n_test_source_normal"] == 3


def test_layout_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="not a directory"):
        discover_sections(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    write_wav(tmp_path / "flat" / "a.wav", _normal(1)[:100])
    with pytest.raises(EvaluationError, match=r"flat: no section folders with train/ and test/"):
        evaluate(tmp_path / "flat", tmp_path / "out", FakeEncoder(), progress=False)
    empty = tmp_path / "root" / "gearbox"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir(parents=True)
    with pytest.raises(EvaluationError, match=r"gearbox/train: no \.wav files"):
        discover_sections(tmp_path / "root")


def test_root_may_be_a_single_section(dcase_root: Path) -> None:
    sections = discover_sections(dcase_root / "fan")
    assert [s.name for s in sections] == ["fan"]
    assert len(sections[0].train) == 10
    assert len(sections[0].test) == 12


def test_window_must_match_model(dcase_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes windows of 16000 samples"):
        evaluate(dcase_root, tmp_path, FakeEncoder(), window_samples=8000, progress=False)


def test_parse_names() -> None:
    assert parse_test_name("section_00_source_test_normal_0001_car_A1.wav") == (
        "source",
        False,
        "00",
    )
    assert parse_test_name("section_03_target_test_anomaly_0049.wav") == ("target", True, "03")
    assert parse_test_name("anomaly_id_04_00000012.wav") == ("source", True, "04")
    assert parse_test_name("section_00_0001.wav") is None  # evaluation-set names: no label
    assert train_domain("section_00_target_train_normal_0003_a.wav") == "target"
    assert train_domain("section_00_source_train_normal_0003_a.wav") == "source"
    assert train_domain("normal_id_00_00000001.wav") == "source"


class ScriptedEncoder:
    """Scripts window scores: each window's first sample is the score it gets against
    `SCRIPTED_BANK` with raw scoring (cosine distance (1 - cos) / 2 to the bank's [1, 0])."""

    def __init__(self, window_samples: int) -> None:
        self.info = ModelInfo(
            path="/fake/scripted.onnx",
            sha256="1" * 64,
            name="scripted",
            version="1",
            sample_rate=SAMPLE_RATE_HZ,
            window_samples=window_samples,
            embedding_dim=2,
        )

    def embed(self, windows: np.ndarray) -> np.ndarray:
        score = np.asarray(windows, dtype=np.float64)[:, 0]
        # A unit vector at cosine 1 - 2 * score from [1, 0].
        cos = 1.0 - 2.0 * score
        return np.stack([cos, np.sqrt(np.clip(1.0 - cos**2, 0.0, None))], axis=1).astype(np.float32)


SCRIPTED_BANK = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
LOW, HIGH, THRESHOLD = 0.1, 0.9, 0.5
"""Scripted window scores under and over the threshold."""


def _scripted_run(
    over: list[int], *, trigger: int, release: int, window: int = WINDOW, hop: int = HOP
) -> RecordingResult:
    """A clip whose windows score HIGH where `over` is 1 and LOW elsewhere, through the
    pipeline with the production detector. Window i starts at sample i * hop; with window = 2 *
    hop its first hop holds its score."""
    assert window == 2 * hop
    scores = [HIGH if o else LOW for o in over]
    samples = np.repeat(np.asarray([*scores, LOW], dtype=np.float32), hop)
    scorer = ClipScorer(
        ScriptedEncoder(window),
        MemoryBank(SCRIPTED_BANK, k=1),
        method="raw",
        window_samples=window,
        hop_samples=hop,
        detector=DetectorSettings(
            threshold=THRESHOLD, trigger_windows=trigger, release_windows=release
        ),
    )
    result = scorer.score_clip(samples)
    np.testing.assert_allclose(result.window_scores, scores, atol=1e-5)
    return result.recording


def _start_windows(recording: RecordingResult) -> list[int]:
    """Index of the window at whose end each event started."""
    ends = {w.end_time: w.index for w in recording.step.windows}
    return [ends[t.ts] for t in recording.event_starts]


def test_detector_hysteresis_gives_the_alarms() -> None:
    """The alarms the operating point counts are the detector's event starts, with hysteresis.

    Trigger 2, release 2. Over-threshold windows are 1:
    idx:   0 1 2 3 4 5 6 7 8 9
    over:  0 1 0 1 1 1 0 1 0 0 -> single overs (1, 7 after one under) never re-trigger; the
    run 3-4 starts an alarm at 4; one under (6) does not release.
    """
    over = [0, 1, 0, 1, 1, 1, 0, 1, 0, 0]
    assert _start_windows(_scripted_run(over, trigger=2, release=2)) == [4]
    # Release after 2 unders (8, 9), then a new run of 2 starts a second alarm at 11.
    assert _start_windows(_scripted_run([*over, 1, 1], trigger=2, release=2)) == [4, 11]
    # Trigger 1: every over window after a release starts one.
    assert _start_windows(_scripted_run([1, 0, 0, 1], trigger=1, release=2)) == [0, 3]
    assert _start_windows(_scripted_run([0, 0], trigger=1, release=1)) == []


def test_operating_point_counts_the_detectors_events() -> None:
    # Two normal clips (source, target), one with one alarm; two anomalous clips, one caught
    # at window 3 -> known at the end of that window, (3 * 8000 + 16000) / 16000 = 2.5 s.
    clips = [
        LabelledClip(Path("a.wav"), "source", False),
        LabelledClip(Path("b.wav"), "target", False),
        LabelledClip(Path("c.wav"), "source", True),
        LabelledClip(Path("d.wav"), "target", True),
    ]
    settings = DetectorSettings(threshold=THRESHOLD)
    recordings = [
        _scripted_run(over, trigger=settings.trigger_windows, release=settings.release_windows)
        for over in ([0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 1, 0])
    ]
    assert [len(r.event_starts) for r in recordings] == [0, 1, 1, 0]
    caught = recordings[2].event_starts[0]
    assert caught.kind is EventType.START
    assert caught.ts == pytest.approx(recordings[2].step.windows[3].end_time)
    op = operating_point(clips, recordings, [10.0, 10.0, 10.0, 10.0], settings)
    assert (op["threshold"], op["trigger_windows"], op["release_windows"]) == (THRESHOLD, 2, 4)
    assert op["false_alarms"] == 1
    assert op["false_alarms_per_hour"] == pytest.approx(1 * 3600 / 20)
    assert op["false_alarms_per_hour_source"] == pytest.approx(0.0)
    assert op["false_alarms_per_hour_target"] == pytest.approx(360.0)
    assert op["normal_clips_with_alarm"] == pytest.approx(0.5)
    assert op["anomalous_clips_caught"] == pytest.approx(0.5)
    assert op["median_seconds_to_alarm"] == pytest.approx(2.5)


def test_real_bundled_encoder(dcase_root: Path, tmp_path: Path) -> None:
    """The shipped log-mel statistics model runs through the same evaluation."""
    from edge_asd.model.contract import ModelError
    from edge_asd.model.encoder import Encoder
    from edge_asd.model.registry import resolve_model

    try:
        encoder = Encoder(resolve_model("logmel-stats"))
    except ModelError as exc:  # the model file is generated at build time
        pytest.skip(f"bundled model not available: {exc}")
    results = evaluate(dcase_root, tmp_path, encoder, progress=False)
    assert results["model"]["name"] == "logmel-stats"
    assert results["sections"]["fan"]["auc_source"] > 0.8
