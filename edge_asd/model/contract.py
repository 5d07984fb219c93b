"""The encoder contract: what an edge-asd ONNX encoder carries and how it is read.

Written by every exporter (the pretraining's `export`, the log-mel model builder in
`edge_asd_dev`) through `contract_metadata`, and read by `encoder.Encoder` through
`read_contract`: one place for the keys, their meaning and their checks.

Input `waveform`: float32 [batch, samples], 16 kHz mono in [-1, 1]; output `embedding`: float32
[batch, D]; the log-mel front end is inside the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from edge_asd.constants import SAMPLE_RATE_HZ

META_SAMPLE_RATE: Final = "edge_asd.sample_rate"
META_WINDOW_SAMPLES: Final = "edge_asd.window_samples"
META_EMBEDDING_DIM: Final = "edge_asd.embedding_dim"
META_MODEL_NAME: Final = "edge_asd.model_name"
META_MODEL_VERSION: Final = "edge_asd.model_version"
MODEL_INPUT_NAME: Final = "waveform"
MODEL_OUTPUT_NAME: Final = "embedding"
REQUIRED_METADATA: Final = (
    META_SAMPLE_RATE,
    META_WINDOW_SAMPLES,
    META_EMBEDDING_DIM,
    META_MODEL_NAME,
    META_MODEL_VERSION,
)


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


def contract_metadata(
    name: str, version: str, window_samples: int, embedding_dim: int
) -> dict[str, str]:
    """The metadata_props an exporter writes into the ONNX file."""
    return {
        META_SAMPLE_RATE: str(SAMPLE_RATE_HZ),
        META_WINDOW_SAMPLES: str(window_samples),
        META_EMBEDDING_DIM: str(embedding_dim),
        META_MODEL_NAME: name,
        META_MODEL_VERSION: version,
    }


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


def read_contract(path: Path, sha256: str, metadata: Mapping[str, str]) -> ModelInfo:
    """ModelInfo from a model's metadata_props; ModelError naming the file and the key."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelError(
            f"model {path} lacks the encoder-contract metadata {', '.join(missing)} "
            f"(found keys: {', '.join(sorted(metadata)) or 'none'})"
        )
    return ModelInfo(
        path=str(path),
        sha256=sha256,
        name=metadata[META_MODEL_NAME],
        version=metadata[META_MODEL_VERSION],
        sample_rate=_metadata_int(path, metadata, META_SAMPLE_RATE),
        window_samples=_metadata_int(path, metadata, META_WINDOW_SAMPLES),
        embedding_dim=_metadata_int(path, metadata, META_EMBEDDING_DIM),
    )
