"""The log-mel statistics encoder: graph vs numpy reference, determinism, metadata, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.model.contract import (
    META_EMBEDDING_DIM,
    META_MODEL_NAME,
    META_MODEL_VERSION,
    META_SAMPLE_RATE,
    META_WINDOW_SAMPLES,
    MODEL_INPUT_NAME,
    MODEL_OUTPUT_NAME,
)
from edge_asd_dev import logmel_model as lm

WINDOW = lm.WINDOW_SAMPLES
ATOL = 1e-4
# A pure tone leaves far-away mel bands near LOG_OFFSET, where float32 round-off in the Conv
# (about 1e-10 in power) moves log(mel + 1e-6) by up to ~1e-3; real audio never gets there.
PURE_TONE_ATOL = 2e-3


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _frontend_model(prefix: str = "frontend/") -> onnx.ModelProto:
    nodes, initializers = lm.frontend_nodes("audio", "logmel", prefix=prefix)
    graph = helper.make_graph(
        nodes,
        "frontend_only",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, ["batch", lm.N_MELS, "t"])],
        initializer=initializers,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", lm.OPSET)], ir_version=lm.IR_VERSION
    )


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    t = np.arange(WINDOW) / SAMPLE_RATE_HZ
    hum = 0.3 * np.sin(2 * np.pi * 120.0 * t) + 0.1 * np.sin(2 * np.pi * 2400.0 * t)
    return {
        "noise": 0.1 * rng.standard_normal(WINDOW),
        "hum_in_noise": hum + 0.01 * rng.standard_normal(WINDOW),
        "full_scale": np.clip(rng.standard_normal(WINDOW), -1.0, 1.0),
        "silence": np.zeros(WINDOW),
        "impacts": np.where(rng.random(WINDOW) < 0.002, 0.9, 0.0)
        + 0.003 * rng.standard_normal(WINDOW),
    }


@pytest.fixture(scope="module")
def frontend() -> ort.InferenceSession:
    return _session(_frontend_model())


@pytest.fixture(scope="module")
def encoder_session() -> ort.InferenceSession:
    return _session(lm.build_model())


@pytest.mark.parametrize("name", sorted(_signals()))
def test_frontend_graph_matches_numpy_reference(frontend: ort.InferenceSession, name: str) -> None:
    waveform = _signals()[name].astype(np.float32)
    (graph_out,) = frontend.run(None, {"audio": waveform[np.newaxis]})
    reference = lm.logmel_numpy(waveform)
    assert reference.shape == (lm.n_frames(WINDOW), lm.N_MELS)
    np.testing.assert_allclose(graph_out[0].T, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(_signals()))
def test_embedding_graph_matches_numpy_reference(
    encoder_session: ort.InferenceSession, name: str
) -> None:
    waveform = _signals()[name].astype(np.float32)
    (embedding,) = encoder_session.run([MODEL_OUTPUT_NAME], {MODEL_INPUT_NAME: waveform[None]})
    assert embedding.shape == (1, lm.EMBEDDING_DIM)
    assert embedding.dtype == np.float32
    np.testing.assert_allclose(embedding[0], lm.embedding_numpy(waveform), atol=ATOL, rtol=0)


@settings(max_examples=25, deadline=None)
@given(
    tone_hz=st.floats(min_value=20.0, max_value=7990.0),
    tone_amplitude=st.floats(min_value=0.0, max_value=0.9),
    noise_amplitude=st.floats(min_value=1e-3, max_value=0.1),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_embedding_matches_reference_for_tones_in_noise(
    encoder_session: ort.InferenceSession,
    tone_hz: float,
    tone_amplitude: float,
    noise_amplitude: float,
    seed: int,
) -> None:
    t = np.arange(WINDOW) / SAMPLE_RATE_HZ
    noise = noise_amplitude * np.random.default_rng(seed).standard_normal(WINDOW)
    waveform = np.clip(tone_amplitude * np.sin(2 * np.pi * tone_hz * t) + noise, -1.0, 1.0)
    waveform = waveform.astype(np.float32)
    (embedding,) = encoder_session.run(None, {MODEL_INPUT_NAME: waveform[None]})
    np.testing.assert_allclose(embedding[0], lm.embedding_numpy(waveform), atol=ATOL, rtol=0)


def test_pure_tone_matches_reference_within_float32_roundoff(
    encoder_session: ort.InferenceSession,
) -> None:
    t = np.arange(WINDOW) / SAMPLE_RATE_HZ
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    (embedding,) = encoder_session.run(None, {MODEL_INPUT_NAME: tone[None]})
    np.testing.assert_allclose(embedding[0], lm.embedding_numpy(tone), atol=PURE_TONE_ATOL)


def test_batch_rows_are_independent(encoder_session: ort.InferenceSession) -> None:
    signals = np.stack(list(_signals().values())).astype(np.float32)
    (batched,) = encoder_session.run(None, {MODEL_INPUT_NAME: signals})
    for row, waveform in zip(batched, signals, strict=True):
        (single,) = encoder_session.run(None, {MODEL_INPUT_NAME: waveform[None]})
        np.testing.assert_allclose(row, single[0], atol=1e-5)


@pytest.mark.parametrize("tone_hz", [250.0, 1000.0, 4000.0])
def test_reference_puts_a_tone_in_the_band_around_its_frequency(tone_hz: float) -> None:
    # Guards the reference itself: graph and reference could otherwise be wrong together.
    t = np.arange(WINDOW) / SAMPLE_RATE_HZ
    logmel = lm.logmel_numpy(0.5 * np.sin(2 * np.pi * tone_hz * t))
    edges_hz = lm.mel_to_hz(
        np.linspace(lm.hz_to_mel(lm.F_MIN_HZ), lm.hz_to_mel(lm.F_MAX_HZ), lm.N_MELS + 2)
    )
    loudest = int(np.argmax(logmel.mean(axis=0)))
    assert edges_hz[loudest] < tone_hz < edges_hz[loudest + 2]


def test_embedding_is_band_means_then_band_stds() -> None:
    waveform = _signals()["hum_in_noise"]
    logmel = lm.logmel_numpy(waveform)
    embedding = lm.embedding_numpy(waveform)
    np.testing.assert_allclose(embedding[: lm.N_MELS], logmel.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(embedding[lm.N_MELS :], logmel.std(axis=0), atol=1e-5)


def test_mel_filterbank_covers_the_band_in_order() -> None:
    filters = lm.mel_filterbank()
    assert filters.shape == (lm.N_MELS, lm.N_FREQ_BINS)
    assert np.all(filters >= 0.0)
    assert np.all(filters.max(axis=1) > 0.0)
    peak_bins = filters.argmax(axis=1)
    assert np.all(np.diff(peak_bins) >= 0)
    bin_hz = np.arange(lm.N_FREQ_BINS) * SAMPLE_RATE_HZ / lm.N_FFT
    used = bin_hz[filters.sum(axis=0) > 0]
    assert used.min() >= lm.F_MIN_HZ
    assert used.max() <= lm.F_MAX_HZ


def test_build_is_deterministic() -> None:
    first = lm.build_model().SerializeToString()
    second = lm.build_model().SerializeToString()
    assert first == second


def test_metadata_and_io_follow_the_contract() -> None:
    model = lm.build_model()
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata == {
        META_SAMPLE_RATE: str(SAMPLE_RATE_HZ),
        META_WINDOW_SAMPLES: str(WINDOW),
        META_EMBEDDING_DIM: str(lm.EMBEDDING_DIM),
        META_MODEL_NAME: lm.MODEL_NAME,
        META_MODEL_VERSION: lm.MODEL_VERSION,
    }
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == MODEL_INPUT_NAME
    assert graph_output.name == MODEL_OUTPUT_NAME
    in_dims = graph_input.type.tensor_type.shape.dim
    out_dims = graph_output.type.tensor_type.shape.dim
    assert [d.dim_value for d in in_dims][1] == WINDOW
    assert [d.dim_value for d in out_dims][1] == lm.EMBEDDING_DIM
    assert graph_input.type.tensor_type.elem_type == TensorProto.FLOAT


def test_front_end_uses_conv_not_stft() -> None:
    op_types = {node.op_type for node in lm.build_model().graph.node}
    assert "Conv" in op_types
    assert "STFT" not in op_types
    assert "DFT" not in op_types


def test_frontend_nodes_carry_the_prefix_and_can_be_reused() -> None:
    nodes, initializers = lm.frontend_nodes("audio", "logmel", prefix="student/fe/")
    assert all(node.name.startswith("student/fe/") for node in nodes)
    assert all(init.name.startswith("student/fe/") for init in initializers)
    session = _session(_frontend_model(prefix="student/fe/"))
    waveform = _signals()["noise"].astype(np.float32)
    (out,) = session.run(None, {"audio": waveform[None]})
    np.testing.assert_allclose(out[0].T, lm.logmel_numpy(waveform), atol=ATOL)


def test_short_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 400 samples"):
        lm.build_model(lm.FRAME_SAMPLES - 1)


def test_cli_writes_a_model_for_another_window(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "m.onnx"
    window = 15_600
    assert lm.main([str(out), "--window-samples", str(window)]) == 0
    model = onnx.load(str(out))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata[META_WINDOW_SAMPLES] == str(window)
    waveform = np.random.default_rng(5).uniform(-0.5, 0.5, window).astype(np.float32)
    (embedding,) = _session(model).run(None, {MODEL_INPUT_NAME: waveform[None]})
    np.testing.assert_allclose(embedding[0], lm.embedding_numpy(waveform), atol=ATOL)


def test_cli_rejects_a_window_shorter_than_a_frame(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as excinfo:
        lm.main([str(tmp_path / "m.onnx"), "--window-samples", "100"])
    assert excinfo.value.code == 2
