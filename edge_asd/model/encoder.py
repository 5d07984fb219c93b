"""ONNX encoder runtime: waveform windows in, embeddings out (the encoder contract)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.model.contract import (
    META_EMBEDDING_DIM,
    META_WINDOW_SAMPLES,
    MODEL_INPUT_NAME,
    MODEL_OUTPUT_NAME,
    ModelError,
    ModelInfo,
    read_contract,
)

_LOGGER = logging.getLogger(__name__)

_CONTRACT_RANK: Final = 2
"""Input [batch, samples] and output [batch, D]."""
_ONNX_FLOAT: Final = "tensor(float)"
_CPU_PROVIDER: Final = "CPUExecutionProvider"
# Spinning threads burn a core waiting for work; on a 2-core gateway that core is needed by
# capture and MQTT, and one window every 0.5 s gains nothing from spinning.
_SPIN_CONFIG_KEYS: Final = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
_SPIN_OFF: Final = "0"


class Encoder:
    """An ONNX encoder that follows the contract; `embed` turns windows into embeddings.

    Thread-safe: onnxruntime sessions may be run from several threads.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        expected_window_samples: int | None = None,
        expected_sample_rate: int = SAMPLE_RATE_HZ,
    ) -> None:
        self._path = Path(path)
        if intra_op_threads < 1 or inter_op_threads < 1:
            raise ValueError(
                f"thread counts must be at least 1, got intra_op={intra_op_threads}, "
                f"inter_op={inter_op_threads}"
            )
        model_bytes = self._read(self._path)
        self._session = self._open_session(model_bytes, intra_op_threads, inter_op_threads)
        self._info = self._check_contract(hashlib.sha256(model_bytes).hexdigest())
        self._check_expectations(expected_window_samples, expected_sample_rate)
        self._warm_up()
        _LOGGER.info(
            "encoder %s v%s loaded from %s: %d-sample windows -> %d-d embeddings, "
            "%d intra-op / %d inter-op threads",
            self.info.name,
            self.info.version,
            self._path,
            self.info.window_samples,
            self.info.embedding_dim,
            intra_op_threads,
            inter_op_threads,
        )

    @property
    def info(self) -> ModelInfo:
        """Identity of the model (path, sha256 of the file, contract metadata)."""
        return self._info

    @property
    def window_samples(self) -> int:
        """Samples per window at `info.sample_rate`."""
        return self.info.window_samples

    @property
    def embedding_dim(self) -> int:
        return self.info.embedding_dim

    @property
    def session_options(self) -> ort.SessionOptions:
        """The options the onnxruntime session runs with (for diagnostics and tests)."""
        return self._session.get_session_options()

    def embed(self, windows: ArrayLike) -> NDArray[np.float32]:
        """Windows [S] or [B, S] of float audio in [-1, 1] -> embeddings float32 [B, D]."""
        array = np.asarray(windows)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"encoder {self.info.name} expects float audio in [-1, 1], got dtype {array.dtype}"
                " (integer PCM must be scaled first)"
            )
        if array.ndim == 1:
            array = array[np.newaxis, :]
        if array.ndim != _CONTRACT_RANK or array.shape[1] != self.info.window_samples:
            raise ValueError(
                f"encoder {self.info.name} expects windows of shape [batch, "
                f"{self.info.window_samples}] or [{self.info.window_samples}], "
                f"got {np.shape(windows)}"
            )
        if array.shape[0] == 0:
            return np.zeros((0, self.info.embedding_dim), dtype=np.float32)
        batch = np.ascontiguousarray(array, dtype=np.float32)
        outputs = self._session.run([MODEL_OUTPUT_NAME], {MODEL_INPUT_NAME: batch})
        return np.asarray(outputs[0], dtype=np.float32)

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"model file not found: {path}") from None
        except IsADirectoryError:
            raise ModelError(f"model path is a directory, not an ONNX file: {path}") from None
        except OSError as err:
            raise ModelError(f"cannot read model file {path}: {err.strerror}") from None

    def _open_session(
        self, model_bytes: bytes, intra_op_threads: int, inter_op_threads: int
    ) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        for key in _SPIN_CONFIG_KEYS:
            options.add_session_config_entry(key, _SPIN_OFF)
        try:
            return ort.InferenceSession(model_bytes, options, providers=[_CPU_PROVIDER])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Exception subclasses
            raise ModelError(f"model {self._path} is not a loadable ONNX model: {err}") from None

    def _check_contract(self, sha256: str) -> ModelInfo:
        path = self._path
        metadata = self._session.get_modelmeta().custom_metadata_map
        info = read_contract(path, sha256, metadata)
        self._check_io(
            "input",
            self._session.get_inputs(),
            MODEL_INPUT_NAME,
            info.window_samples,
            META_WINDOW_SAMPLES,
        )
        self._check_io(
            "output",
            self._session.get_outputs(),
            MODEL_OUTPUT_NAME,
            info.embedding_dim,
            META_EMBEDDING_DIM,
        )
        return info

    def _check_io(
        self, kind: str, args: list[Any], expected_name: str, expected_dim: int, meta_key: str
    ) -> None:
        found = {arg.name: arg for arg in args}
        if expected_name not in found:
            raise ModelError(
                f"model {self._path} needs an {kind} named {expected_name!r}, "
                f"found {', '.join(repr(n) for n in found) or 'none'}"
            )
        arg = found[expected_name]
        if arg.type != _ONNX_FLOAT or len(arg.shape) != _CONTRACT_RANK:
            raise ModelError(
                f"model {self._path}: {kind} {expected_name!r} must be {_ONNX_FLOAT} of rank "
                f"{_CONTRACT_RANK}, found {arg.type} with shape {arg.shape}"
            )
        last_dim = arg.shape[1]
        # A symbolic dimension (a str or None) is checked by the warm-up run instead.
        if isinstance(last_dim, int) and last_dim != expected_dim:
            raise ModelError(
                f"model {self._path}: {kind} {expected_name!r} has shape {arg.shape} but "
                f"metadata {meta_key} says {expected_dim}"
            )

    def _check_expectations(
        self, expected_window_samples: int | None, expected_sample_rate: int
    ) -> None:
        info = self.info
        if info.sample_rate != expected_sample_rate:
            raise ModelError(
                f"model {self._path} ({info.name}) expects {info.sample_rate} Hz audio but the "
                f"pipeline delivers {expected_sample_rate} Hz"
            )
        if expected_window_samples is not None and info.window_samples != expected_window_samples:
            raise ModelError(
                f"model {self._path} ({info.name}) expects {info.window_samples}-sample windows "
                f"({info.window_samples / info.sample_rate} s) but the config asks for "
                f"{expected_window_samples / expected_sample_rate} s = "
                f"{expected_window_samples} samples"
            )

    def _warm_up(self) -> None:
        # onnxruntime allocates and plans on the first run; pay that here, not on the first
        # live window. Zeros also prove that the declared output size is what the graph makes.
        silence = np.zeros((1, self.info.window_samples), dtype=np.float32)
        try:
            outputs = self._session.run([MODEL_OUTPUT_NAME], {MODEL_INPUT_NAME: silence})
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Exception subclasses
            raise ModelError(
                f"model {self._path} failed on a {self.info.window_samples}-sample window: {err}"
            ) from None
        shape = np.shape(outputs[0])
        if shape != (1, self.info.embedding_dim):
            raise ModelError(
                f"model {self._path} returned embeddings of shape {shape} for one window, "
                f"metadata {META_EMBEDDING_DIM} says (1, {self.info.embedding_dim})"
            )
