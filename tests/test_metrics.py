"""Tests for edge_asd.offline.metrics against values computed by hand (see the comments)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_asd.offline import metrics
from edge_asd.offline.metrics import (
    PairedScores,
    dcase_section_metrics,
    official_score,
    paired_bootstrap,
)


def test_roc_auc_without_ties() -> None:
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3/4.
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_roc_auc_ties_count_one_half() -> None:
    # Positives 0.5, 0.9 vs negatives 0.5, 0.2: 0.5~0.5 tie (1/2), 0.5>0.2 (1), 0.9 wins both (2)
    # -> 3.5 / 4.
    assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    # All scores equal: the ROC curve is the diagonal.
    assert metrics.roc_auc([0, 1, 0, 1], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.5)


def test_roc_auc_extremes_and_label_types() -> None:
    assert metrics.roc_auc([False, True], [0.0, 1.0]) == pytest.approx(1.0)
    assert metrics.roc_auc([True, False], [0.0, 1.0]) == pytest.approx(0.0)


def test_roc_curve_drops_collinear_points() -> None:
    # Sorted: 0.9 P, 0.8 N, 0.6 N, 0.4 N, 0.3 P, 0.2 N (2 positives, 4 negatives).
    # Full curve (0,0) (0,.5) (.25,.5) (.5,.5) (.75,.5) (.75,1) (1,1); the two middle points of
    # the flat run are collinear and dropped, as sklearn's drop_intermediate=True does.
    fpr, tpr = metrics.roc_curve([1, 0, 0, 0, 1, 0], [0.9, 0.8, 0.6, 0.4, 0.3, 0.2])
    np.testing.assert_allclose(fpr, [0, 0, 0.75, 0.75, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])


def test_partial_auc_flat_segment() -> None:
    # Same data: at FPR 0.1 the curve is on the flat segment (0,.5)-(.75,.5) -> TPR 0.5.
    # Area up to 0.1 = 0.1 * 0.5 = 0.05; McClish with min 0.005, max 0.1:
    # 0.5 * (1 + (0.05 - 0.005) / 0.095) = 70/95 = 14/19.
    got = metrics.partial_auc([1, 0, 0, 0, 1, 0], [0.9, 0.8, 0.6, 0.4, 0.3, 0.2])
    assert got == pytest.approx(14 / 19)


def test_partial_auc_interpolates_a_tie_diagonal() -> None:
    # Positives 0.9, 0.7; negatives 0.7, 0.5, 0.3, 0.1. Curve: (0,0) (0,.5) (.25,1) (1,1)
    # (the 0.7 tie moves diagonally). At FPR 0.1: TPR = 0.5 + 0.5 * 0.1/0.25 = 0.7.
    # Area = 0.1 * (0.5 + 0.7) / 2 = 0.06 -> 0.5 * (1 + 0.055 / 0.095) = 75/95 = 15/19.
    y = [1, 1, 0, 0, 0, 0]
    s = [0.9, 0.7, 0.7, 0.5, 0.3, 0.1]
    assert metrics.partial_auc(y, s) == pytest.approx(15 / 19)
    # Full AUC: 0.9 wins 4, 0.7 ties one (1/2) and wins 3 -> 7.5/8.
    assert metrics.roc_auc(y, s) == pytest.approx(0.9375)
    assert metrics.partial_auc(y, s, max_fpr=1.0) == pytest.approx(0.9375)


def test_partial_auc_extremes() -> None:
    # Perfect ranking -> 1. All negatives first -> area 0 -> 0.5 * (1 - 0.005/0.095) = 9/19.
    assert metrics.partial_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(1.0)
    assert metrics.partial_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(9 / 19)


def test_partial_auc_other_max_fpr() -> None:
    # Positives 0.9, 0.7; negatives 0.7, 0.5, 0.3, 0.1 as above; max_fpr 0.5:
    # curve to 0.5: (0,0) (0,.5) (.25,1) (.5,1): area = .25*.75 + .25*1 = 0.4375;
    # McClish: 0.5 * (1 + (0.4375 - 0.125) / (0.5 - 0.125)) = 0.5 * (1 + 0.8333) = 11/12.
    got = metrics.partial_auc([1, 1, 0, 0, 0, 0], [0.9, 0.7, 0.7, 0.5, 0.3, 0.1], max_fpr=0.5)
    assert got == pytest.approx(11 / 12)


def test_auc_errors() -> None:
    with pytest.raises(ValueError, match="both classes"):
        metrics.roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="max_fpr"):
        metrics.partial_auc([0, 1], [0.1, 0.2], max_fpr=0.0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.1, float("nan")])


def test_harmonic_mean() -> None:
    # 2 / (1/0.5 + 1/1) = 2/3.
    assert metrics.harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert metrics.harmonic_mean([0.8, 0.6, 0.0]) == 0.0
    assert metrics.harmonic_mean([0.7]) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        metrics.harmonic_mean([])
    with pytest.raises(ValueError):
        metrics.harmonic_mean([0.5, -0.1])


def test_dcase_section_metrics_by_hand() -> None:
    # source normals 0.1, 0.2; target normals 0.6, 0.3; anomalies 0.5 (source), 0.4 (target).
    # AUC_source: {0.1, 0.2} vs {0.5, 0.4} -> 1.0.
    # AUC_target: {0.6, 0.3} vs {0.5, 0.4}: only the 0.3 pairs are won -> 2/4 = 0.5.
    # pAUC over all 6: 0.6 (normal) is on top, so at FPR 0.1 TPR is 0 -> area 0 -> 9/19.
    # Official: hmean(1, 0.5, 9/19) = 3 / (1 + 2 + 19/9) = 27/46.
    is_anomaly = [False, False, False, False, True, True]
    scores = [0.1, 0.2, 0.6, 0.3, 0.5, 0.4]
    domains = ["source", "source", "target", "target", "source", "target"]
    section = metrics.dcase_section_metrics(is_anomaly, scores, domains)
    assert section.auc_source == pytest.approx(1.0)
    assert section.auc_target == pytest.approx(0.5)
    assert section.pauc == pytest.approx(9 / 19)
    assert (section.n_source_normal, section.n_target_normal, section.n_anomaly) == (2, 2, 2)
    assert metrics.official_score([section]) == pytest.approx(27 / 46)
    assert section.to_dict()["auc_target"] == pytest.approx(0.5)


def test_section_without_target_leaves_it_out() -> None:
    # DCASE 2020 style: source only. AUC_source = pAUC = 1 here (perfect), second section:
    # normals 0.5, 0.1 vs anomaly 0.3 -> AUC 0.5; pAUC: 0.5 on top -> 9/19.
    perfect = metrics.dcase_section_metrics([0, 0, 1], [0.1, 0.2, 0.9], ["source"] * 3)
    half = metrics.dcase_section_metrics([0, 0, 1], [0.5, 0.1, 0.3], ["source"] * 3)
    assert perfect.auc_target is None
    assert perfect.values() == pytest.approx([1.0, 1.0])
    assert half.values() == pytest.approx([0.5, 9 / 19])
    # hmean(1, 1, 0.5, 9/19) = 4 / (1 + 1 + 2 + 19/9) = 36/55.
    assert metrics.official_score([perfect, half]) == pytest.approx(36 / 55)


def test_section_errors() -> None:
    with pytest.raises(ValueError, match="no anomalous clips"):
        metrics.dcase_section_metrics([0, 0], [0.1, 0.2], ["source", "target"])
    with pytest.raises(ValueError, match="domains must be"):
        metrics.dcase_section_metrics([0, 1], [0.1, 0.2], ["source", "elsewhere"])
    with pytest.raises(ValueError, match="no source-domain normal"):
        metrics.dcase_section_metrics([0, 1], [0.1, 0.2], ["target", "target"])


@st.composite
def _labelled_scores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(min_value=2, max_value=40))
    labels = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    labels[0], labels[1] = False, True  # both classes present
    # Few distinct values, so ties are common.
    scores = draw(st.lists(st.integers(min_value=0, max_value=6), min_size=n, max_size=n))
    return np.array(labels), np.array(scores, dtype=np.float64)


@given(_labelled_scores())
@settings(max_examples=200, deadline=None)
def test_auc_properties(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    auc = metrics.roc_auc(y, s)
    # Mann-Whitney: share of (positive, negative) pairs ranked right, ties one half.
    pos, neg = s[y], s[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc == pytest.approx(wins / (pos.size * neg.size))
    # Flipping the labels mirrors the AUC; a monotone transform of the scores changes nothing.
    assert metrics.roc_auc(~y, s) == pytest.approx(1 - auc)
    assert metrics.roc_auc(y, np.exp(s / 3)) == pytest.approx(auc)
    pauc = metrics.partial_auc(y, s)
    assert metrics.partial_auc(y, 2 * s + 1) == pytest.approx(pauc)
    # McClish range: the lowest possible area (all negatives first) gives 9/19, not 0.
    assert 9 / 19 - 1e-12 <= pauc <= 1 + 1e-12


def _paired_section(rng: np.random.Generator, separation: float) -> PairedScores:
    """12 normal + 12 anomalous clips (source and target); `first` separates them by
    `separation` standard deviations, `second` not at all."""
    is_anomaly = [False] * 12 + [True] * 12
    domains = (["source"] * 8 + ["target"] * 4) * 2
    labels = np.array(is_anomaly, dtype=float)
    first = rng.normal(size=24) + separation * labels
    second = rng.normal(size=24)
    return PairedScores(is_anomaly, domains, first.tolist(), second.tolist())


def test_paired_bootstrap_finds_a_clear_difference_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    sections = {"a": _paired_section(rng, 4.0), "b": _paired_section(rng, 4.0)}
    groups = {"all": ["a", "b"], "a": ["a"]}
    result = paired_bootstrap(sections, groups, rounds=200, seed=1)
    assert set(result) == {"all", "a"}
    for r in result.values():
        assert r.low <= r.difference <= r.high
        assert r.low > 0.0
    again = paired_bootstrap(sections, groups, rounds=200, seed=1)
    assert again == result

    # The observed difference is the official score of one minus that of the other.
    def score(system: str) -> float:
        return official_score(
            dcase_section_metrics(s.is_anomaly, getattr(s, system), s.domains)
            for s in sections.values()
        )

    assert result["all"].difference == pytest.approx(score("first") - score("second"))


def test_paired_bootstrap_of_a_system_against_itself_is_zero() -> None:
    s = _paired_section(np.random.default_rng(2), 1.0)
    same = PairedScores(s.is_anomaly, s.domains, s.first, s.first)
    r = paired_bootstrap({"x": same}, {"all": ["x"]}, rounds=50)["all"]
    assert r.difference == r.low == r.high == 0.0


def test_paired_bootstrap_rejects_unknown_sections() -> None:
    s = _paired_section(np.random.default_rng(3), 1.0)
    with pytest.raises(ValueError, match="not given"):
        paired_bootstrap({"x": s}, {"all": ["x", "y"]}, rounds=10)
