"""Pretraining objectives against hand-computed values."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from edge_asd.pretrain.losses import (  # noqa: E402
    ObjectiveConfig,
    alignment_distance,
    mixture_target,
    objective_loss,
    source_tags,
    tag_union,
    tagging_loss,
)

LN2 = math.log(2.0)
INV_SQRT2 = 1.0 / math.sqrt(2.0)


def t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_cosine_distance_hand_computed() -> None:
    pred = t([[1.0, 0.0], [0.0, 1.0]])
    target = t([[2.0, 0.0], [1.0, 1.0]])
    # Row 0: same direction, 0. Row 1: cos = 1/sqrt(2). Mean of the two.
    expected = (0.0 + (1.0 - INV_SQRT2)) / 2.0
    assert alignment_distance(pred, target, "cosine").item() == pytest.approx(expected, abs=1e-6)


def test_mse_distance_hand_computed() -> None:
    pred = t([[1.0, 2.0], [0.0, 0.0]])
    target = t([[0.0, 0.0], [1.0, 1.0]])
    # Row 0: (1 + 4) / 2 = 2.5; row 1: (1 + 1) / 2 = 1; mean 1.75.
    assert alignment_distance(pred, target, "mse").item() == pytest.approx(1.75)


def test_distance_of_empty_batch_is_zero_and_shapes_must_match() -> None:
    empty = torch.zeros((0, 3))
    assert alignment_distance(empty, empty, "cosine").item() == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        alignment_distance(torch.zeros(2, 3), torch.zeros(2, 4), "mse")
    with pytest.raises(ValueError, match="distance"):
        alignment_distance(torch.zeros(2, 3), torch.zeros(2, 3), "l1")  # type: ignore[arg-type]


def test_mixture_target_is_convex_combination() -> None:
    t_c, t_n = t([[2.0, 4.0]]), t([[0.0, 8.0]])
    assert mixture_target(t_c, t_n, 0.5).tolist() == [[1.0, 6.0]]
    assert mixture_target(t_c, t_n, 0.25).tolist() == [[0.5, 7.0]]
    assert mixture_target(t_c, t_n, 1.0).tolist() == [[2.0, 4.0]]


def test_source_tags_and_union_are_elementwise_max() -> None:
    hard = t([[0.0, 1.0, 0.0]])
    soft = t([[0.3, 0.1, 0.9]])
    assert source_tags(hard, soft)[0].tolist() == pytest.approx([0.3, 1.0, 0.9])
    assert source_tags(hard, torch.zeros(1, 0)).tolist() == [[0.0, 1.0, 0.0]]
    clean = t([[1.0, 0.2, 0.0], [1.0, 0.2, 0.0]])
    noise = t([[0.0, 0.7, 0.4], [0.0, 0.7, 0.4]])
    is_clean = torch.tensor([False, True])
    union = tag_union(clean, noise, is_clean)
    assert union[0].tolist() == pytest.approx([1.0, 0.7, 0.4])
    # A clean example has no noise source: its tags are the clean source's alone.
    assert union[1].tolist() == pytest.approx([1.0, 0.2, 0.0])


def test_tagging_loss_hand_computed() -> None:
    assert tagging_loss(t([[0.0, 0.0]]), t([[1.0, 0.3]])).item() == pytest.approx(LN2)
    # -log(sigmoid(2)) = log(1 + e^-2).
    assert tagging_loss(t([[2.0]]), t([[1.0]])).item() == pytest.approx(math.log1p(math.exp(-2)))


def _batch(projected: list) -> dict:
    """Row 0 clean, row 1 a mixture; teacher dims 2, classes 2."""
    return {
        "projected": t(projected),
        "logits": t([[0.0, 0.0], [0.0, 2.0]]),
        "t_clean": t([[1.0, 0.0], [1.0, 0.0]]),
        "t_noise": t([[5.0, 5.0], [0.0, 2.0]]),  # row 0's noise must be ignored (clean row)
        "clean_tags": t([[1.0, 0.0], [1.0, 0.0]]),
        "noise_tags": t([[0.0, 1.0], [0.0, 1.0]]),
        "is_clean": torch.tensor([True, False]),
    }


# BCE of the logits above: row 0 [0, 0] gives ln 2 twice; row 1 entry 0 (logit 0) gives ln 2;
# row 1 entry 1 (logit 2) gives log(1 + e^-2) against tag 1 and log(1 + e^2) against tag 0.
BCE_UNION = (3 * LN2 + math.log1p(math.exp(-2.0))) / 4
BCE_CLEAN_ONLY = (3 * LN2 + math.log1p(math.exp(2.0))) / 4


def test_retain_cosine_hand_computed() -> None:
    cfg = ObjectiveConfig(name="retain", alpha=2.0, beta=3.0, mix_lambda=0.5, distance="cosine")
    terms = objective_loss(cfg, **_batch([[1.0, 0.0], [0.0, 1.0]]))
    # Mixture row target 0.5 [1, 0] + 0.5 [0, 2] = [0.5, 1]; cos([0, 1], [0.5, 1]) = 1/sqrt(1.25).
    alignment = 1.0 - 1.0 / math.sqrt(1.25)
    assert terms.tagging.item() == pytest.approx(BCE_UNION, abs=1e-6)
    assert terms.alignment.item() == pytest.approx(alignment, abs=1e-6)
    assert terms.retention.item() == pytest.approx(0.0, abs=1e-6)
    assert terms.total.item() == pytest.approx(BCE_UNION + 2.0 * alignment, abs=1e-6)


def test_retain_mse_and_lambda_hand_computed() -> None:
    cfg = ObjectiveConfig(name="retain", alpha=1.0, beta=3.0, mix_lambda=0.25, distance="mse")
    terms = objective_loss(cfg, **_batch([[0.0, 0.0], [0.0, 1.0]]))
    # Target 0.25 [1, 0] + 0.75 [0, 2] = [0.25, 1.5]: ((0.25)^2 + (0.5)^2) / 2 = 0.15625.
    assert terms.alignment.item() == pytest.approx(0.15625, abs=1e-6)
    # Clean row [0, 0] vs T(c) = [1, 0]: (1 + 0) / 2 = 0.5.
    assert terms.retention.item() == pytest.approx(0.5, abs=1e-6)
    assert terms.total.item() == pytest.approx(BCE_UNION + 0.15625 + 3.0 * 0.5, abs=1e-6)


def test_denoise_aligns_to_clean_teacher_and_tags_clean_only() -> None:
    cfg = ObjectiveConfig(name="denoise", alpha=1.0, beta=0.0, distance="cosine")
    terms = objective_loss(cfg, **_batch([[1.0, 0.0], [0.0, 1.0]]))
    # cos([0, 1], T(c) = [1, 0]) = 0.
    assert terms.alignment.item() == pytest.approx(1.0, abs=1e-6)
    assert terms.tagging.item() == pytest.approx(BCE_CLEAN_ONLY, abs=1e-6)
    assert terms.total.item() == pytest.approx(BCE_CLEAN_ONLY + 1.0, abs=1e-6)


def test_tagging_objective_ignores_alignment() -> None:
    cfg = ObjectiveConfig(name="tagging", alpha=5.0, beta=2.0, distance="mse")
    terms = objective_loss(cfg, **_batch([[0.0, 0.0], [9.0, 9.0]]))
    assert terms.alignment.item() == 0.0
    assert terms.total.item() == pytest.approx(BCE_UNION + 2.0 * 0.5, abs=1e-6)


def test_loss_gradients_flow_to_projection() -> None:
    projected = torch.tensor([[0.3, 0.1], [0.2, 0.9]], requires_grad=True)
    batch = _batch([[0.0, 0.0], [0.0, 0.0]])
    batch["projected"] = projected
    objective_loss(ObjectiveConfig(), **batch).total.backward()
    assert projected.grad is not None
    assert torch.all(projected.grad.abs().sum(dim=1) > 0)


def test_objective_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"objective\.name"):
        ObjectiveConfig(name="distill")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mix_lambda"):
        ObjectiveConfig(mix_lambda=1.5)
