"""ONNX encoder runtime: waveform windows in, embeddings out (the encoder contract)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from edge_asd.constants import (
    META_EMBEDDING_DIM,
    META_MODEL_NAME,
    META_MODEL_VERSION,
    META_SAMPLE_RATE,
    META_WINDOW_SAMPLES,
    MODEL_INPUT_NAME,
    MODEL_OUTPUT_NAME,
    SAMPLE_RATE_HZ,
)

_LOGGER = logging.getLogger(__name__)

BUNDLED_MODELS: Final[Mapping[str, str]] = {
    "logmel-stats": "logmel-stats.onnx",
    "yamnet-port": "yamnet-port-int8.onnx",
    "yamnet-denoise": "yamnet-denoise-int8.onnx",
}
"""Name -> file in edge_asd/models/ of every model shipped with the package: the trained
student (default) and the two baselines it is compared with (docs/results.md)."""
DEFAULT_MODEL_NAME: Final = "yamnet-denoise"
"""The bundled model used when the config names none: the YAMNet student fine-tuned off-device
by the committed recipe (the `denoise` objective measured best: docs/results.md)."""
DEFAULT_ALIAS: Final = "default"
_MODELS_PACKAGE: Final = "edge_asd"
_MODELS_FOLDER: Final = "models"
_CONTRACT_RANK: Final = 2
"""Input [batch, samples] and output [batch, D]."""
_ONNX_FLOAT: Final = "tensor(float)"
_CPU_PROVIDER: Final = "CPUExecutionProvider"
# Spinning threads burn a core waiting for work; on a 2-core gateway that core is needed by
# capture and MQTT, and one window every 0.5 s gains nothing from spinning.
_SPIN_CONFIG_KEYS: Final = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
_SPIN_OFF: Final = "0"


class ModelError(Exception):
    """A model file is missing, corrupt, or does not match the encoder contract or config."""


@dataclass(frozen=True)
class ModelInfo:
    """What identifies an encoder; stored in calibration bundles and event payloads."""

    path: str
    sha256: str
    name: str
    version: str
    sample_rate: int
    """Hertz."""
    window_samples: int
    embedding_dim: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(
            path=str(data["path"]),
            sha256=str(data["sha256"]),
            name=str(data["name"]),
            version=str(data["version"]),
            sample_rate=int(data["sample_rate"]),
            window_samples=int(data["window_samples"]),
            embedding_dim=int(data["embedding_dim"]),
        )


def known_model_names() -> list[str]:
    """Names accepted by `named_model_path`, sorted."""
    return sorted([*BUNDLED_MODELS, DEFAULT_ALIAS])


def named_model_path(name: str) -> Path:
    """Path of a bundled model by name (`default` is the default model)."""
    key = DEFAULT_MODEL_NAME if name == DEFAULT_ALIAS else name
    if key not in BUNDLED_MODELS:
        raise ModelError(
            f"unknown bundled model {name!r}; known names: {', '.join(known_model_names())}"
        )
    resource = resources.files(_MODELS_PACKAGE).joinpath(_MODELS_FOLDER, BUNDLED_MODELS[key])
    # onnxruntime needs a real file; a zipped install would have to be extracted first.
    if not isinstance(resource, Path):
        raise ModelError(f"bundled model {name!r} is not a file on disk ({resource}); reinstall")
    if not resource.is_file():
        raise ModelError(f"bundled model {name!r} is missing from the package: {resource}")
    return resource


def default_model_path() -> Path:
    """Path of the model used when the config names none."""
    return named_model_path(DEFAULT_ALIAS)


def resolve_model(path_or_name: str | None) -> Path:
    """None -> the default model; a bundled model's name -> its path; anything else -> a path.

    A bare word that is neither a bundled name nor an existing file is reported as an unknown
    name, since a typo in a name is likelier than a model file without an extension.
    """
    if path_or_name is None:
        return default_model_path()
    if path_or_name in BUNDLED_MODELS or path_or_name == DEFAULT_ALIAS:
        return named_model_path(path_or_name)
    path = Path(path_or_name).expanduser()
    looks_like_name = path.suffix == "" and len(path.parts) == 1
    if looks_like_name and not path.exists():
        raise ModelError(
            f"model {path_or_name!r} is neither a file nor a bundled model; "
            f"known names: {', '.join(known_model_names())}"
        )
    return path


def _metadata_int(path: Path, metadata: Mapping[str, str], key: str) -> int:
    try:
        value = int(metadata[key])
    except ValueError:
        raise ModelError(
            f"model {path}: metadata {key} must be a positive integer, found {metadata[key]!r}"
        ) from None
    if value <= 0:
        raise ModelError(f"model {path}: metadata {key} must be a positive integer, found {value}")
    return value


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
        required = (
            META_SAMPLE_RATE,
            META_WINDOW_SAMPLES,
            META_EMBEDDING_DIM,
            META_MODEL_NAME,
            META_MODEL_VERSION,
        )
        missing = [key for key in required if key not in metadata]
        if missing:
            raise ModelError(
                f"model {path} lacks the encoder-contract metadata {', '.join(missing)} "
                f"(found keys: {', '.join(sorted(metadata)) or 'none'})"
            )
        info = ModelInfo(
            path=str(path),
            sha256=sha256,
            name=metadata[META_MODEL_NAME],
            version=metadata[META_MODEL_VERSION],
            sample_rate=_metadata_int(path, metadata, META_SAMPLE_RATE),
            window_samples=_metadata_int(path, metadata, META_WINDOW_SAMPLES),
            embedding_dim=_metadata_int(path, metadata, META_EMBEDDING_DIM),
        )
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
