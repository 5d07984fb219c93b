"""Bundled encoders by name, and the one way from a config's `model:` to a file.

`resolve_model(None | name | path)`; the daemon, calibration, `score`, `evaluate` and the demo all
open their encoder through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Final

from edge_asd.model.contract import ModelError

BUNDLED_MODELS: Final[Mapping[str, str]] = {
    "logmel-stats": "logmel-stats.onnx",
    "yamnet-port": "yamnet-port-int8.onnx",
    "yamnet-denoise": "yamnet-denoise-int8.onnx",
    "yamnet-retain": "yamnet-retain-int8.onnx",
}
"""Name -> file in edge_asd/models/ of every model shipped with the package: the trained
student (default), the same recipe with the seed's `retain` objective (for noise never heard in
pretraining, docs/model-card.md) and the two baselines they are compared with
(docs/results.md)."""
DEFAULT_MODEL_NAME: Final = "yamnet-denoise"
"""The bundled model used when the config names none: the YAMNet student fine-tuned off-device
by the committed recipe (the `denoise` objective measured best: docs/results.md)."""
DEFAULT_ALIAS: Final = "default"
_MODELS_PACKAGE: Final = "edge_asd"
_MODELS_FOLDER: Final = "models"


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
