"""Encoder runtime: contract checks, errors that name the file, thread options, bundled model."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.model.contract import (
    META_EMBEDDING_DIM,
    META_MODEL_NAME,
    META_MODEL_VERSION,
    META_SAMPLE_RATE,
    META_WINDOW_SAMPLES,
    ModelError,
    ModelInfo,
)
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import default_model_path, named_model_path, resolve_model
from edge_asd_dev import logmel_model as lm

WINDOW = lm.WINDOW_SAMPLES
TINY_WINDOW = 400


def _tiny_model(
    path: Path,
    *,
    input_name: str = "waveform",
    output_name: str = "embedding",
    input_shape: list[int | str] | None = None,
    output_dim: int | str = 2,
    metadata: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """A contract-shaped model: embedding = [mean, mean of squares] of the waveform."""
    props = {
        META_SAMPLE_RATE: str(SAMPLE_RATE_HZ),
        META_WINDOW_SAMPLES: str(TINY_WINDOW),
        META_EMBEDDING_DIM: "2",
        META_MODEL_NAME: "tiny",
        META_MODEL_VERSION: "0",
    }
    props.update(metadata or {})
    for key in drop:
        del props[key]
    shape = input_shape if input_shape is not None else ["batch", TINY_WINDOW]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["m"], axes=[-1], keepdims=1),
        helper.make_node("Mul", [input_name, input_name], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
        helper.make_node("Concat", ["m", "ms"], ["cat"], axis=-1),
        # The target shape is [-1, 2] plus a data-dependent zero, so that onnxruntime cannot
        # infer the output size and only the warm-up run can check it.
        helper.make_node("ReduceMin", ["m"], ["zero_f"], keepdims=0),
        helper.make_node("Mul", ["zero_f", "zero_scale"], ["zero_f0"]),
        helper.make_node("Cast", ["zero_f0"], ["zero_i"], to=TensorProto.INT64),
        helper.make_node("Add", ["flat", "zero_i"], ["shape"]),
        helper.make_node("Reshape", ["cat", "shape"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", output_dim])],
        initializer=[
            numpy_helper.from_array(np.array([-1, 2], dtype=np.int64), "flat"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero_scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, props)
    save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(named_model_path("logmel-stats"))


def _noise(seed: int, n: int = WINDOW, amplitude: float = 0.1) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _tone(hz: float, n: int = WINDOW, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE_HZ
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float((1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) / 2.0)


# --- the bundled default -------------------------------------------------------------------


def test_bundled_model_info(encoder: Encoder) -> None:
    path = named_model_path("logmel-stats")
    assert encoder.info == ModelInfo(
        path=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        name=lm.MODEL_NAME,
        version=lm.MODEL_VERSION,
        sample_rate=SAMPLE_RATE_HZ,
        window_samples=WINDOW,
        embedding_dim=lm.EMBEDDING_DIM,
    )
    assert encoder.window_samples == WINDOW
    assert encoder.embedding_dim == lm.EMBEDDING_DIM
    assert ModelInfo.from_dict(encoder.info.to_dict()) == encoder.info


def test_bundled_model_is_what_the_builder_makes_now(encoder: Encoder, tmp_path: Path) -> None:
    # Catches a committed model that is stale against logmel_model.py.
    rebuilt_path = tmp_path / "rebuilt.onnx"
    lm.save_model(rebuilt_path)
    rebuilt = Encoder(rebuilt_path)
    windows = np.stack([_noise(1), _tone(440.0), _noise(2) + _tone(3000.0), np.zeros(WINDOW)])
    np.testing.assert_allclose(encoder.embed(windows), rebuilt.embed(windows), atol=1e-6, rtol=0)
    for field in ("name", "version", "sample_rate", "window_samples", "embedding_dim"):
        assert getattr(rebuilt.info, field) == getattr(encoder.info, field)
    # Protobuf equality of the graphs: exact, and independent of how onnx serialises.
    assert onnx.load(str(named_model_path("logmel-stats"))).graph == lm.build_model().graph


def test_encoder_module_needs_neither_onnx_nor_torch() -> None:
    # onnx is a build-time dependency and torch is for pretraining only; the runtime has neither.
    code = (
        "import sys\n"
        "from edge_asd.model.encoder import Encoder\n"
        "from edge_asd.model.registry import default_model_path\n"
        "Encoder(default_model_path())\n"
        "print(sorted(m for m in ('onnx', 'torch') if m in sys.modules))\n"
    )
    repo_root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_embed_matches_the_numpy_reference(encoder: Encoder) -> None:
    window = _noise(3) + _tone(700.0)
    np.testing.assert_allclose(encoder.embed(window)[0], lm.embedding_numpy(window), atol=1e-4)


def test_embed_shapes_and_dtypes(encoder: Encoder) -> None:
    single = encoder.embed(_noise(4))
    assert single.shape == (1, lm.EMBEDDING_DIM)
    assert single.dtype == np.float32
    batch = np.stack([_noise(4), _noise(5), _tone(100.0)])
    out = encoder.embed(batch.astype(np.float64))  # float64 is converted, not rejected
    assert out.shape == (3, lm.EMBEDDING_DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], single[0], atol=1e-5)
    # A strided view is made contiguous before it reaches onnxruntime.
    strided = np.repeat(batch, 2, axis=0)[::2]
    np.testing.assert_allclose(encoder.embed(strided), out, atol=1e-5)
    assert encoder.embed(np.zeros((0, WINDOW), dtype=np.float32)).shape == (0, lm.EMBEDDING_DIM)


def test_embedding_is_deterministic(encoder: Encoder) -> None:
    window = _noise(6)
    first = encoder.embed(window)
    assert np.array_equal(first, encoder.embed(window))
    assert np.array_equal(first, Encoder(named_model_path("logmel-stats")).embed(window))


def test_distinct_sounds_give_distinct_embeddings(encoder: Encoder) -> None:
    noise_a, noise_b, tone = encoder.embed(np.stack([_noise(7), _noise(8), _tone(1000.0)]))
    same_kind = _cosine_distance(noise_a, noise_b)
    different_kind = _cosine_distance(noise_a, tone)
    assert different_kind > 10 * same_kind
    assert different_kind > 1e-3


@pytest.mark.parametrize(
    ("windows", "match"),
    [
        (np.zeros(WINDOW - 1, dtype=np.float32), "expects windows of shape"),
        (np.zeros((2, WINDOW + 1), dtype=np.float32), "expects windows of shape"),
        (np.zeros((1, 1, WINDOW), dtype=np.float32), "expects windows of shape"),
        (np.zeros(WINDOW, dtype=np.int16), "expects float audio"),
    ],
)
def test_embed_rejects_bad_windows(encoder: Encoder, windows: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encoder.embed(windows)


# --- session options -----------------------------------------------------------------------


def test_thread_and_spinning_options_are_applied(tmp_path: Path) -> None:
    encoder = Encoder(_tiny_model(tmp_path / "t.onnx"), intra_op_threads=2, inter_op_threads=1)
    options = encoder.session_options
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_default_threads_are_one(encoder: Encoder) -> None:
    assert encoder.session_options.intra_op_num_threads == 1
    assert encoder.session_options.inter_op_num_threads == 1


def test_thread_count_below_one_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Encoder(_tiny_model(tmp_path / "t.onnx"), intra_op_threads=0)


# --- errors --------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelError, match=r"not found.*nope\.onnx"):
        Encoder(missing)


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="directory"):
        Encoder(tmp_path)


@pytest.mark.parametrize("content", [b"", b"this is not a protobuf \x00\xff" * 10])
def test_garbage_bytes_name_the_path(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(content)
    with pytest.raises(ModelError, match=r"garbage\.onnx.*not a loadable ONNX model"):
        Encoder(bad)


def test_tiny_model_loads_and_computes(tmp_path: Path) -> None:
    # The fixture model is valid, so each error below is caused by the one thing changed.
    encoder = Encoder(_tiny_model(tmp_path / "ok.onnx"))
    window = np.full(TINY_WINDOW, 0.5, dtype=np.float32)
    np.testing.assert_allclose(encoder.embed(window), [[0.5, 0.25]], atol=1e-6)
    assert encoder.info.name == "tiny"


@pytest.mark.parametrize("key", [META_WINDOW_SAMPLES, META_MODEL_NAME, META_SAMPLE_RATE])
def test_missing_metadata_is_named(tmp_path: Path, key: str) -> None:
    path = _tiny_model(tmp_path / "m.onnx", drop=(key,))
    with pytest.raises(ModelError, match=rf"m\.onnx lacks the encoder-contract metadata {key}"):
        Encoder(path)


@pytest.mark.parametrize("value", ["abc", "0", "-400", "1.5"])
def test_non_integer_metadata_is_named(tmp_path: Path, value: str) -> None:
    path = _tiny_model(tmp_path / "m.onnx", metadata={META_WINDOW_SAMPLES: value})
    with pytest.raises(ModelError, match=rf"{META_WINDOW_SAMPLES} must be a positive integer"):
        Encoder(path)


def test_wrong_sample_rate(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "m.onnx", metadata={META_SAMPLE_RATE: "8000"})
    with pytest.raises(ModelError, match="expects 8000 Hz audio but the pipeline delivers 16000"):
        Encoder(path)


def test_window_different_from_config_says_both(tmp_path: Path) -> None:
    path = tmp_path / "short.onnx"
    lm.save_model(path, window_samples=15_600)
    with pytest.raises(ModelError) as excinfo:
        Encoder(path, expected_window_samples=16_000)
    message = str(excinfo.value)
    assert "short.onnx" in message
    assert "expects 15600-sample windows (0.975 s)" in message
    assert "config asks for 1.0 s = 16000 samples" in message
    assert Encoder(path, expected_window_samples=15_600).window_samples == 15_600


def test_wrong_input_name(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "m.onnx", input_name="audio")
    with pytest.raises(ModelError, match=r"needs an input named 'waveform', found 'audio'"):
        Encoder(path)


def test_wrong_output_name(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "m.onnx", output_name="features")
    with pytest.raises(ModelError, match=r"needs an output named 'embedding', found 'features'"):
        Encoder(path)


def test_wrong_input_rank(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "m.onnx", input_shape=["batch", 1, TINY_WINDOW])
    with pytest.raises(ModelError, match="must be tensor\\(float\\) of rank 2"):
        Encoder(path)


def test_input_shape_disagreeing_with_metadata(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "m.onnx", metadata={META_WINDOW_SAMPLES: "800"})
    with pytest.raises(ModelError, match=f"metadata {META_WINDOW_SAMPLES} says 800"):
        Encoder(path)


def test_output_size_disagreeing_with_metadata_is_caught_by_warm_up(tmp_path: Path) -> None:
    # The output's size is symbolic, so only running the graph can tell.
    path = _tiny_model(tmp_path / "m.onnx", output_dim="d", metadata={META_EMBEDDING_DIM: "3"})
    with pytest.raises(ModelError, match=r"shape \(1, 2\).*says \(1, 3\)"):
        Encoder(path)


# --- model names ---------------------------------------------------------------------------


def test_named_models() -> None:
    assert named_model_path("default") == default_model_path()
    assert named_model_path("yamnet-denoise") == default_model_path()
    assert named_model_path("logmel-stats").is_file()
    assert named_model_path("yamnet-port").is_file()
    assert default_model_path().is_file()
    with pytest.raises(
        ModelError,
        match=r"unknown bundled model 'nope'.*default, logmel-stats, yamnet-denoise, "
        r"yamnet-port, yamnet-retain",
    ):
        named_model_path("nope")


def test_resolve_model(tmp_path: Path) -> None:
    assert resolve_model(None) == default_model_path()
    assert resolve_model("default") == default_model_path()
    assert resolve_model("logmel-stats") == named_model_path("logmel-stats")
    user_model = tmp_path / "student.onnx"
    assert resolve_model(str(user_model)) == user_model
    with pytest.raises(ModelError, match=r"neither a file nor a bundled model.*logmel-stats"):
        resolve_model("logmel_stats")


def test_static_output_size_disagreeing_with_metadata(tmp_path: Path) -> None:
    model = lm.build_model()
    helper.set_model_props(
        model,
        {prop.key: prop.value for prop in model.metadata_props} | {META_EMBEDDING_DIM: "64"},
    )
    path = tmp_path / "m.onnx"
    save_model(model, str(path))
    with pytest.raises(ModelError, match=f"output 'embedding'.*{META_EMBEDDING_DIM} says 64"):
        Encoder(path)


@pytest.mark.parametrize("name", ["yamnet-port", "yamnet-denoise", "yamnet-retain"])
def test_bundled_yamnet_models_meet_the_contract(name: str) -> None:
    encoder = Encoder(named_model_path(name))
    assert encoder.info.name == name
    assert encoder.info.embedding_dim == 512
    assert encoder.info.window_samples == WINDOW
    out = encoder.embed(np.stack([_noise(1), _tone(440.0)]))
    assert out.shape == (2, encoder.info.embedding_dim) and np.isfinite(out).all()
    assert _cosine_distance(out[0], out[1]) > 1e-3
