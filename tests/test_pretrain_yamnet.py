"""The YAMNet port: weight extraction from a TFLite-like graph, TF-SAME convs, front end, shapes.

Everything runs on graphs, weights and audio the tests make; nothing is read from disk.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_asd.pretrain.student import Student, count_parameters  # noqa: E402
from edge_asd.pretrain.tflite_weights import (  # noqa: E402
    OpRecord,
    TensorRecord,
    TfliteWeightsError,
    dequantize,
    extract_yamnet_weights,
)
from edge_asd.pretrain.yamnet import (  # noqa: E402
    TEACHER_WINDOW_SAMPLES,
    LogMelFrontEnd,
    TfConv2d,
    YamnetConfig,
    YamnetPort,
    config_from_weights,
    default_front_end,
    fake_quantize_dynamic,
    hann_window,
    tf_same_padding,
)

torch.set_num_threads(1)

# A tiny port: YAMNet's front-end geometry, few and narrow layers.
TINY = YamnetConfig(first_channels=4, blocks=((8, 1), (8, 2), (16, 2)), num_classes=5, mel_bands=8)
FRAME, HOP, FFT = TINY.frame_samples, TINY.hop_samples, TINY.fft_length
PATCH = 96
SUB = 80  # the file's reshape of the waveform into rows of 80 samples


def tf_same_conv_numpy(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, depthwise: bool
) -> np.ndarray:
    """Reference NCHW conv with TensorFlow SAME padding, by explicit loops over the output."""
    _, _, h, wd = x.shape
    k = w.shape[2]
    out_h, out_w = -(-h // stride), -(-wd // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - wd, 0)
    xp = np.pad(
        x, ((0, 0), (0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    )
    y = np.zeros((x.shape[0], w.shape[0], out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            if depthwise:
                y[:, :, i, j] = np.einsum("bchw,chw->bc", patch, w[:, 0])
            else:
                y[:, :, i, j] = np.einsum("bchw,ochw->bo", patch, w)
    return y + b[None, :, None, None]


def log_mel_numpy(x: np.ndarray, bands: int, pad_left: int | None = None) -> np.ndarray:
    """YAMNet's log-mel with exact DFT: Hann frames placed in the FFT, |rfft|, mel, log."""
    fe = default_front_end(YamnetConfig(mel_bands=bands))
    pad_left = fe.fft_pad_left if pad_left is None else pad_left
    n = 1 + (x.size - FRAME) // HOP
    frames = np.stack([x[i * HOP : i * HOP + FRAME] for i in range(n)]) * hann_window(FRAME)
    padded = np.zeros((n, FFT))
    padded[:, pad_left : pad_left + FRAME] = frames
    magnitude = np.abs(np.fft.rfft(padded, axis=1))
    return np.log(magnitude @ fe.mel.T.astype(np.float64) + fe.log_offset)


# --- a synthetic TFLite-like graph --------------------------------------------------------------


class GraphBuilder:
    """Collects TensorRecords and OpRecords in the layout the YAMNet file uses."""

    def __init__(self) -> None:
        self.tensors: list[TensorRecord] = []
        self.ops: list[OpRecord] = []

    def tensor(
        self,
        name: str,
        data: np.ndarray | None = None,
        shape: tuple[int, ...] = (),
        scales: np.ndarray | None = None,
        qdim: int = 0,
    ) -> int:
        self.tensors.append(
            TensorRecord(
                name=name,
                shape=tuple(data.shape) if data is not None else shape,
                dtype=str(data.dtype) if data is not None else "float32",
                data=data,
                scales=scales,
                zero_points=None if scales is None else np.zeros(scales.size, np.int64),
                quantized_dim=qdim,
            )
        )
        return len(self.tensors) - 1

    def act(self, name: str) -> int:
        return self.tensor(name)

    def op(self, kind: str, inputs: list[int], options: dict | None = None, name: str = "") -> int:
        out = self.act(name or f"{kind}_{len(self.ops)}")
        self.ops.append(OpRecord(kind, tuple(inputs), (out,), options or {}))
        return out


def quantize_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and per-channel scales along `axis`."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    scales = np.max(np.abs(w), axis=other) / 127.0
    scales = np.where(scales > 0, scales, 1.0)  # an all-zero row (the DFT's sin at DC)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.round(w / scales.reshape(shape)).astype(np.int8)
    return q, scales.astype(np.float32)


def build_tiny_graph(rng: np.random.Generator, *, padding: str = "SAME"):
    """A graph shaped like yamnet.tflite for the TINY config; returns (builder, float weights)."""
    g = GraphBuilder()
    fe = default_front_end(TINY)
    x = g.act("input_1")
    rows = g.op("RESHAPE", [x, g.tensor("rows_shape", np.array([15600 // SUB, SUB], np.int32))])
    starts = np.arange(PATCH) * (HOP // SUB)
    idx = (starts[:, None] + np.arange(FRAME // SUB)[None]).astype(np.int32)
    frames = g.op("GATHER", [rows, g.tensor("gather_idx", idx)])
    frames = g.op("RESHAPE", [frames, g.tensor("frames_shape", np.array([PATCH, FRAME], np.int32))])
    windowed = g.op("MUL", [frames, g.tensor("window", fe.window[None].copy())])
    pads = np.array([[0, 0], [fe.fft_pad_left, FFT - FRAME - fe.fft_pad_left]], np.int32)
    padded = g.op("PAD", [windowed, g.tensor("paddings", pads)])
    q_re, s_re = quantize_per_channel(fe.dft_real, 0)
    q_im, s_im = quantize_per_channel(fe.dft_imag, 0)
    re = g.op("FULLY_CONNECTED", [padded, g.tensor("dft_re", q_re, scales=s_re)])
    im = g.op("FULLY_CONNECTED", [padded, g.tensor("dft_im", q_im, scales=s_im)])
    mag = g.op("SQRT", [g.op("ADD", [g.op("MUL", [re, re]), g.op("MUL", [im, im])])])
    mel_bias = np.full(TINY.mel_bands, 0.001, np.float32)
    mel = g.op(
        "FULLY_CONNECTED", [mag, g.tensor("mel", fe.mel.copy()), g.tensor("mel_b", mel_bias)]
    )
    h = g.op("LOG", [mel])

    convs: list[tuple[str, np.ndarray, np.ndarray, int]] = []  # kind, torch weight, bias, stride
    conv_opts = {"padding": padding, "activation": "RELU", "dilation_h": 1, "dilation_w": 1}

    def conv(h: int, w_tflite: np.ndarray, stride: int, *, int8: bool, direct: bool) -> int:
        kind = "CONV_2D"
        bias = rng.standard_normal(w_tflite.shape[0]).astype(np.float32) * 0.1
        if int8:
            q, scales = quantize_per_channel(w_tflite, 0)
            w_real = q.astype(np.float32) * scales[:, None, None, None]
            wt = g.tensor("w", q, scales=scales)
            if not direct:
                wt = g.op("DEQUANTIZE", [wt])
        else:
            w_real = w_tflite
            wt = g.tensor("w", w_tflite)
        convs.append(("conv", w_real.transpose(0, 3, 1, 2), bias, stride))
        opts = dict(conv_opts, stride_h=stride, stride_w=stride)
        return g.op(kind, [h, wt, g.tensor("b", bias)], opts)

    def depthwise(h: int, channels: int, stride: int) -> int:
        w = rng.standard_normal((1, 3, 3, channels)).astype(np.float32) * 0.3
        q, scales = quantize_per_channel(w, 3)
        w_real = q.astype(np.float32) * scales[None, None, None, :]
        bias = rng.standard_normal(channels).astype(np.float32) * 0.1
        wt = g.op("DEQUANTIZE", [g.tensor("dw", q, scales=scales, qdim=3)])
        convs.append(("depthwise", w_real.transpose(3, 0, 1, 2), bias, stride))
        opts = dict(conv_opts, stride_h=stride, stride_w=stride, depth_multiplier=1)
        return g.op("DEPTHWISE_CONV_2D", [h, wt, g.tensor("dwb", bias)], opts)

    h = conv(
        h, rng.standard_normal((4, 3, 3, 1)).astype(np.float32) * 0.3, 2, int8=False, direct=True
    )
    channels = 4
    for out, stride in TINY.blocks:
        h = depthwise(h, channels, stride)
        h = conv(
            h,
            rng.standard_normal((out, 1, 1, channels)).astype(np.float32) * 0.3,
            1,
            int8=True,
            direct=True,
        )
        channels = out
    pooled = g.op("MEAN", [h, g.tensor("axes", np.array([1, 2], np.int32))], name="embedding")
    fc_w = rng.standard_normal((TINY.num_classes, channels)).astype(np.float32)
    q, s = quantize_per_channel(fc_w, 0)
    fc_b = rng.standard_normal(TINY.num_classes).astype(np.float32)
    g.op(
        "LOGISTIC",
        [g.op("FULLY_CONNECTED", [pooled, g.tensor("fc", q, scales=s), g.tensor("fc_b", fc_b)])],
    )
    classifier = (q.astype(np.float32) * s[:, None], fc_b)
    return g, fe, convs, classifier


# --- tests --------------------------------------------------------------------------------------


def test_dequantize_per_tensor_and_per_channel_with_zero_point() -> None:
    q = np.array([[-128, 0, 127], [10, -10, 5]], np.int8)
    per_tensor = TensorRecord("t", q.shape, "int8", q, np.array([0.5], np.float32), np.array([2]))
    np.testing.assert_allclose(dequantize(per_tensor), 0.5 * (q.astype(np.float32) - 2))
    scales = np.array([0.1, 0.2, 0.3], np.float32)
    per_channel = TensorRecord("t", q.shape, "int8", q, scales, np.array([0, 1, -1]), 1)
    expected = scales[None] * (q.astype(np.float32) - np.array([0, 1, -1])[None])
    np.testing.assert_allclose(dequantize(per_channel), expected, rtol=1e-6)
    bad = TensorRecord("w", q.shape, "int8", q, np.ones(4, np.float32), None, 1)
    with pytest.raises(TfliteWeightsError, match="'w'"):
        dequantize(bad)


def test_extract_weights_from_synthetic_graph_and_map_onto_port() -> None:
    rng = np.random.default_rng(0)
    g, fe, convs, classifier = build_tiny_graph(rng)
    weights = extract_yamnet_weights(g.ops, g.tensors)

    got = weights.front_end
    assert (got.frame_samples, got.hop_samples, got.fft_length) == (FRAME, HOP, FFT)
    assert got.fft_pad_left == fe.fft_pad_left and got.patch_frames == PATCH
    assert got.log_offset == pytest.approx(0.001)
    np.testing.assert_allclose(got.window, fe.window)
    np.testing.assert_allclose(got.dft_real, fe.dft_real, atol=1.0 / 127)
    assert got.dft_quantized and not got.mel_quantized
    assert weights.embedding_tensor == "embedding"

    assert len(weights.convs) == len(convs)
    for layer, (kind, w, b, stride) in zip(weights.convs, convs, strict=True):
        assert layer.kind == kind and layer.stride == stride
        np.testing.assert_allclose(layer.weight, w, rtol=1e-6)
        np.testing.assert_allclose(layer.bias, b)
    assert [c.quantized for c in weights.convs] == [False] + [False, True] * len(TINY.blocks)
    assert config_from_weights(weights) == TINY

    port = YamnetPort.from_weights(weights)
    np.testing.assert_allclose(port.classifier.weight.detach().numpy(), classifier[0], rtol=1e-6)
    for dst, (_, w, b, _) in zip(port.convs(), convs, strict=True):
        np.testing.assert_allclose(dst.conv.weight.detach().numpy(), w, rtol=1e-6)
        np.testing.assert_allclose(dst.conv.bias.detach().numpy(), b)

    # The first conv of the port against a numpy TF-SAME conv on the port's own log-mel.
    wave = torch.from_numpy(rng.uniform(-0.5, 0.5, (2, TEACHER_WINDOW_SAMPLES)).astype(np.float32))
    with torch.no_grad():
        mel = port.log_mel(wave).unsqueeze(1)
        first = port.layers[0](mel).numpy()
    _, w, b, stride = convs[0]
    ref = np.maximum(tf_same_conv_numpy(mel.numpy().astype(np.float64), w, b, stride, False), 0)
    np.testing.assert_allclose(first, ref, rtol=1e-4, atol=1e-4)


def test_mapping_mismatches_fail_loudly() -> None:
    rng = np.random.default_rng(1)
    g, *_ = build_tiny_graph(rng)
    weights = extract_yamnet_weights(g.ops, g.tensors)
    wider = YamnetConfig(
        first_channels=4, blocks=((8, 1), (8, 2), (32, 2)), num_classes=5, mel_bands=8
    )
    with pytest.raises(TfliteWeightsError, match="weight shape"):
        YamnetPort(wider, front_end=weights.front_end).load_yamnet_weights(weights)
    other_stride = YamnetConfig(
        first_channels=4, blocks=((8, 2), (8, 2), (16, 2)), num_classes=5, mel_bands=8
    )
    with pytest.raises(TfliteWeightsError, match="stride"):
        YamnetPort(other_stride, front_end=weights.front_end).load_yamnet_weights(weights)
    fewer = YamnetConfig(first_channels=4, blocks=((8, 1), (8, 2)), num_classes=5, mel_bands=8)
    with pytest.raises(TfliteWeightsError, match="convolutions"):
        YamnetPort(fewer, front_end=weights.front_end).load_yamnet_weights(weights)

    g_valid, *_ = build_tiny_graph(rng, padding="VALID")
    with pytest.raises(TfliteWeightsError, match="padding VALID"):
        YamnetPort.from_weights(extract_yamnet_weights(g_valid.ops, g_valid.tensors))

    g_gather, *_ = build_tiny_graph(rng)
    gather = next(op for op in g_gather.ops if op.kind == "GATHER")
    idx_record = g_gather.tensors[gather.inputs[1]]
    shuffled = idx_record.data.copy()
    shuffled[:, [0, 1]] = shuffled[:, [1, 0]]
    g_gather.tensors[gather.inputs[1]] = TensorRecord(
        idx_record.name, idx_record.shape, "int32", shuffled
    )
    with pytest.raises(TfliteWeightsError, match="contiguous"):
        extract_yamnet_weights(g_gather.ops, g_gather.tensors)


@pytest.mark.parametrize(
    ("size", "stride", "expected"),
    [(96, 2, (0, 1)), (49, 2, (1, 1)), (48, 1, (1, 1)), (7, 2, (1, 1)), (8, 2, (0, 1))],
)
def test_tf_same_padding_is_asymmetric_like_tensorflow(size, stride, expected) -> None:
    assert tf_same_padding(size, 3, stride) == expected


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("shape", [(10, 8), (9, 7), (12, 5)])
def test_tf_conv_matches_numpy_same_conv(depthwise: bool, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    channels = 3
    conv = TfConv2d(
        channels,
        channels if depthwise else 5,
        kernel=3,
        stride=2,
        depthwise=depthwise,
        activation="NONE",
    )
    x = rng.standard_normal((2, channels, *shape))
    with torch.no_grad():
        y = conv(torch.from_numpy(x.astype(np.float32))).numpy()
    ref = tf_same_conv_numpy(
        x,
        conv.conv.weight.detach().numpy().astype(np.float64),
        conv.conv.bias.detach().numpy(),
        2,
        depthwise,
    )
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_front_end_matches_numpy_reference_on_generated_audio() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(16_000) / 16_000
    x = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * rng.standard_normal(t.size)
    x[4000:5000] = 0.0  # a silent stretch: the log offset decides those frames
    config = YamnetConfig()
    centred = default_front_end(config)
    shifted = dataclasses.replace(centred, fft_pad_left=0)  # not symmetric: no folding
    for constants, folded in ((centred, True), (shifted, False)):
        ref = log_mel_numpy(x, 64, constants.fft_pad_left)
        for trim in (True, False):
            fe = LogMelFrontEnd(constants, trim_unused_bins=trim)
            assert fe.folded is folded
            with torch.no_grad():
                got = fe(torch.from_numpy(x[None].astype(np.float32)))[0].numpy()
            assert got.shape == (98, 64)
            np.testing.assert_allclose(got, ref, atol=2e-3)
    assert LogMelFrontEnd(centred).bins < config.fft_length // 2 + 1


@pytest.mark.parametrize("first_tap", [0.0, 0.1])
def test_folded_front_end_equals_the_plain_dft_on_any_length(first_tap: float) -> None:
    constants = default_front_end(YamnetConfig())
    # a symmetric window whose first tap (no partner inside the frame) is not zero
    window = constants.window + np.float32(first_tap)
    fe = LogMelFrontEnd(dataclasses.replace(constants, window=window))
    assert fe.folded and fe.lone_sample == (first_tap != 0.0)
    x = torch.randn(2, 17_003) * 0.2
    with torch.no_grad():
        folded = fe(x)
        fe.folded = False
        plain = fe(x)
    assert folded.shape == plain.shape == (2, fe.num_frames(17_003), 64)
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("samples", "frames"), [(TEACHER_WINDOW_SAMPLES, 96), (16_000, 98), (20_123, 124)]
)
def test_any_length_input_works(samples: int, frames: int) -> None:
    port = YamnetPort(TINY).eval()
    assert port.front_end.num_frames(samples) == frames
    with torch.no_grad():
        out = port(torch.zeros(3, samples))
    assert out.embedding.shape == (3, 16)
    assert out.logits is not None and out.logits.shape == (3, TINY.num_classes)
    assert out.layers is not None and [t.shape[1] for t in out.layers] == [4, 8, 8, 16]
    assert torch.isfinite(out.embedding).all()
    with pytest.raises(ValueError, match="samples"):
        port(torch.zeros(1, TEACHER_WINDOW_SAMPLES - 1))


def test_embedding_layer_selection_and_truncation() -> None:
    torch.manual_seed(0)
    port = YamnetPort(TINY, embedding_layer=3).eval()
    assert isinstance(port, Student)
    assert port.embedding_dim == 8 and port.num_classes == TINY.num_classes
    x = torch.randn(2, 16_000) * 0.1
    with torch.no_grad():
        short = port(x)
        port.truncate = False
        full = port(x)
    assert short.logits is None and len(short.layers) == 3
    assert full.logits is not None and len(full.layers) == TINY.num_layers
    torch.testing.assert_close(short.embedding, full.layers[2])
    torch.testing.assert_close(full.embedding, full.layers[2])
    with pytest.raises(ValueError, match="embedding_layer"):
        YamnetPort(TINY, embedding_layer=TINY.num_layers + 1)
    assert count_parameters(port) > count_parameters(port.classifier) > 0


def test_fake_quantize_dynamic_matches_int8_grid_and_passes_gradients() -> None:
    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    asym = fake_quantize_dynamic(x, (1,), "xnnpack")
    scale = 4.0 / 255
    zero = round(-128 + 1.0 / scale)
    expected = (np.clip(np.round(x.detach().numpy()[0] / scale) + zero, -128, 127) - zero) * scale
    np.testing.assert_allclose(asym[0].detach().numpy(), expected, rtol=1e-6)
    assert torch.equal(asym[1], x[1])  # an all-zero row stays exactly zero
    sym = fake_quantize_dynamic(x, (0, 1), "builtin")
    np.testing.assert_allclose(
        sym.detach().numpy(), np.round(x.detach().numpy() / (3 / 127)) * (3 / 127), rtol=1e-6
    )
    (asym.sum() + sym.sum()).backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


def test_hybrid_emulation_changes_little_and_only_where_flagged() -> None:
    rng = np.random.default_rng(4)
    g, *_ = build_tiny_graph(rng)
    weights = extract_yamnet_weights(g.ops, g.tensors)
    plain = YamnetPort.from_weights(weights).eval()
    emulated = YamnetPort.from_weights(weights, tflite_hybrid="xnnpack").eval()
    assert [c.hybrid for c in emulated.convs()] == ["none"] + ["none", "xnnpack"] * 3
    x = torch.from_numpy(rng.uniform(-0.5, 0.5, (2, 16_000)).astype(np.float32))
    with torch.no_grad():
        a, b = plain(x).embedding, emulated(x).embedding
    assert not torch.equal(a, b)
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert (cos > 0.99).all()


def test_equalization_keeps_every_output_and_narrows_channel_ranges() -> None:
    torch.manual_seed(5)
    port = YamnetPort(TINY).eval()
    with torch.no_grad():  # make the channel ranges very uneven, as in YAMNet's last layers
        port.convs()[-2].conv.weight.mul_(torch.logspace(-2, 1, 8).view(-1, 1, 1, 1))
    x = torch.randn(4, 16_000) * 0.1
    with torch.no_grad():
        before = port(x)
    prepared = port.prepare_int8_export(x)
    stats = prepared.equalize_activation_ranges(x)  # a second pass: already even
    with torch.no_grad():
        after = prepared(x)
        again = port(x)
    assert stats["spread_after"] <= stats["spread_before"]
    torch.testing.assert_close(after.embedding, before.embedding, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(after.layers, before.layers, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again.embedding, before.embedding)  # the original is untouched
    assert not any(k.endswith("_scale") for k in prepared.state_dict())  # never checkpointed
    relu6 = YamnetPort(
        YamnetConfig(
            first_channels=4, blocks=((8, 1),), num_classes=2, mel_bands=8, activation="RELU6"
        )
    )
    with pytest.raises(ValueError, match="ReLU6"):
        relu6.equalize_activation_ranges(x)


def test_int8_sensitive_scopes_cover_the_last_layers_only_for_the_final_embedding() -> None:
    assert YamnetPort(TINY).int8_sensitive_scopes() == ("/layers.1/", "/layers.2/", "/layers.3/")
    assert YamnetPort(TINY, embedding_layer=3).int8_sensitive_scopes() == ()


# --- the flatbuffer reader, on a small .tflite file the test writes ------------------------------


def write_tiny_tflite(path) -> dict:
    """A 3-op TFLite file (CONV_2D, DEQUANTIZE + DEPTHWISE_CONV_2D, FULLY_CONNECTED)."""
    tflite = pytest.importorskip("tflite")
    flatbuffers = pytest.importorskip("flatbuffers")
    rng = np.random.default_rng(6)
    b = flatbuffers.Builder(4096)
    conv_w = rng.standard_normal((4, 3, 3, 1)).astype(np.float32)
    dw_q = rng.integers(-127, 128, (1, 3, 3, 4)).astype(np.int8)
    dw_scales = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    fc_q = rng.integers(-127, 128, (5, 4)).astype(np.int8)
    fc_scale = np.array([0.05], np.float32)
    # (name, shape, type, data, scales, zero points, quantised dim)
    specs = [
        ("input", (1, 8, 8, 1), tflite.TensorType.FLOAT32, None, None, None, 0),
        ("conv_w", conv_w.shape, tflite.TensorType.FLOAT32, conv_w, None, None, 0),
        ("conv_out", (1, 4, 4, 4), tflite.TensorType.FLOAT32, None, None, None, 0),
        ("dw_q", dw_q.shape, tflite.TensorType.INT8, dw_q, dw_scales, np.zeros(4, np.int64), 3),
        ("dw_w", dw_q.shape, tflite.TensorType.FLOAT32, None, None, None, 0),
        ("dw_out", (1, 4, 4, 4), tflite.TensorType.FLOAT32, None, None, None, 0),
        ("fc_w", fc_q.shape, tflite.TensorType.INT8, fc_q, fc_scale, np.array([3]), 0),
        ("fc_out", (1, 5), tflite.TensorType.FLOAT32, None, None, None, 0),
    ]
    buffers = []
    tflite.BufferStart(b)
    buffers.append(tflite.BufferEnd(b))  # buffer 0: empty, by convention
    tensors = []
    for name, shape, ttype, data, scales, zeros, qdim in specs:
        buffer_index = 0
        if data is not None:
            vec = b.CreateNumpyVector(np.frombuffer(data.tobytes(), np.uint8))
            tflite.BufferStart(b)
            tflite.BufferAddData(b, vec)
            buffers.append(tflite.BufferEnd(b))
            buffer_index = len(buffers) - 1
        quant = None
        if scales is not None:
            scale_vec = b.CreateNumpyVector(scales)
            zero_vec = b.CreateNumpyVector(zeros.astype(np.int64))
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scale_vec)
            tflite.QuantizationParametersAddZeroPoint(b, zero_vec)
            tflite.QuantizationParametersAddQuantizedDimension(b, qdim)
            quant = tflite.QuantizationParametersEnd(b)
        name_off = b.CreateString(name)
        shape_vec = b.CreateNumpyVector(np.array(shape, np.int32))
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape_vec)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, buffer_index)
        tflite.TensorAddName(b, name_off)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        tensors.append(tflite.TensorEnd(b))

    def options_conv(cls_prefix: str, stride: int, extra: dict) -> int:
        getattr(tflite, f"{cls_prefix}Start")(b)
        getattr(tflite, f"{cls_prefix}AddPadding")(b, tflite.Padding.SAME)
        getattr(tflite, f"{cls_prefix}AddStrideH")(b, stride)
        getattr(tflite, f"{cls_prefix}AddStrideW")(b, stride)
        getattr(tflite, f"{cls_prefix}AddFusedActivationFunction")(
            b, tflite.ActivationFunctionType.RELU
        )
        for key, value in extra.items():
            getattr(tflite, f"{cls_prefix}Add{key}")(b, value)
        return getattr(tflite, f"{cls_prefix}End")(b)

    conv_opts = options_conv("Conv2DOptions", 2, {})
    dw_opts = options_conv("DepthwiseConv2DOptions", 1, {"DepthMultiplier": 1})
    tflite.FullyConnectedOptionsStart(b)
    fc_opts = tflite.FullyConnectedOptionsEnd(b)
    codes_spec = [
        tflite.BuiltinOperator.CONV_2D,
        tflite.BuiltinOperator.DEQUANTIZE,
        tflite.BuiltinOperator.DEPTHWISE_CONV_2D,
        tflite.BuiltinOperator.FULLY_CONNECTED,
    ]
    codes = []
    for code in codes_spec:
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 1)
        codes.append(tflite.OperatorCodeEnd(b))
    ops_spec = [
        (0, [0, 1, -1], [2], tflite.BuiltinOptions.Conv2DOptions, conv_opts),
        (1, [3], [4], None, None),
        (2, [2, 4, -1], [5], tflite.BuiltinOptions.DepthwiseConv2DOptions, dw_opts),
        (3, [5, 6], [7], tflite.BuiltinOptions.FullyConnectedOptions, fc_opts),
    ]
    ops = []
    for code, inputs, outputs, opt_type, opts in ops_spec:
        in_vec = b.CreateNumpyVector(np.array(inputs, np.int32))
        out_vec = b.CreateNumpyVector(np.array(outputs, np.int32))
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, code)
        tflite.OperatorAddInputs(b, in_vec)
        tflite.OperatorAddOutputs(b, out_vec)
        if opts is not None:
            tflite.OperatorAddBuiltinOptionsType(b, opt_type)
            tflite.OperatorAddBuiltinOptions(b, opts)
        ops.append(tflite.OperatorEnd(b))

    def offsets(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    tensor_vec, op_vec = offsets(tensors), offsets(ops)
    in_vec = b.CreateNumpyVector(np.array([0], np.int32))
    out_vec = b.CreateNumpyVector(np.array([7], np.int32))
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vec)
    tflite.SubGraphAddOperators(b, op_vec)
    tflite.SubGraphAddInputs(b, in_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    subgraph = tflite.SubGraphEnd(b)
    subgraphs, code_vec, buffer_vec = offsets([subgraph]), offsets(codes), offsets(buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddOperatorCodes(b, code_vec)
    tflite.ModelAddBuffers(b, buffer_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return {"conv_w": conv_w, "dw_q": dw_q, "dw_scales": dw_scales, "fc_q": fc_q}


def test_read_graph_parses_ops_options_and_quantisation(tmp_path) -> None:
    from edge_asd.pretrain.tflite_weights import read_graph

    path = tmp_path / "tiny.tflite"
    made = write_tiny_tflite(path)
    ops, tensors = read_graph(path)
    assert [op.kind for op in ops] == [
        "CONV_2D",
        "DEQUANTIZE",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
    ]
    assert ops[0].options == {
        "padding": "SAME",
        "stride_h": 2,
        "stride_w": 2,
        "activation": "RELU",
        "dilation_h": 1,
        "dilation_w": 1,
    }
    assert ops[2].options["depth_multiplier"] == 1 and ops[2].options["stride_h"] == 1
    assert ops[0].inputs == (0, 1, -1) and ops[3].outputs == (7,)
    assert tensors[0].data is None and tensors[0].shape == (1, 8, 8, 1)
    np.testing.assert_array_equal(tensors[1].data, made["conv_w"])
    dw = tensors[3]
    assert dw.dtype == "int8" and dw.quantized_dim == 3
    np.testing.assert_allclose(dequantize(dw), made["dw_q"] * made["dw_scales"], rtol=1e-6)
    np.testing.assert_allclose(dequantize(tensors[6]), 0.05 * (made["fc_q"] - 3.0), rtol=1e-6)


def test_read_graph_names_the_file_it_cannot_parse(tmp_path) -> None:
    pytest.importorskip("tflite")
    from edge_asd.pretrain.tflite_weights import read_graph

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(TfliteWeightsError, match=r"bad\.tflite"):
        read_graph(bad)
    with pytest.raises(TfliteWeightsError, match=r"missing\.tflite"):
        read_graph(tmp_path / "missing.tflite")
