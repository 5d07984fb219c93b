"""Export a `Student` to an ONNX encoder, quantise it to int8, and measure the int8/fp32 parity.

The ONNX file meets the encoder contract (docs/architecture.md): input `waveform` float32
[batch, window_samples], output `embedding` float32 [batch, D], front end inside the graph,
`edge_asd.*` metadata_props. Only the layers the embedding needs are traced, so a student
reading an intermediate block exports without its later blocks and classifier.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor, nn

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.model.contract import (
    META_WINDOW_SAMPLES,
    MODEL_INPUT_NAME,
    MODEL_OUTPUT_NAME,
    contract_metadata,
)
from edge_asd.pretrain.student import Student

_LOGGER = logging.getLogger(__name__)

DEFAULT_WINDOW_SAMPLES: Final = SAMPLE_RATE_HZ
"""1.0 s: the deployed window."""
DEFAULT_OPSET: Final = 17
MIN_MEDIAN_COSINE: Final = 0.99
"""int8 vs fp32 embedding cosine median below this fails the export."""
EXPORT_CHECK_ATOL: Final = 1e-3
EXPORT_CHECK_RTOL: Final = 1e-3
"""onnxruntime fp32 vs PyTorch, relative to the embedding's largest magnitude."""
EXPORT_CHECK_SEED: Final = 1234
EXPORT_CHECK_AMPLITUDE: Final = 0.1
FRONT_END_SCOPE: Final = "front_end"
"""Module name whose ONNX nodes stay float in quantisation (log-mel needs the range)."""
TIMING_WARMUP_RUNS: Final = 5
TIMING_RUNS: Final = 100
PERCENTILE_LOW: Final = 5
DEFAULT_CALIBRATION_PERCENTILE: Final = 99.99
"""For CalibrationMethod.Percentile: the share of |activation| values the range covers."""
_FLOAT_TAIL_OPS: Final = ("ReduceMean", "GlobalAveragePool", "Mul", "Add", "Div")
MS_PER_S: Final = 1000.0
BYTES_PER_MB: Final = 1_000_000


class ExportError(Exception):
    """The student cannot be exported, or the exported file fails its checks."""


class ParityError(ExportError):
    """int8 embeddings are too far from the fp32 ones; `report` has the figures."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class _EmbeddingGraph(nn.Module):
    """The student with only its embedding as output: what the ONNX file holds."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, waveform: Tensor) -> Tensor:
        return self.student(waveform).embedding


def export_onnx(
    student: Student | nn.Module,
    out_path: str | Path,
    *,
    name: str,
    version: str,
    window_samples: int = DEFAULT_WINDOW_SAMPLES,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write `student` as an fp32 ONNX encoder at `out_path`; check it against PyTorch."""
    out_path = Path(out_path)
    module: nn.Module = student  # type: ignore[assignment]
    minimum = int(getattr(student, "window_samples", 0))
    if window_samples < minimum:
        raise ExportError(
            f"{out_path}: window of {window_samples} samples is shorter than the student's "
            f"minimum {minimum}"
        )
    was_training = module.training
    module.eval()
    graph = _EmbeddingGraph(module).eval()
    example = _example_windows(2, window_samples)
    try:
        with torch.no_grad():
            expected = graph(example).numpy()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # Shapes that depend on the (fixed) window length become constants: intended.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(out_path),
                input_names=[MODEL_INPUT_NAME],
                output_names=[MODEL_OUTPUT_NAME],
                dynamic_axes={MODEL_INPUT_NAME: {0: "batch"}, MODEL_OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        module.train(was_training)

    model = _fuse_zero_pads(_fold_constants(out_path))
    embedding_dim = int(expected.shape[1])
    _set_metadata(
        model,
        contract_metadata(name, version, window_samples, embedding_dim),
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))

    got = _session(out_path).run([MODEL_OUTPUT_NAME], {MODEL_INPUT_NAME: example.numpy()})[0]
    scale = float(np.abs(expected).max()) or 1.0
    err = float(np.abs(got - expected).max()) / scale
    if got.shape != expected.shape or err > EXPORT_CHECK_RTOL:
        raise ExportError(
            f"{out_path}: onnxruntime output differs from PyTorch (shape {got.shape} vs "
            f"{expected.shape}, max relative error {err:.2e})"
        )
    _LOGGER.info(
        "exported %s (%s %s): D=%d, %d samples, %.2f MB, max rel. error vs torch %.1e",
        out_path,
        name,
        version,
        embedding_dim,
        window_samples,
        out_path.stat().st_size / BYTES_PER_MB,
        err,
    )
    return out_path


def _fold_constants(path: Path) -> onnx.ModelProto:
    """The model at `path` after onnxruntime's basic (hardware-independent) optimisations.

    The exporter leaves F.pad's pad amounts as an unfolded subgraph; constant folding turns
    them into initializers, which `_fuse_zero_pads` needs.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(folded))


def _fuse_zero_pads(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move zero Pad nodes that feed one Conv into the Conv's own (asymmetric) pads.

    TF 'SAME' padding is asymmetric; PyTorch convs only pad symmetrically, so the port pads
    with F.pad. A separate Pad costs a copy (and a float detour in a quantised graph).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed: list[onnx.NodeProto] = []
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        users = consumers.get(pad.output[0], [])
        if mode != b"constant" or len(users) != 1 or users[0].op_type != "Conv":
            continue
        if pad.output[0] in outputs or len(pad.input) < 2 or pad.input[1] not in inits:
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = inits.get(pad.input[2])
            if value is None or np.any(onnx.numpy_helper.to_array(value) != 0):
                continue
        pads = onnx.numpy_helper.to_array(inits[pad.input[1]]).astype(np.int64)
        rank = pads.size // 2
        begin, end = pads[:rank], pads[rank:]
        if np.any(pads < 0) or np.any(begin[:2]) or np.any(end[:2]):
            continue  # only spatial zero padding folds into a Conv
        conv = users[0]
        attr = next((a for a in conv.attribute if a.name == "pads"), None)
        spatial = rank - 2
        old = np.array(attr.ints if attr is not None else [0] * 2 * spatial, np.int64)
        new = old + np.concatenate([begin[2:], end[2:]])
        if attr is not None:
            conv.attribute.remove(attr)
        conv.attribute.append(onnx.helper.make_attribute("pads", [int(v) for v in new]))
        conv.input[0] = pad.input[0]
        removed.append(pad)
    for pad in removed:
        graph.node.remove(pad)
    used = {name for node in graph.node for name in node.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    _LOGGER.debug("fused %d Pad nodes into convolutions", len(removed))
    return model


def _example_windows(batch: int, samples: int) -> Tensor:
    rng = np.random.default_rng(EXPORT_CHECK_SEED)
    noise = EXPORT_CHECK_AMPLITUDE * rng.standard_normal((batch, samples))
    return torch.from_numpy(noise.astype(np.float32))


def _set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX file as a dict."""
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the daemon
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class WindowReader(CalibrationDataReader):
    """Feeds calibration windows [N, S] to onnxruntime one at a time."""

    def __init__(self, windows: np.ndarray) -> None:
        self.windows = np.asarray(windows, dtype=np.float32)
        self._iter: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        assert self._iter is not None
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = ({MODEL_INPUT_NAME: w[None]} for w in self.windows)


def front_end_nodes(model: onnx.ModelProto, scope: str = FRONT_END_SCOPE) -> list[str]:
    """Names of the nodes the exporter scoped under the front-end module."""
    return [n.name for n in model.graph.node if f"/{scope}/" in n.name]


def pooling_tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes from the last global pooling on: the embedding itself stays float.

    One 8-bit range over all D channels of the pooled embedding would round its small channels
    away; after pooling there is little compute left to gain from int8.
    """
    nodes = list(model.graph.node)
    pools = [i for i, n in enumerate(nodes) if n.op_type in ("ReduceMean", "GlobalAveragePool")]
    if not pools:
        return []
    return [n.name for n in nodes[pools[-1] :] if n.op_type in _FLOAT_TAIL_OPS]


def _wide_activations(model: onnx.ModelProto, scopes: Sequence[str]) -> list[str]:
    """Input and output activations (not weights) of the nodes named under `scopes`."""
    if not scopes:
        return []
    constants = {t.name for t in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        if any(scope in node.name for scope in scopes):
            names.extend(
                t
                for t in (*node.input, *node.output)
                if t and t not in constants and t not in names
            )
    return names


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration_windows: np.ndarray,
    *,
    exclude_front_end: bool = True,
    per_channel: bool = True,
    method: CalibrationMethod = CalibrationMethod.Percentile,
    percentile: float = DEFAULT_CALIBRATION_PERCENTILE,
    wide_activation_scopes: Sequence[str] = (),
    float_scopes: Sequence[str] = (),
) -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations).

    Calibrated on `calibration_windows` [N, window_samples] of real audio; the front end stays
    float because raw audio and spectra need more than 8 bits of range, and so do the pooled
    embedding and what follows it. Activations of nodes whose name contains one of
    `wide_activation_scopes` get 16-bit quantisation: their convs keep int8 weights (file size)
    but run in float, for layers whose channels span ranges 8 bits cannot hold. Nodes under
    `float_scopes` stay float altogether (weights too).
    """
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    windows = np.asarray(calibration_windows, dtype=np.float32)
    meta = read_metadata(fp32_path)
    expected = int(meta.get(META_WINDOW_SAMPLES, str(windows.shape[-1])))
    if windows.ndim != 2 or windows.shape[1] != expected or len(windows) == 0:
        raise ExportError(
            f"{fp32_path}: calibration windows must be [N>0, {expected}], got {windows.shape}"
        )
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        prepared_model = onnx.load(str(prepared))
        excluded = front_end_nodes(prepared_model) if exclude_front_end else []
        excluded += pooling_tail_nodes(prepared_model)
        excluded += [
            n.name for n in prepared_model.graph.node if any(s in n.name for s in float_scopes)
        ]
        wide = _wide_activations(prepared_model, wide_activation_scopes)
        quantize_static(
            str(prepared),
            str(int8_path),
            WindowReader(windows),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=excluded,
            extra_options={
                "TensorQuantOverrides": {
                    name: [{"quant_type": QuantType.QUInt16}] for name in wide
                },
                "CalibPercentile": percentile,
            },
        )
    model = onnx.load(str(int8_path))
    _set_metadata(model, meta)  # the quantiser drops metadata_props
    onnx.save(model, str(int8_path))
    _LOGGER.info(
        "quantised %s -> %s (%.2f MB, %d calibration windows, %d float nodes, "
        "%d 16-bit activations)",
        fp32_path,
        int8_path,
        int8_path.stat().st_size / BYTES_PER_MB,
        len(windows),
        len(excluded),
        len(wide),
    )
    return int8_path


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, np.finfo(np.float32).tiny)


def _embed(session: ort.InferenceSession, windows: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [session.run([MODEL_OUTPUT_NAME], {MODEL_INPUT_NAME: w[None]})[0] for w in windows]
    )


def time_per_window_ms(
    session: ort.InferenceSession, window: np.ndarray, runs: int = TIMING_RUNS
) -> dict[str, float]:
    """Wall time of one batch-1 inference in ms after warm-up: p50 and min over `runs`.

    The minimum is the figure least disturbed by other processes on a shared machine.
    """
    feed = {MODEL_INPUT_NAME: np.asarray(window, np.float32)[None]}
    for _ in range(TIMING_WARMUP_RUNS):
        session.run([MODEL_OUTPUT_NAME], feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run([MODEL_OUTPUT_NAME], feed)
        times.append((time.perf_counter() - start) * MS_PER_S)
    return {"p50": statistics.median(times), "min": min(times)}


def parity_report(
    fp32_path: str | Path,
    int8_path: str | Path,
    windows: np.ndarray,
    *,
    min_cosine: float = MIN_MEDIAN_COSINE,
    measure_speed: bool = True,
) -> dict[str, Any]:
    """int8 vs fp32 embedding cosine (median, p5, min), p50 ms per window (1 thread), sizes.

    Raises ParityError when the median cosine is below `min_cosine`.
    """
    windows = np.asarray(windows, dtype=np.float32)
    fp32 = _session(fp32_path)
    int8 = _session(int8_path)
    ref = _embed(fp32, windows)
    got = _embed(int8, windows)
    cos = _cosine(got, ref)
    report: dict[str, Any] = {
        "fp32_path": str(fp32_path),
        "int8_path": str(int8_path),
        "windows": len(windows),
        "window_samples": int(windows.shape[1]),
        "embedding_dim": int(ref.shape[1]),
        "cosine_median": float(np.median(cos)),
        "cosine_p5": float(np.percentile(cos, PERCENTILE_LOW)),
        "cosine_min": float(cos.min()),
        "fp32_size_mb": Path(fp32_path).stat().st_size / BYTES_PER_MB,
        "int8_size_mb": Path(int8_path).stat().st_size / BYTES_PER_MB,
        "min_cosine": min_cosine,
        "threads": 1,
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
    }
    if measure_speed:
        for kind, session in (("fp32", fp32), ("int8", int8)):
            timing = time_per_window_ms(session, windows[0])
            report[f"{kind}_ms_p50"] = timing["p50"]
            report[f"{kind}_ms_min"] = timing["min"]
    _LOGGER.info("parity %s", json.dumps(report))
    if not report["cosine_median"] >= min_cosine:  # also catches NaN
        raise ParityError(
            f"{int8_path}: int8 vs fp32 embedding cosine median {report['cosine_median']:.4f} "
            f"< {min_cosine} over {len(windows)} windows",
            report,
        )
    return report


@dataclass(frozen=True)
class ExportResult:
    """Paths and figures of `export_int8`."""

    fp32_path: Path
    int8_path: Path
    report: dict[str, Any]


def export_int8(
    student: Student | nn.Module,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    calibration_windows: np.ndarray,
    parity_windows: np.ndarray,
    window_samples: int = DEFAULT_WINDOW_SAMPLES,
    min_cosine: float = MIN_MEDIAN_COSINE,
    wide_activation_scopes: Sequence[str] | None = None,
    method: CalibrationMethod = CalibrationMethod.Percentile,
    percentile: float = DEFAULT_CALIBRATION_PERCENTILE,
) -> ExportResult:
    """fp32 export, int8 quantisation and parity check; writes `<name>-parity.json` too.

    Submodules (the student itself or one it wraps) that offer int8 hooks are used on a copy:
    `equalize_activation_ranges(windows)` (the YAMNet port: outputs unchanged),
    `int8_sensitive_scopes()` (16-bit activations; `wide_activation_scopes` None asks them),
    `int8_float_scopes()` (kept float). fp32 and int8 files come from the same prepared copy.
    Raises ParityError (after writing the report) when int8 parity is below `min_cosine`.
    """
    prepared, hooks = _prepare_for_int8(student, calibration_windows)
    if wide_activation_scopes is None:
        wide_activation_scopes = hooks["wide"]
    float_scopes = hooks["float"]
    out_dir = Path(out_dir)
    fp32_path = export_onnx(
        prepared,
        out_dir / f"{name}-fp32.onnx",
        name=name,
        version=version,
        window_samples=window_samples,
    )
    int8_path = quantize_int8(
        fp32_path,
        out_dir / f"{name}-int8.onnx",
        calibration_windows,
        method=method,
        percentile=percentile,
        wide_activation_scopes=wide_activation_scopes,
        float_scopes=float_scopes,
    )
    report_path = out_dir / f"{name}-parity.json"
    settings = {
        "wide_activation_scopes": list(wide_activation_scopes),
        "float_scopes": list(float_scopes),
        "calibration": {
            "method": method.name,
            "percentile": percentile,
            "windows": len(calibration_windows),
        },
    }
    try:
        report = parity_report(fp32_path, int8_path, parity_windows, min_cosine=min_cosine)
    except ParityError as exc:
        exc.report.update(settings)
        report_path.write_text(json.dumps(exc.report, indent=2) + "\n")
        raise
    report.update(settings)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return ExportResult(fp32_path=fp32_path, int8_path=int8_path, report=report)


def _prepare_for_int8(
    student: Student | nn.Module, calibration_windows: np.ndarray
) -> tuple[nn.Module, dict[str, tuple[str, ...]]]:
    """A copy of `student` with its submodules' int8 hooks applied, and their scopes."""
    prepared = copy.deepcopy(student)
    assert isinstance(prepared, nn.Module)
    windows = torch.from_numpy(np.asarray(calibration_windows, np.float32))
    wide: list[str] = []
    floats: list[str] = []
    for module in prepared.modules():
        equalize = getattr(module, "equalize_activation_ranges", None)
        if callable(equalize):
            equalize(windows)
        for hook_name, found in (("int8_sensitive_scopes", wide), ("int8_float_scopes", floats)):
            hook = getattr(module, hook_name, None)
            if callable(hook):
                found.extend(scope for scope in hook() if scope not in found)
    return prepared, {"wide": tuple(wide), "float": tuple(floats)}


def windows_from_signals(
    signals: Sequence[np.ndarray], window_samples: int, per_signal: int
) -> np.ndarray:
    """Up to `per_signal` windows spread evenly over each 16 kHz signal, stacked [N, S]."""
    out: list[np.ndarray] = []
    for x in signals:
        if x.size < window_samples:
            continue
        starts = np.linspace(0, x.size - window_samples, per_signal).astype(int)
        out.extend(np.asarray(x[s : s + window_samples], np.float32) for s in np.unique(starts))
    if not out:
        raise ExportError(f"no signal is as long as one window ({window_samples} samples)")
    return np.stack(out)
