"""Export of a student to the ONNX encoder contract, int8 quantisation, parity checks.

Tiny randomly initialised YAMNet-shaped ports and generated audio keep this fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edge_asd.model.contract import (  # noqa: E402
    META_EMBEDDING_DIM,
    META_MODEL_NAME,
    META_MODEL_VERSION,
    META_SAMPLE_RATE,
    META_WINDOW_SAMPLES,
    MODEL_INPUT_NAME,
    MODEL_OUTPUT_NAME,
)
from edge_asd.pretrain.export import (  # noqa: E402
    ExportError,
    ParityError,
    export_int8,
    export_onnx,
    front_end_nodes,
    parity_report,
    quantize_int8,
    read_metadata,
    windows_from_signals,
)
from edge_asd.pretrain.yamnet import YamnetConfig, YamnetPort  # noqa: E402

torch.set_num_threads(1)

WINDOW = 16_000
TINY = YamnetConfig(
    first_channels=8, blocks=((16, 1), (16, 2), (32, 2)), num_classes=7, mel_bands=16
)


def tiny_port(seed: int, **kwargs) -> YamnetPort:
    torch.manual_seed(seed)
    return YamnetPort(TINY, **kwargs).eval()


def machine_like_audio(seconds: float, seed: int) -> np.ndarray:
    """Harmonics of a rotating machine + broadband noise, 16 kHz, peak well below 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    f0 = rng.uniform(80, 300)
    x = sum(rng.uniform(0.02, 0.1) * np.sin(2 * np.pi * f0 * h * t) for h in range(1, 6))
    x = x + rng.uniform(0.005, 0.05) * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return windows_from_signals([machine_like_audio(3.0, s) for s in range(8)], WINDOW, 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, windows: np.ndarray) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("export")
    fp32 = export_onnx(tiny_port(0), out / "tiny-fp32.onnx", name="tiny", version="0.0.1")
    int8 = quantize_int8(fp32, out / "tiny-int8.onnx", windows[::2])
    return fp32, int8


def test_fp32_export_meets_the_encoder_contract(exported, windows) -> None:
    fp32, _ = exported
    meta = read_metadata(fp32)
    assert meta[META_SAMPLE_RATE] == "16000"
    assert meta[META_WINDOW_SAMPLES] == str(WINDOW)
    assert meta[META_EMBEDDING_DIM] == "32"
    assert (meta[META_MODEL_NAME], meta[META_MODEL_VERSION]) == ("tiny", "0.0.1")

    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == MODEL_INPUT_NAME and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1] == WINDOW
    assert out.name == MODEL_OUTPUT_NAME and out.shape[1] == 32
    batch = windows[:3]
    got = session.run([MODEL_OUTPUT_NAME], {MODEL_INPUT_NAME: batch})[0]
    with torch.no_grad():
        expected = tiny_port(0)(torch.from_numpy(batch)).embedding.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    model = onnx.load(str(fp32))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"STFT", "DFT"}  # the front end is one Conv, not the slow STFT op
    assert "Pad" not in ops  # TF-SAME pads are folded into the convolutions
    conv_pads = [
        list(onnx.helper.get_attribute_value(a))
        for n in model.graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "pads"
    ]
    assert [0, 0, 1, 1] in conv_pads  # stride 2 on an even size: nothing before, 1 after
    assert front_end_nodes(model) and "Log" in ops


def test_encoder_runtime_loads_the_export(exported, windows) -> None:
    encoder_module = pytest.importorskip("edge_asd.model.encoder")
    for path in exported:
        encoder = encoder_module.Encoder(path)
        assert encoder.info.window_samples == WINDOW and encoder.info.embedding_dim == 32
        assert encoder.embed(windows[:2]).shape == (2, 32)


def test_truncated_student_exports_without_later_blocks(tmp_path: Path) -> None:
    full = export_onnx(tiny_port(0), tmp_path / "full.onnx", name="t", version="1")
    short = export_onnx(
        tiny_port(0, embedding_layer=2), tmp_path / "short.onnx", name="t", version="1"
    )
    assert read_metadata(short)[META_EMBEDDING_DIM] == "16"
    sizes = {
        p.name: sum(np.prod(t.dims) for t in onnx.load(str(p)).graph.initializer)
        for p in (full, short)
    }
    # the later blocks and the classifier (32 * 7 + 7 weights alone) are gone
    assert sizes["short.onnx"] < sizes["full.onnx"] - 32 * 7


def test_export_rejects_a_window_shorter_than_the_student(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="shorter"):
        export_onnx(tiny_port(0), tmp_path / "x.onnx", name="t", version="1", window_samples=8000)


def test_int8_quantisation_keeps_front_end_float_and_metadata(exported, windows) -> None:
    fp32, int8 = exported
    contract = (
        META_SAMPLE_RATE,
        META_WINDOW_SAMPLES,
        META_EMBEDDING_DIM,
        META_MODEL_NAME,
        META_MODEL_VERSION,
    )
    assert {k: read_metadata(int8)[k] for k in contract} == {
        k: read_metadata(fp32)[k] for k in contract
    }
    model = onnx.load(str(int8))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    quantized_inputs = {
        o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    front = [n for n in model.graph.node if "/front_end/" in n.name]
    assert front and all(not set(n.input) & quantized_inputs for n in front)
    report = parity_report(fp32, int8, windows[1::2], min_cosine=0.9, measure_speed=False)
    assert report["windows"] == len(windows[1::2])
    assert 0.9 <= report["cosine_min"] <= report["cosine_p5"] <= report["cosine_median"] <= 1.0
    assert report["int8_size_mb"] > 0 and report["fp32_size_mb"] > 0
    # the body's conv weights are stored as int8 (the tiny model's float front end dominates
    # its size, so the file is not smaller here; YAMNet's is)
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)


def test_wide_activation_scopes_get_16_bit(tmp_path: Path, exported, windows) -> None:
    fp32, _ = exported
    wide = quantize_int8(
        fp32, tmp_path / "wide.onnx", windows[::2], wide_activation_scopes=("/layers.3/",)
    )
    model = onnx.load(str(wide))
    zero_point_types = {
        t.name: t.data_type for t in model.graph.initializer if "zero_point" in t.name
    }
    assert onnx.TensorProto.UINT16 in zero_point_types.values()
    assert onnx.TensorProto.UINT8 in zero_point_types.values()


def test_parity_below_the_bound_raises(tmp_path: Path, exported, windows) -> None:
    fp32, int8 = exported
    with pytest.raises(ParityError, match="cosine median") as caught:
        parity_report(fp32, int8, windows[:4], min_cosine=1.01, measure_speed=False)
    assert caught.value.report["cosine_median"] <= 1.0
    # An "int8" file that is a different network: the embeddings disagree.
    other = export_onnx(tiny_port(99), tmp_path / "other.onnx", name="tiny", version="0.0.1")
    with pytest.raises(ParityError):
        parity_report(fp32, other, windows[:4], measure_speed=False)


def test_export_int8_pipeline_writes_report(tmp_path: Path, windows) -> None:
    result = export_int8(
        tiny_port(1),
        tmp_path,
        name="tiny",
        version="2",
        calibration_windows=windows[::2],
        parity_windows=windows[1::2],
        min_cosine=0.9,
    )
    assert result.int8_path.exists() and result.fp32_path.exists()
    assert (tmp_path / "tiny-parity.json").exists()
    assert result.report["fp32_ms_p50"] > 0 and result.report["int8_ms_p50"] > 0


def test_calibration_windows_must_match_the_window(tmp_path: Path, exported) -> None:
    fp32, _ = exported
    with pytest.raises(ExportError, match="calibration windows"):
        quantize_int8(fp32, tmp_path / "bad.onnx", np.zeros((2, WINDOW // 2), np.float32))


class CropWrapper(torch.nn.Module):
    """A student wrapping the port (as the training code's centre crop does)."""

    def __init__(self, inner: YamnetPort) -> None:
        super().__init__()
        self.inner = inner
        self.embedding_dim = inner.embedding_dim
        self.num_classes = inner.num_classes
        self.window_samples = WINDOW

    def forward(self, waveform):
        start = (waveform.shape[1] - self.inner.window_samples) // 2
        return self.inner(waveform[:, start : start + self.inner.window_samples])


def test_int8_hooks_of_a_wrapped_port_are_used_on_a_copy(tmp_path: Path, windows) -> None:
    port = tiny_port(2)
    student = CropWrapper(port)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = export_int8(
        student,
        tmp_path,
        name="wrapped",
        version="1",
        calibration_windows=windows[::2],
        parity_windows=windows[1::2],
        min_cosine=0.9,
    )
    assert result.report["wide_activation_scopes"] == list(port.int8_sensitive_scopes())
    assert result.report["float_scopes"] == ["/layers.0/"]
    for key, value in student.state_dict().items():  # equalisation happened on a copy
        assert torch.equal(value, before[key])
    session = ort.InferenceSession(str(result.fp32_path), providers=["CPUExecutionProvider"])
    got = session.run([MODEL_OUTPUT_NAME], {MODEL_INPUT_NAME: windows[:2]})[0]
    with torch.no_grad():
        expected = student(torch.from_numpy(windows[:2])).embedding.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
