"""Memory bank of normal embeddings: cosine kNN with local-density normalisation.

The score of a query x against the reference set R (docs/method.md, section 1):

- ``density`` (default): min over y in R of d(x, y) / rho_K(y)
- ``difference``: min over y of d(x, y) - rho_K(y)
- ``raw``: min over y of d(x, y)

with the cosine distance d(x, y) = (1 - x.y) / 2 on L2-normalised embeddings (in [0, 1]) and
rho_K(y) the mean distance of y to its K nearest OTHER items of R.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Literal, get_args

import numpy as np

_LOGGER = logging.getLogger(__name__)

ScoreMethod = Literal["density", "difference", "raw"]
SCORE_METHODS: Final[tuple[str, ...]] = get_args(ScoreMethod)
DEFAULT_SCORE_METHOD: Final = "density"

RHO_FLOOR: Final = float(np.finfo(np.float32).eps)
"""Distance units. Exact duplicates in the bank have rho = 0; the floor keeps the ratio finite."""

CHUNK_BUDGET_BYTES: Final = 48 * 2**20
"""Bytes per float32 [rows, N] temporary; the pairwise work holds about 3 of them at once."""

_FLOAT32_BYTES: Final = 4
_NORM_FLOOR: Final = 1e-12
"""An embedding with a smaller L2 norm is treated as the zero vector (distance 0.5 to all)."""


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """L2-normalise rows as float32; all-zero rows stay zero (cosine distance 0.5 to anything)."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, _NORM_FLOOR)).astype(np.float32, copy=False)


def _rows_per_chunk(n_columns: int) -> int:
    return max(1, CHUNK_BUDGET_BYTES // (_FLOAT32_BYTES * max(1, n_columns)))


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] cosine distances of normalised rows; clipped because float32 rounding
    can push x.y a hair past +-1."""
    d = a @ b.T
    d *= -0.5
    d += 0.5
    np.clip(d, 0.0, 1.0, out=d)
    return d


def compute_rho(normalised: np.ndarray, k: int) -> np.ndarray:
    """rho_K for every row of an L2-normalised [N, D] bank, float32 [N].

    Self-matches are excluded by index, not by distance, so exact duplicates count with distance
    0. Rows are processed in chunks so that N x N is never materialised (N = 50 000 stays within
    a few hundred MB).
    """
    n = normalised.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for a bank of {n} entries, got {k}")
    rho = np.empty(n, dtype=np.float32)
    step = _rows_per_chunk(n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        # Work on similarities (nearest = largest) to save passes over the [rows, N] block.
        sims = normalised[start:stop] @ normalised.T
        rows = np.arange(stop - start)
        sims[rows, start + rows] = -np.inf
        if k == 1:
            top = sims.max(axis=1, keepdims=True)  # much faster than a partition
        else:
            top = np.partition(sims, n - k, axis=1)[:, n - k :]
        nearest = np.clip((1.0 - top) / 2.0, 0.0, 1.0)
        rho[start:stop] = nearest.mean(axis=1, dtype=np.float64)
    return rho


class MemoryBank:
    """Normal reference embeddings with their local densities; scores query embeddings."""

    def __init__(
        self,
        embeddings: np.ndarray,
        *,
        k: int = 1,
        labels: Sequence[str] | None = None,
        rho: np.ndarray | None = None,
    ) -> None:
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
            raise ValueError(f"bank embeddings must be a non-empty [N, D] array, got {emb.shape}")
        if not np.all(np.isfinite(emb)):
            raise ValueError("bank embeddings contain NaN or inf")
        n = emb.shape[0]
        if not 1 <= k < n:
            raise ValueError(f"k must be in [1, {n - 1}] for a bank of {n} entries, got {k}")
        if labels is not None and len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries but the bank has {n}")
        self._embeddings = normalise(emb)
        self._k = int(k)
        self._labels = None if labels is None else [str(label) for label in labels]
        if rho is None:
            raw_rho = compute_rho(self._embeddings, self._k)
        else:
            raw_rho = np.asarray(rho, dtype=np.float32).reshape(-1)
            if raw_rho.shape[0] != n:
                raise ValueError(f"rho has {raw_rho.shape[0]} entries but the bank has {n}")
            if not np.all(np.isfinite(raw_rho)) or np.any(raw_rho < 0):
                raise ValueError("rho must be finite and non-negative")
        self._rho = raw_rho
        n_floored = int(np.count_nonzero(raw_rho < RHO_FLOOR))
        if n_floored:
            _LOGGER.debug("%d of %d bank entries have rho below the floor", n_floored, n)
        self._rho_floored = np.maximum(raw_rho, RHO_FLOOR).astype(np.float32)
        self._embeddings.setflags(write=False)
        self._rho.setflags(write=False)

    @property
    def embeddings(self) -> np.ndarray:
        """L2-normalised float32 [N, D] (read-only)."""
        return self._embeddings

    @property
    def rho(self) -> np.ndarray:
        """float32 [N] local densities rho_K, cosine-distance units, before the floor."""
        return self._rho

    @property
    def labels(self) -> list[str] | None:
        return None if self._labels is None else list(self._labels)

    @property
    def k(self) -> int:
        return self._k

    @property
    def size(self) -> int:
        return int(self._embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self._embeddings.shape[1])

    def __len__(self) -> int:
        return self.size

    def score(self, x: np.ndarray, method: str = DEFAULT_SCORE_METHOD) -> np.ndarray:
        """Anomaly scores float32 [B] of queries [B, D] (or one query [D] -> [1])."""
        if method not in SCORE_METHODS:
            raise ValueError(f"unknown scoring method {method!r}; expected one of {SCORE_METHODS}")
        q = np.asarray(x)
        if q.ndim == 1:
            q = q[np.newaxis, :]
        if q.ndim != 2:
            raise ValueError(f"queries must be [B, D] or [D], got shape {np.shape(x)}")
        if q.shape[1] != self.dim:
            raise ValueError(
                f"query embedding dimension {q.shape[1]} does not match the bank's dimension "
                f"{self.dim}"
            )
        if not np.all(np.isfinite(q)):
            raise ValueError("query embeddings contain NaN or inf")
        qn = normalise(q)
        best = np.full(qn.shape[0], np.inf, dtype=np.float32)
        if qn.shape[0] == 0:
            return best
        # Chunk the bank (columns) so [B, chunk] stays within the budget for any B.
        step = _rows_per_chunk(qn.shape[0])
        for start in range(0, self.size, step):
            stop = min(self.size, start + step)
            d = _cosine_distance(qn, self._embeddings[start:stop])
            if method == "density":
                d /= self._rho_floored[start:stop]
            elif method == "difference":
                d -= self._rho[start:stop]
            np.minimum(best, d.min(axis=1), out=best)
        return best
