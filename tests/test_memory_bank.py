"""MemoryBank: brute-force references, chunking, duplicates, validation."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.detection import memory_bank
from edge_asd.detection.memory_bank import (
    NO_EXCLUSION,
    RHO_FLOOR,
    WHOLE_GROUP,
    MemoryBank,
    compute_rho,
    exclusion_windows_for,
    normalise,
)

DIM = 8


def _brute_rho(
    bank: np.ndarray,
    k: int,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    exclusion: int = NO_EXCLUSION,
) -> np.ndarray:
    """rho_K by explicit loops over all pairs (self excluded by index; with groups, also the
    same-group entries whose positions differ by less than `exclusion`)."""
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    n = len(unit)
    rho = np.empty(n)
    for i in range(n):
        dists = []
        for j in range(n):
            if j == i:
                continue
            if (
                groups is not None
                and positions is not None
                and groups[i] == groups[j]
                and abs(int(positions[i]) - int(positions[j])) < exclusion
            ):
                continue
            dists.append((1.0 - float(unit[i] @ unit[j])) / 2.0)
        rho[i] = np.mean(sorted(dists)[:k])
    return rho


def _brute_scores(bank: np.ndarray, queries: np.ndarray, k: int, method: str) -> np.ndarray:
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    rho = _brute_rho(bank, k)
    out = []
    for q in queries:
        qu = q / np.linalg.norm(q)
        best = np.inf
        for y, r in zip(unit, rho, strict=True):
            d = (1.0 - float(qu @ y)) / 2.0
            if method == "density":
                value = d / max(r, RHO_FLOOR)
            elif method == "difference":
                value = d - r
            else:
                value = d
            best = min(best, value)
        out.append(best)
    return np.array(out)


def _bank_with_duplicates(rng: np.random.Generator, n: int = 40) -> np.ndarray:
    bank = rng.normal(size=(n, DIM))
    bank[5] = bank[3]  # an exact duplicate pair
    bank[7] = 3.0 * bank[3]  # same direction, other norm: a duplicate after normalisation
    return bank


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("method", ["density", "difference", "raw"])
def test_scores_match_brute_force(k: int, method: str) -> None:
    rng = np.random.default_rng(1)
    bank = _bank_with_duplicates(rng)
    queries = np.concatenate([rng.normal(size=(12, DIM)), bank[:3]])
    got = MemoryBank(bank, k=k).score(queries, method)
    want = _brute_scores(bank, queries, k, method)
    assert got.shape == (len(queries),)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_rho_matches_brute_force_and_counts_duplicates_as_zero() -> None:
    rng = np.random.default_rng(2)
    bank = _bank_with_duplicates(rng)
    mb = MemoryBank(bank, k=1)
    np.testing.assert_allclose(mb.rho, _brute_rho(bank, 1), atol=1e-6)
    # Entries 3, 5, 7 are the same direction: their nearest other is a duplicate.
    assert np.all(mb.rho[[3, 5, 7]] < 1e-6)
    # With K = 3 the duplicates only fill two of the three neighbours.
    assert np.all(MemoryBank(bank, k=3).rho[[3, 5, 7]] > 1e-4)
    # Density stays finite for a query that hits a duplicate exactly.
    assert np.all(np.isfinite(mb.score(bank[3], "density")))


def test_chunked_rho_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    unit = normalise(rng.normal(size=(300, 16)))
    whole = compute_rho(unit, 4)
    # A budget of a few rows forces many chunks, including a ragged last one.
    monkeypatch.setattr(memory_bank, "CHUNK_BUDGET_BYTES", 7 * 4 * 300)
    chunked = compute_rho(unit, 4)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)
    queries = rng.normal(size=(50, 16))
    small = MemoryBank(unit, k=4).score(queries)
    monkeypatch.undo()
    np.testing.assert_allclose(small, MemoryBank(unit, k=4).score(queries), rtol=1e-6)


def test_scores_invariant_to_embedding_norms() -> None:
    rng = np.random.default_rng(4)
    bank = rng.normal(size=(60, DIM))
    queries = rng.normal(size=(10, DIM))
    scales_bank = rng.uniform(0.01, 100.0, size=(60, 1))
    scales_query = rng.uniform(0.01, 100.0, size=(10, 1))
    for method in ("density", "difference", "raw"):
        a = MemoryBank(bank, k=2).score(queries, method)
        b = MemoryBank(bank * scales_bank, k=2).score(queries * scales_query, method)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_density_equalises_a_sparse_domain() -> None:
    """Normal queries from a sparse and a dense cluster get similar density scores, although their
    raw distances differ by the spread ratio (the point of the normalisation)."""
    rng = np.random.default_rng(5)
    centre_a, centre_b = np.eye(32)[0], np.eye(32)[1]
    dense = centre_a + 0.02 * rng.normal(size=(400, 32))
    sparse = centre_b + 0.2 * rng.normal(size=(400, 32))
    mb = MemoryBank(np.concatenate([dense, sparse]), k=1)
    q_dense = centre_a + 0.02 * rng.normal(size=(100, 32))
    q_sparse = centre_b + 0.2 * rng.normal(size=(100, 32))
    raw_ratio = np.median(mb.score(q_sparse, "raw")) / np.median(mb.score(q_dense, "raw"))
    den_ratio = np.median(mb.score(q_sparse)) / np.median(mb.score(q_dense))
    assert raw_ratio > 10.0
    assert 0.5 < den_ratio < 2.0


def test_single_query_vector_and_properties() -> None:
    rng = np.random.default_rng(6)
    bank = rng.normal(size=(20, DIM))
    mb = MemoryBank(bank, k=2, labels=[f"d{i % 2}" for i in range(20)])
    out = mb.score(bank[0] + 0.01)
    assert out.shape == (1,)
    assert (mb.size, mb.dim, mb.k, len(mb)) == (20, DIM, 2, 20)
    assert mb.labels is not None and mb.labels[:2] == ["d0", "d1"]
    np.testing.assert_allclose(np.linalg.norm(mb.embeddings, axis=1), 1.0, rtol=1e-6)
    assert mb.embeddings.dtype == np.float32


def test_given_rho_is_used_without_recomputation() -> None:
    rng = np.random.default_rng(7)
    bank = rng.normal(size=(20, DIM))
    rho = np.full(20, 0.25, dtype=np.float32)
    mb = MemoryBank(bank, k=1, rho=rho)
    np.testing.assert_array_equal(mb.rho, rho)
    raw = mb.score(bank[:3] + 0.1, "raw")
    np.testing.assert_allclose(mb.score(bank[:3] + 0.1, "density"), raw / 0.25, rtol=1e-5)


def test_validation_errors() -> None:
    rng = np.random.default_rng(8)
    bank = rng.normal(size=(10, DIM))
    mb = MemoryBank(bank)
    with pytest.raises(ValueError, match=r"dimension 5 .* dimension 8"):
        mb.score(np.ones((2, 5)))
    bad = np.ones((2, DIM))
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mb.score(bad)
    with pytest.raises(ValueError, match="unknown scoring method"):
        mb.score(bank[:1], "lof")
    with pytest.raises(ValueError, match="k must be"):
        MemoryBank(bank, k=10)
    with pytest.raises(ValueError, match="k must be"):
        MemoryBank(bank, k=0)
    nan_bank = bank.copy()
    nan_bank[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        MemoryBank(nan_bank)
    with pytest.raises(ValueError, match="labels"):
        MemoryBank(bank, labels=["a"])
    with pytest.raises(ValueError, match="rho"):
        MemoryBank(bank, rho=np.ones(3))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        MemoryBank(np.ones(DIM))


def test_large_bank_rho_is_feasible() -> None:
    """A 20 000 x 128 bank: rho by chunks; spot-check a few rows against a direct computation."""
    rng = np.random.default_rng(9)
    unit = normalise(rng.normal(size=(20_000, 128)).astype(np.float32))
    mb = MemoryBank(unit, k=1)
    for i in (0, 12_345, 19_999):
        d = (1.0 - unit @ unit[i]) / 2.0
        d[i] = np.inf
        want = d.min()
        assert mb.rho[i] == pytest.approx(want, rel=1e-4)
    assert mb.score(unit[:64] * 0.5 + rng.normal(size=(64, 128)) * 0.01).shape == (64,)


# --- rho with near-duplicate neighbours excluded ------------------------------------------------

N_GROUPS = 6
WINDOWS_PER_GROUP = 9


def _grouped_bank(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips as random walks (neighbouring windows are near-duplicates, as overlapping windows
    are), entries shuffled so that groups are not contiguous in the bank."""
    steps = 0.05 * rng.normal(size=(N_GROUPS, WINDOWS_PER_GROUP, DIM))
    walks = rng.normal(size=(N_GROUPS, 1, DIM)) + np.cumsum(steps, axis=1)
    bank = walks.reshape(-1, DIM)
    groups = np.repeat(np.arange(N_GROUPS), WINDOWS_PER_GROUP)
    positions = np.tile(np.arange(WINDOWS_PER_GROUP), N_GROUPS)
    order = rng.permutation(len(bank))
    return bank[order], groups[order], positions[order]


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("exclusion", [NO_EXCLUSION, 1, 2, 3, WHOLE_GROUP])
def test_rho_with_exclusion_matches_brute_force(k: int, exclusion: int) -> None:
    rng = np.random.default_rng(20)
    bank, groups, positions = _grouped_bank(rng)
    mb = MemoryBank(bank, k=k, groups=groups, positions=positions, exclusion_windows=exclusion)
    want = _brute_rho(bank, k, groups, positions, exclusion)
    np.testing.assert_allclose(mb.rho, want, rtol=1e-4, atol=1e-6)
    # Queries are never in the bank: scoring is the same formula with this rho.
    queries = rng.normal(size=(7, DIM))
    for method in ("density", "difference", "raw"):
        same_rho = MemoryBank(bank, k=k, rho=mb.rho).score(queries, method)
        np.testing.assert_allclose(mb.score(queries, method), same_rho, rtol=1e-6)
    assert mb.exclusion_windows == exclusion
    assert mb.groups is not None and mb.positions is not None
    np.testing.assert_array_equal(mb.groups, groups)


def test_excluding_overlapping_neighbours_raises_rho() -> None:
    rng = np.random.default_rng(21)
    bank, groups, positions = _grouped_bank(rng)
    rho = {
        e: MemoryBank(bank, k=1, groups=groups, positions=positions, exclusion_windows=e).rho
        for e in (NO_EXCLUSION, 2, WHOLE_GROUP)
    }
    # Each exclusion only removes candidates, so rho never falls; the random walk makes the
    # same clip's neighbours the nearest, so excluding them raises rho for most entries.
    assert np.all(rho[2] >= rho[NO_EXCLUSION] - 1e-7)
    assert np.all(rho[WHOLE_GROUP] >= rho[2] - 1e-7)
    assert np.mean(rho[WHOLE_GROUP] > rho[NO_EXCLUSION]) > 0.5
    # Without groups, exclusion_windows changes nothing (today's behaviour).
    np.testing.assert_array_equal(
        MemoryBank(bank, k=1, exclusion_windows=WHOLE_GROUP).rho, rho[NO_EXCLUSION]
    )


def test_duplicates_across_groups_count_within_the_zone_do_not() -> None:
    rng = np.random.default_rng(22)
    bank = rng.normal(size=(12, DIM))
    bank[7] = bank[2]  # same content, other clip: a genuine neighbour at distance 0
    bank[1] = bank[0]  # same content, next window of the same clip: excluded
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    positions = np.tile(np.arange(4), 3)
    mb = MemoryBank(bank, k=1, groups=groups, positions=positions, exclusion_windows=2)
    assert mb.rho[2] < 1e-6 and mb.rho[7] < 1e-6
    assert mb.rho[0] > 1e-4 and mb.rho[1] > 1e-4
    whole = MemoryBank(bank, k=1, groups=groups, positions=positions, exclusion_windows=WHOLE_GROUP)
    assert whole.rho[2] < 1e-6 and whole.rho[0] > 1e-4


def test_chunked_rho_with_exclusion_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(23)
    unit = normalise(rng.normal(size=(300, 16)))
    groups = rng.integers(0, 15, size=300)
    positions = rng.integers(0, 40, size=300)
    kwargs = {"groups": groups, "positions": positions}
    whole = {e: compute_rho(unit, 3, exclusion_windows=e, **kwargs) for e in (2, WHOLE_GROUP)}
    # Random positions repeat within a group and arrive unsorted: still exact.
    want = _brute_rho(unit, 3, groups, positions, 2)
    np.testing.assert_allclose(whole[2], want, rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(memory_bank, "CHUNK_BUDGET_BYTES", 7 * 4 * 300)
    for e, want in whole.items():
        chunked = compute_rho(unit, 3, exclusion_windows=e, **kwargs)
        np.testing.assert_allclose(chunked, want, rtol=1e-6, atol=1e-7)


def test_too_few_allowed_neighbours_is_a_clear_error() -> None:
    rng = np.random.default_rng(24)
    bank = rng.normal(size=(10, DIM))
    one_group = np.zeros(10, dtype=np.int64)
    with pytest.raises(ValueError, match=r"group 0\) has fewer than k=1 neighbours"):
        MemoryBank(bank, groups=one_group, positions=np.arange(10), exclusion_windows=WHOLE_GROUP)
    two_groups = np.repeat([0, 1], 5)
    with pytest.raises(ValueError, match="fewer than k=6"):
        MemoryBank(
            bank,
            k=6,
            groups=two_groups,
            positions=np.tile(np.arange(5), 2),
            exclusion_windows=WHOLE_GROUP,
        )
    # Five entries of the other group are enough for k = 5.
    MemoryBank(
        bank,
        k=5,
        groups=two_groups,
        positions=np.tile(np.arange(5), 2),
        exclusion_windows=WHOLE_GROUP,
    )


def test_group_validation() -> None:
    bank = np.random.default_rng(25).normal(size=(10, DIM))
    with pytest.raises(ValueError, match="together"):
        MemoryBank(bank, groups=np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="groups has shape"):
        MemoryBank(bank, groups=np.zeros(9, dtype=int), positions=np.arange(10))
    with pytest.raises(ValueError, match="positions must be integers"):
        MemoryBank(bank, groups=np.zeros(10, dtype=int), positions=np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="exclusion_windows"):
        compute_rho(normalise(bank), 1, exclusion_windows=-1)


def test_exclusion_windows_for_scopes() -> None:
    second, half, tenth = 16_000, 8_000, 1_600
    assert exclusion_windows_for("all", second, half) == NO_EXCLUSION
    # 1 s windows every 0.5 s: only the next window overlaps (|index difference| < 2).
    assert exclusion_windows_for("non_overlapping", second, half) == 2
    # Every 0.1 s: windows up to 9 hops apart overlap.
    assert exclusion_windows_for("non_overlapping", second, tenth) == 10
    assert exclusion_windows_for("non_overlapping", second, 6_000) == 3
    assert exclusion_windows_for("non_overlapping", second, 2 * second) == 1
    assert exclusion_windows_for("other_groups", second, half) == WHOLE_GROUP
    with pytest.raises(ValueError, match="unknown rho scope"):
        exclusion_windows_for("nearest", second, half)


def test_large_grouped_bank_rho_is_feasible() -> None:
    """5 000 entries in clips of 20 windows, overlapping neighbours excluded: spot-checks."""
    rng = np.random.default_rng(26)
    n, per_clip = 5_000, 20
    unit = normalise(rng.normal(size=(n, 64)).astype(np.float32))
    groups = np.arange(n) // per_clip
    positions = np.arange(n) % per_clip
    mb = MemoryBank(unit, k=1, groups=groups, positions=positions, exclusion_windows=2)
    for i in (0, 4_321, n - 1):
        d = (1.0 - unit @ unit[i]) / 2.0
        d[(groups == groups[i]) & (np.abs(positions - positions[i]) < 2)] = np.inf
        assert mb.rho[i] == pytest.approx(d.min(), rel=1e-4)
