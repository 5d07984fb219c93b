"""Frozen teachers and a disk cache of their outputs for fixed segments.

A teacher maps 16 kHz segments [B, S] to (embedding [B, De], class scores [B, C]). It runs
off-device only and its outputs for a fixed segment never change, so `TeacherCache` computes
them once per (teacher id, file sha256, offset, length, perturbation) and keeps them on disk.
Neither class imports torch: teachers are numpy in, numpy out.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np

from edge_asd.model.contract import MODEL_INPUT_NAME, MODEL_OUTPUT_NAME
from edge_asd.pretrain.data import (
    AudioFile,
    Segment,
    file_sha256,
    parse_layer,
    render_segment,
)

_LOGGER = logging.getLogger(__name__)

YAMNET_INPUT_SAMPLES: Final = 15_600
"""YAMNet's fixed input: 0.975 s at 16 kHz (one 0.96 s patch of 10 ms frames + the STFT tail)."""
YAMNET_EMBEDDING_TENSOR: Final = "yamnet_frames/global_average_pooling2d/Mean"
YAMNET_EMBEDDING_INDEX: Final = 121
"""Where the embedding lives in the published yamnet.tflite; checked against the name."""
YAMNET_SCORES_OUTPUT: Final = "Identity"
YAMNET_NUM_CLASSES: Final = 521
YAMNET_EMBEDDING_DIM: Final = 1024
ONNX_SCORES_OUTPUT: Final = "scores"
_CACHE_FORMAT: Final = 1
_ID_HASH_CHARS: Final = 16


class TeacherError(RuntimeError):
    """A teacher model is missing or does not look like what it claims to be."""


@runtime_checkable
class Teacher(Protocol):
    """Frozen model giving the targets of pretraining."""

    name: str
    cache_id: str
    """Changes whenever the outputs could change (model bytes, cropping)."""
    embedding_dim: int
    num_classes: int

    def embed_and_scores(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [B, S] at 16 kHz -> (embedding [B, De], scores in [0, 1] [B, C])."""
        ...


def _model_hash(path: Path) -> str:
    return file_sha256(path)[:_ID_HASH_CHARS]


def centre_crop(segments: np.ndarray, length: int) -> np.ndarray:
    """[B, S] -> [B, length]: centre crop when longer, zero-pad at the end when shorter."""
    s = segments.shape[1]
    if s >= length:
        start = (s - length) // 2
        return segments[:, start : start + length]
    return np.pad(segments, ((0, 0), (0, length - s)))


class YamnetTFLiteTeacher:
    """YAMNet (yamnet.tflite) through the LiteRT interpreter.

    Segments of 16 000 samples (the student's 1.0 s window) are centre-cropped to YAMNet's 15 600
    (200 samples, 12.5 ms, dropped at each end): YAMNet's front end reads exactly one 0.96 s
    patch from 15 600 samples, so the crop is what one YAMNet frame of the window sees. The
    embedding is the 1024-d global-average-pool output (tensor 121, kept because the
    interpreter is created with `experimental_preserve_all_tensors=True`); the scores are the
    521 sigmoid outputs.
    """

    def __init__(self, path: Path, *, num_threads: int | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - part of the train extra
            raise TeacherError("YamnetTFLiteTeacher needs ai-edge-litert (train extra)") from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise TeacherError(f"{self.path}: teacher model not found")
        try:
            self._interp = Interpreter(
                model_path=str(self.path),
                experimental_preserve_all_tensors=True,
                num_threads=num_threads,
            )
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise TeacherError(f"{self.path}: not a loadable TFLite model: {exc}") from exc
        inputs = self._interp.get_input_details()
        if len(inputs) != 1 or int(inputs[0]["shape"][-1]) != YAMNET_INPUT_SAMPLES:
            raise TeacherError(f"{self.path}: expected one input of {YAMNET_INPUT_SAMPLES} samples")
        self._input_index = int(inputs[0]["index"])
        self._embedding_index = self._find_embedding()
        self._scores_index = self._find_scores()
        self.name = "yamnet-tflite"
        self.cache_id = f"{self.name}-{_model_hash(self.path)}-crop{YAMNET_INPUT_SAMPLES}"
        self.embedding_dim = YAMNET_EMBEDDING_DIM
        self.num_classes = YAMNET_NUM_CLASSES

    def _find_embedding(self) -> int:
        details = self._interp.get_tensor_details()
        by_name = {d["name"]: int(d["index"]) for d in details}
        index = by_name.get(YAMNET_EMBEDDING_TENSOR)
        if index is None:
            raise TeacherError(f"{self.path}: no tensor named {YAMNET_EMBEDDING_TENSOR!r}")
        if index != YAMNET_EMBEDDING_INDEX:
            _LOGGER.warning("%s: embedding tensor at index %d, not %d", self.path, index, 121)
        shape = next(d["shape"] for d in details if int(d["index"]) == index)
        if int(shape[-1]) != YAMNET_EMBEDDING_DIM:
            raise TeacherError(f"{self.path}: embedding tensor has shape {list(shape)}")
        return index

    def _find_scores(self) -> int:
        for detail in self._interp.get_output_details():
            if detail["name"] == YAMNET_SCORES_OUTPUT:
                if int(detail["shape"][-1]) != YAMNET_NUM_CLASSES:
                    raise TeacherError(f"{self.path}: scores output has shape {detail['shape']}")
                return int(detail["index"])
        raise TeacherError(f"{self.path}: no output named {YAMNET_SCORES_OUTPUT!r}")

    def embed_and_scores(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = centre_crop(np.asarray(segments, dtype=np.float32), YAMNET_INPUT_SAMPLES)
        emb = np.empty((x.shape[0], self.embedding_dim), dtype=np.float32)
        scores = np.empty((x.shape[0], self.num_classes), dtype=np.float32)
        # The published model has a fixed batch of one.
        for row in range(x.shape[0]):
            self._interp.set_tensor(self._input_index, x[row : row + 1])
            self._interp.invoke()
            emb[row] = self._interp.get_tensor(self._embedding_index).reshape(-1)
            scores[row] = self._interp.get_tensor(self._scores_index).reshape(-1)
        return emb, scores


class OnnxTeacher:
    """Any ONNX model with a `waveform` [B, S] input, an `embedding` output and optionally a
    `scores` output (sigmoid class scores; absent means no soft tags: C = 0)."""

    def __init__(self, path: Path, *, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise TeacherError(f"{self.path}: teacher model not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise TeacherError(f"{self.path}: not a loadable ONNX model: {exc}") from exc
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        if MODEL_INPUT_NAME not in inputs:
            raise TeacherError(f"{self.path}: no input named {MODEL_INPUT_NAME!r}")
        if MODEL_OUTPUT_NAME not in outputs:
            raise TeacherError(f"{self.path}: no output named {MODEL_OUTPUT_NAME!r}")
        self._outputs = [MODEL_OUTPUT_NAME]
        if ONNX_SCORES_OUTPUT in outputs:
            self._outputs.append(ONNX_SCORES_OUTPUT)
        self._fixed_samples = _static_dim(inputs[MODEL_INPUT_NAME].shape, 1)
        self.embedding_dim = _static_dim(outputs[MODEL_OUTPUT_NAME].shape, 1) or 0
        self.num_classes = (
            _static_dim(outputs[ONNX_SCORES_OUTPUT].shape, 1) or 0
            if ONNX_SCORES_OUTPUT in outputs
            else 0
        )
        self.name = f"onnx:{self.path.stem}"
        self.cache_id = f"onnx-{_model_hash(self.path)}"
        if not self.embedding_dim or (ONNX_SCORES_OUTPUT in outputs and not self.num_classes):
            # Dynamic output widths: learn them from one probe run.
            probe = np.zeros((1, self._fixed_samples or YAMNET_INPUT_SAMPLES), dtype=np.float32)
            emb, scores = self.embed_and_scores(probe)
            self.embedding_dim, self.num_classes = emb.shape[1], scores.shape[1]

    def embed_and_scores(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(segments, dtype=np.float32)
        if self._fixed_samples:
            x = centre_crop(x, self._fixed_samples)
        results = self._session.run(self._outputs, {MODEL_INPUT_NAME: x})
        emb = np.asarray(results[0], dtype=np.float32)
        if len(results) > 1:
            scores = np.asarray(results[1], dtype=np.float32)
        else:
            scores = np.zeros((x.shape[0], 0), dtype=np.float32)
        return emb, scores


class YamnetPortTeacher:
    """The float PyTorch port of YAMNet as the teacher (`teacher.kind: yamnet_port`).

    The TFLite runtime quantises activations on the fly (docs/model-card.md, "Teacher port
    parity"), so its targets carry that noise and the un-fine-tuned student does not start
    exactly on them; the float port is the same network without it: the default student starts
    with zero clean-audio alignment loss. Same centre crop as `YamnetTFLiteTeacher`.
    """

    def __init__(
        self, path: Path | None = None, *, port: Any = None, embedding_layer: str | None = None
    ) -> None:
        import torch

        from edge_asd.pretrain.yamnet import YamnetPort

        if port is None:
            if path is None or not Path(path).is_file():
                raise TeacherError(f"{path}: teacher model not found")
            layer = parse_layer(embedding_layer)
            port = YamnetPort.from_tflite(path, embedding_layer=layer, truncate=False)
            self.cache_id = f"yamnet-port-{_model_hash(Path(path))}-crop{YAMNET_INPUT_SAMPLES}"
            if layer != "final":
                self.cache_id += f"-layer{layer}"
        else:
            digest = hashlib.sha256()
            for tensor in port.state_dict().values():
                digest.update(tensor.detach().cpu().numpy().tobytes())
            self.cache_id = f"yamnet-port-{digest.hexdigest()[:_ID_HASH_CHARS]}"
            if embedding_layer is not None:
                port = copy.deepcopy(port)  # the caller's port keeps its own layer
                port.set_embedding_layer(parse_layer(embedding_layer))
            if port.embedding_layer != "final":
                self.cache_id += f"-layer{port.embedding_layer}"
        self._torch = torch
        self._port = port.eval()
        self.name = "yamnet-port"
        self.embedding_dim = int(port.embedding_dim)
        self.num_classes = int(port.num_classes)
        self.input_samples = int(port.window_samples)

    def embed_and_scores(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(centre_crop(np.asarray(segments, np.float32), self.input_samples))
        with self._torch.no_grad():
            out = self._port(self._torch.from_numpy(x))
            scores = self._torch.sigmoid(out.logits)
        return out.embedding.numpy().astype(np.float32), scores.numpy().astype(np.float32)


def _static_dim(shape: Sequence[object], axis: int) -> int | None:
    if len(shape) <= axis:
        return None
    value = shape[axis]
    return value if isinstance(value, int) and value > 0 else None


def make_teacher(kind: str, path: Path, *, embedding_layer: str | None = None) -> Teacher:
    """The teacher named by a recipe's `teacher.kind` (`embedding_layer`: yamnet_port only)."""
    if embedding_layer is not None and kind != "yamnet_port":
        raise TeacherError("teacher.embedding_layer is only available with kind: yamnet_port")
    if kind == "yamnet_tflite":
        return YamnetTFLiteTeacher(path)
    if kind == "onnx":
        return OnnxTeacher(path)
    if kind == "yamnet_port":
        return YamnetPortTeacher(path, embedding_layer=embedding_layer)
    raise TeacherError(f"teacher.kind: unknown kind {kind!r} (yamnet_tflite, yamnet_port, onnx)")


class TeacherCache:
    """Teacher outputs for fixed segments, computed once and kept under `directory`.

    One `.npz` per (teacher cache id, file sha256, segment length, perturbation), holding the
    offsets computed so far with their embeddings and scores; new offsets are appended. Files
    are written atomically (temp file + rename), so an interrupted run leaves a valid cache.
    """

    def __init__(self, directory: Path, teacher: Teacher, *, batch_size: int = 64) -> None:
        self.directory = Path(directory) / _safe(teacher.cache_id)
        self.teacher = teacher
        self.batch_size = batch_size
        self.computed = 0
        """Segments this object sent to the teacher (the rest came from disk)."""
        self._memory: dict[tuple[str, int, str], dict[int, int]] = {}
        self._arrays: dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _path(self, key: tuple[str, int, str]) -> Path:
        sha, length, variant = key
        return self.directory / f"{sha}_{length}_{variant}.npz"

    def _load(self, key: tuple[str, int, str]) -> None:
        if key in self._arrays:
            return
        path = self._path(key)
        offsets = np.zeros(0, dtype=np.int64)
        emb = np.zeros((0, self.teacher.embedding_dim), dtype=np.float32)
        scores = np.zeros((0, self.teacher.num_classes), dtype=np.float32)
        if path.is_file():
            try:
                with np.load(path) as data:
                    if int(data["format"]) == _CACHE_FORMAT:
                        offsets, emb, scores = data["offsets"], data["emb"], data["scores"]
            except (OSError, ValueError, KeyError) as exc:
                _LOGGER.warning("%s: unreadable cache file, recomputing: %s", path, exc)
        self._arrays[key] = (offsets, emb, scores)
        self._memory[key] = {int(o): i for i, o in enumerate(offsets)}

    def _save(self, key: tuple[str, int, str]) -> None:
        offsets, emb, scores = self._arrays[key]
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, format=_CACHE_FORMAT, offsets=offsets, emb=emb, scores=scores)
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(
        self, files: Sequence[AudioFile], segments: Sequence[Segment], *, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(embedding [N, De], scores [N, C]) of `segments`, computing only what is missing."""
        keys = [(files[s.file_index].sha256, s.length, s.variant_tag()) for s in segments]
        missing: dict[tuple[str, int, str], dict[int, Segment]] = defaultdict(dict)
        for key, seg in zip(keys, segments, strict=True):
            self._load(key)
            if seg.offset not in self._memory[key]:
                missing[key][seg.offset] = seg
        todo = [seg for segs in missing.values() for seg in segs.values()]
        if todo:
            self._compute(files, todo, progress=progress)
            for key in missing:
                if missing[key]:
                    self._save(key)
        emb = np.empty((len(segments), self.teacher.embedding_dim), dtype=np.float32)
        scores = np.empty((len(segments), self.teacher.num_classes), dtype=np.float32)
        for row, (key, seg) in enumerate(zip(keys, segments, strict=True)):
            index = self._memory[key][seg.offset]
            _, e, s = self._arrays[key]
            emb[row], scores[row] = e[index], s[index]
        return emb, scores

    def _compute(self, files: Sequence[AudioFile], todo: list[Segment], *, progress: bool) -> None:
        from tqdm import tqdm

        _LOGGER.info("teacher %s: computing %d segments", self.teacher.name, len(todo))
        # disable=None: shown on a terminal only, not in logs.
        bar = tqdm(total=len(todo), desc="teacher", unit="seg", disable=None if progress else True)
        new: dict[tuple[str, int, str], list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(
            list
        )
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            audio = np.stack([render_segment(files, seg) for seg in chunk])
            emb, scores = self.teacher.embed_and_scores(audio)
            if not (np.all(np.isfinite(emb)) and np.all(np.isfinite(scores))):
                raise TeacherError(f"teacher {self.teacher.name}: non-finite output")
            for row, seg in enumerate(chunk):
                key = (files[seg.file_index].sha256, seg.length, seg.variant_tag())
                new[key].append((seg.offset, emb[row], scores[row]))
            self.computed += len(chunk)
            bar.update(len(chunk))
        bar.close()
        for key, rows in new.items():
            offsets, e, s = self._arrays[key]
            for offset, _, _ in rows:
                self._memory[key][offset] = len(self._memory[key])
            self._arrays[key] = (
                np.concatenate([offsets, np.asarray([r[0] for r in rows], dtype=np.int64)]),
                np.concatenate([e, np.stack([r[1] for r in rows])]),
                np.concatenate([s, np.stack([r[2] for r in rows])]),
            )


def _safe(text: str) -> str:
    """A file-name-safe form of a cache id."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    return (
        cleaned if cleaned == text else f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    )
