"""The registry of scoring methods: how a query's distances to bank entries become a score.

Each method maps the cosine distances d [B, n] of B queries to n bank entries, and those
entries' local densities rho_K [n] (raw, and floored so a ratio stays finite), to adjusted
distances; the score of a query is the minimum over the bank (memory_bank.MemoryBank.score).
To add a method, register a function here (and test it in tests/test_methods.py): the config,
the CLI, calibration and bundles read the names from `SCORE_METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    # Annotations only: the CLI and the config read SCORE_METHODS before numpy may load
    # (vocabulary.py says why).
    import numpy as np

Adjust: TypeAlias = "Callable[[np.ndarray, np.ndarray, np.ndarray], None]"
"""(distances [B, n] modified in place, rho [n], floored rho [n]) -> None."""


def _density(d: np.ndarray, _rho: np.ndarray, rho_floored: np.ndarray) -> None:
    """d(x, y) / rho_K(y): the seed's local-density normalisation (the default)."""
    d /= rho_floored


def _difference(d: np.ndarray, rho: np.ndarray, _rho_floored: np.ndarray) -> None:
    """d(x, y) - rho_K(y)."""
    d -= rho


def _raw(_d: np.ndarray, _rho: np.ndarray, _rho_floored: np.ndarray) -> None:
    """Plain nearest-neighbour cosine distance."""


_METHODS: Final[dict[str, Adjust]] = {
    "density": _density,
    "difference": _difference,
    "raw": _raw,
}

SCORE_METHODS: Final[tuple[str, ...]] = tuple(_METHODS)
DEFAULT_SCORE_METHOD: Final = "density"


def check_method(method: str) -> str:
    """`method` if registered, else ValueError naming the known ones."""
    if method not in _METHODS:
        raise ValueError(f"unknown scoring method {method!r}; expected one of {SCORE_METHODS}")
    return method


def adjust_distances(method: str, d: np.ndarray, rho: np.ndarray, rho_floored: np.ndarray) -> None:
    """Apply `method` to distances `d` in place."""
    _METHODS[check_method(method)](d, rho, rho_floored)
