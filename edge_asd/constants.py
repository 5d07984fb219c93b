"""Numbers that several pipeline stages must agree on, with their units."""

from typing import Final

SAMPLE_RATE_HZ: Final = 16_000
"""The encoder contract's sample rate; every source resamples to it."""

DEFAULT_WINDOW_SECONDS: Final = 1.0
DEFAULT_HOP_SECONDS: Final = 0.5

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
"""Usage and configuration errors, like argparse."""

# Keys of the encoder contract's ONNX metadata_props.
META_SAMPLE_RATE: Final = "edge_asd.sample_rate"
META_WINDOW_SAMPLES: Final = "edge_asd.window_samples"
META_EMBEDDING_DIM: Final = "edge_asd.embedding_dim"
META_MODEL_NAME: Final = "edge_asd.model_name"
META_MODEL_VERSION: Final = "edge_asd.model_version"
MODEL_INPUT_NAME: Final = "waveform"
MODEL_OUTPUT_NAME: Final = "embedding"


def seconds_to_samples(seconds: float, rate_hz: int = SAMPLE_RATE_HZ) -> int:
    """Whole samples in `seconds` at `rate_hz`, rounded to nearest."""
    return round(seconds * rate_hz)
