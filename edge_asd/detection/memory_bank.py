"""Memory bank of normal embeddings: cosine kNN with local-density normalisation.

The score of a query x against the reference set R (docs/method.md, section 1):

- ``density`` (default): min over y in R of d(x, y) / rho_K(y)
- ``difference``: min over y of d(x, y) - rho_K(y)
- ``raw``: min over y of d(x, y)

with the cosine distance d(x, y) = (1 - x.y) / 2 on L2-normalised embeddings (in [0, 1]) and
rho_K(y) the mean distance of y to its K nearest OTHER items of R.

Which items count as "other" for rho: the paper computes rho over independent reference items,
but a bank of 50 %-overlapping windows holds near-duplicates of every entry (its neighbours in
time), so rho_1 would measure how smooth a clip is rather than how dense the domain is. With
per-entry ``groups`` (the clip or contiguous stretch a window came from) and ``positions``
(window index within it), entries of one group whose positions differ by less than
``exclusion_windows`` are never each other's neighbours for rho (see ``vocabulary.RhoScope``).
Exact duplicates in different groups still count, with distance 0. Query scoring is unaffected:
a query is never in the bank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Final

import numpy as np

from edge_asd.detection.methods import DEFAULT_SCORE_METHOD, adjust_distances, check_method
from edge_asd.detection.vocabulary import RHO_SCOPES

_LOGGER = logging.getLogger(__name__)

NO_EXCLUSION: Final = 0
"""exclusion_windows for the ``all`` scope: only the entry itself is excluded (by index)."""
WHOLE_GROUP: Final = np.iinfo(np.int64).max
"""exclusion_windows for the ``other_groups`` scope: larger than any position difference."""

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


def exclusion_windows_for(scope: str, window_samples: int, hop_samples: int) -> int:
    """exclusion_windows that implements `scope` for windows of `window_samples` every
    `hop_samples`: windows whose index differs by less than ceil(window / hop) overlap in time."""
    if scope not in RHO_SCOPES:
        raise ValueError(f"unknown rho scope {scope!r}; expected one of {RHO_SCOPES}")
    if window_samples <= 0 or hop_samples <= 0:
        raise ValueError(
            f"window_samples ({window_samples}) and hop_samples ({hop_samples}) must be positive"
        )
    if scope == "all":
        return NO_EXCLUSION
    if scope == "other_groups":
        return int(WHOLE_GROUP)
    return math.ceil(window_samples / hop_samples)


def _check_groups(
    groups: np.ndarray | Sequence[int] | None,
    positions: np.ndarray | Sequence[int] | None,
    n: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """int64 copies of groups and positions, validated; both given or neither."""
    if groups is None and positions is None:
        return None, None
    if groups is None or positions is None:
        raise ValueError("groups and positions must be given together")
    g = np.asarray(groups)
    p = np.asarray(positions)
    for name, arr in (("groups", g), ("positions", p)):
        if arr.shape != (n,):
            raise ValueError(f"{name} has shape {arr.shape} but the bank has {n} entries")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    return g.astype(np.int64), p.astype(np.int64)


def _close_pairs(
    groups: np.ndarray, positions: np.ndarray, exclusion_windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of all ordered pairs i != j in one group with |position difference| <
    exclusion_windows, sorted by row. O(N x exclusion_windows) memory, however large a group:
    after sorting by (group, position) the partners of an entry are its next few neighbours."""
    order = np.lexsort((positions, groups))
    g, p = groups[order], positions[order]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    offset = 1
    while offset < order.size:
        # Sorted, so if no pair qualifies at this offset, none does at a larger one.
        close = (g[offset:] == g[:-offset]) & (p[offset:] - p[:-offset] < exclusion_windows)
        if not close.any():
            break
        a, b = order[:-offset][close], order[offset:][close]
        rows += [a, b]
        cols += [b, a]
        offset += 1
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    r, c = np.concatenate(rows), np.concatenate(cols)
    by_row = np.argsort(r, kind="stable")
    return r[by_row], c[by_row]


def compute_rho(
    normalised: np.ndarray,
    k: int,
    *,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    exclusion_windows: int = NO_EXCLUSION,
) -> np.ndarray:
    """rho_K for every row of an L2-normalised [N, D] bank, float32 [N].

    Self-matches are excluded by index, not by distance, so exact duplicates count with distance
    0. With `groups` and `positions`, entries of the same group whose positions differ by less
    than `exclusion_windows` are not neighbours either (0 or no groups: only the entry itself).
    Rows are processed in chunks so that N x N is never materialised (N = 50 000 stays within
    a few hundred MB). Raises ValueError when an entry has fewer than k allowed neighbours.
    """
    n = normalised.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for a bank of {n} entries, got {k}")
    if exclusion_windows < 0:
        raise ValueError(f"exclusion_windows must be >= 0, got {exclusion_windows}")
    g, p = _check_groups(groups, positions, n)
    # A position difference < 1 is the entry itself, which is excluded anyway.
    exclude = g is not None and p is not None and exclusion_windows > 1
    whole_group = exclusion_windows >= WHOLE_GROUP
    pair_rows = pair_cols = np.zeros(0, dtype=np.int64)
    if exclude and not whole_group:
        assert g is not None and p is not None  # for mypy: implied by `exclude`
        pair_rows, pair_cols = _close_pairs(g, p, exclusion_windows)
    rho = np.empty(n, dtype=np.float32)
    step = _rows_per_chunk(n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        # Work on similarities (nearest = largest) to save passes over the [rows, N] block.
        sims = normalised[start:stop] @ normalised.T
        rows = np.arange(stop - start)
        sims[rows, start + rows] = -np.inf
        if exclude and whole_group:
            assert g is not None  # for mypy: implied by `exclude`
            # A bool [rows, N] block: a quarter of the float one.
            sims[g[start:stop, np.newaxis] == g[np.newaxis, :]] = -np.inf
        elif exclude:
            lo, hi = np.searchsorted(pair_rows, [start, stop])
            sims[pair_rows[lo:hi] - start, pair_cols[lo:hi]] = -np.inf
        if k == 1:
            top = sims.max(axis=1, keepdims=True)  # much faster than a partition
        else:
            top = np.partition(sims, n - k, axis=1)[:, n - k :]
        starved = np.isneginf(top).any(axis=1)
        if starved.any():
            first = start + int(np.argmax(starved))
            group = "" if g is None else f" (group {int(g[first])})"
            raise ValueError(
                f"bank entry {first}{group} has fewer than k={k} neighbours outside its "
                f"exclusion zone ({int(np.count_nonzero(starved))} entries in rows "
                f"{start}..{stop - 1}); give more clips, a smaller k, or a rho scope that "
                "excludes fewer neighbours"
            )
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
        groups: np.ndarray | Sequence[int] | None = None,
        positions: np.ndarray | Sequence[int] | None = None,
        exclusion_windows: int = NO_EXCLUSION,
    ) -> None:
        """`groups` / `positions`: int per entry, the clip (or stretch) it came from and its
        window index there; with `exclusion_windows` > 1 they keep near-duplicates out of rho
        (see `compute_rho`). Ignored when `rho` is given, except that they are validated and
        kept for saving."""
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
        self._groups, self._positions = _check_groups(groups, positions, n)
        if exclusion_windows < 0:
            raise ValueError(f"exclusion_windows must be >= 0, got {exclusion_windows}")
        self._exclusion_windows = int(exclusion_windows)
        if rho is None:
            raw_rho = compute_rho(
                self._embeddings,
                self._k,
                groups=self._groups,
                positions=self._positions,
                exclusion_windows=self._exclusion_windows,
            )
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
        for arr in (self._groups, self._positions):
            if arr is not None:
                arr.setflags(write=False)

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
    def groups(self) -> np.ndarray | None:
        """int64 [N] group (clip / stretch) of each entry, or None (read-only)."""
        return self._groups

    @property
    def positions(self) -> np.ndarray | None:
        """int64 [N] window index of each entry within its group, or None (read-only)."""
        return self._positions

    @property
    def exclusion_windows(self) -> int:
        """Same-group entries closer than this many windows are not neighbours for rho."""
        return self._exclusion_windows

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
        check_method(method)
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
            adjust_distances(method, d, self._rho[start:stop], self._rho_floored[start:stop])
            np.minimum(best, d.min(axis=1), out=best)
        return best
