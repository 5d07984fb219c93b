"""Pretraining objectives: retain (default), denoise, tagging (docs/method.md, section 2).

Per batch, rows are either mixtures m = c + g n or clean examples m = c (`is_clean`).

- retain:  BCE(logits(m), union of the tags of c and n)
           + alpha * d(P(S(m)), lambda T(c) + (1 - lambda) T(n))   over mixture rows
           + beta  * d(P(S(c)), T(c))                              over clean rows
- denoise: BCE(logits(m), tags of c) + alpha * d(P(S(m)), T(c)) over mixture rows + beta term
- tagging: BCE(logits(m), union of tags) + beta term

Tags of a source are its dataset label (multi-hot) together with the teacher's scores for it
(soft tags); "together" and "union" are both the element-wise max. P is the projection head
(identity where the student's and the teacher's dimensions agree). The beta term is the
anti-forgetting term: it keeps clean-audio embeddings where the teacher has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import torch
from torch import Tensor
from torch.nn import functional

Objective = Literal["retain", "denoise", "tagging"]
Distance = Literal["cosine", "mse"]
OBJECTIVES: Final = ("retain", "denoise", "tagging")
DISTANCES: Final = ("cosine", "mse")
_COS_EPS: Final = 1e-8


def alignment_distance(pred: Tensor, target: Tensor, kind: Distance) -> Tensor:
    """Mean over rows of the distance between `pred` [B, D] and `target` [B, D].

    cosine: 1 - cos(pred, target) per row (in [0, 2]); mse: mean over dims of the squared
    difference per row. An empty batch gives 0 (so a term with no rows contributes nothing).
    """
    if pred.shape != target.shape:
        raise ValueError(f"alignment: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    if kind == "cosine":
        per_row = 1.0 - functional.cosine_similarity(pred, target, dim=1, eps=_COS_EPS)
    elif kind == "mse":
        per_row = (pred - target).pow(2).mean(dim=1)
    else:
        raise ValueError(f"objective.distance: unknown {kind!r} (cosine, mse)")
    return per_row.mean()


def mixture_target(t_clean: Tensor, t_noise: Tensor, mix_lambda: float) -> Tensor:
    """The retain target lambda * T(c) + (1 - lambda) * T(n)."""
    return mix_lambda * t_clean + (1.0 - mix_lambda) * t_noise


def source_tags(hard: Tensor, soft: Tensor | None) -> Tensor:
    """Tags of one source: its dataset multi-hot with the teacher's scores (element-wise max)."""
    return hard if soft is None or soft.shape[1] == 0 else torch.maximum(hard, soft)


def tag_union(clean_tags: Tensor, noise_tags: Tensor, is_clean: Tensor) -> Tensor:
    """Element-wise max of the tags of c and n; clean rows keep the tags of c alone."""
    union = torch.maximum(clean_tags, noise_tags)
    return torch.where(is_clean[:, None], clean_tags, union)


def tagging_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy between sigmoid(logits) and soft targets in [0, 1], mean."""
    return functional.binary_cross_entropy_with_logits(logits, targets.clamp(0.0, 1.0))


@dataclass(frozen=True)
class ObjectiveConfig:
    """The recipe's `objective` section."""

    name: Objective = "retain"
    alpha: float = 1.0
    beta: float = 1.0
    mix_lambda: float = 0.5
    distance: Distance = "cosine"

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective.name: unknown {self.name!r} ({', '.join(OBJECTIVES)})")
        if self.distance not in DISTANCES:
            raise ValueError(f"objective.distance: unknown {self.distance!r}")
        if not 0.0 <= self.mix_lambda <= 1.0:
            raise ValueError(f"objective.mix_lambda: {self.mix_lambda} not in [0, 1]")


@dataclass
class LossTerms:
    """The total and each term (unweighted), for logging."""

    total: Tensor
    tagging: Tensor
    alignment: Tensor
    retention: Tensor

    def as_floats(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach()),
            "tagging": float(self.tagging.detach()),
            "alignment": float(self.alignment.detach()),
            "retention": float(self.retention.detach()),
        }


def objective_loss(
    cfg: ObjectiveConfig,
    *,
    projected: Tensor,
    logits: Tensor | None,
    t_clean: Tensor,
    t_noise: Tensor,
    clean_tags: Tensor,
    noise_tags: Tensor,
    is_clean: Tensor,
) -> LossTerms:
    """The loss of one batch.

    projected: P(S(m)) [B, De]; logits: [B, C] or None (no tagging term); t_clean, t_noise:
    teacher embeddings [B, De] (t_noise rows of clean examples are ignored); clean_tags,
    noise_tags: [B, C] source tags (`source_tags`); is_clean: bool [B].
    """
    zero = projected.sum() * 0.0
    mixed = ~is_clean
    if logits is not None and logits.shape[1] > 0:
        if cfg.name == "denoise":
            targets = clean_tags
        else:
            targets = tag_union(clean_tags, noise_tags, is_clean)
        tagging = tagging_loss(logits, targets)
    else:
        tagging = zero
    if cfg.name == "retain":
        target = mixture_target(t_clean[mixed], t_noise[mixed], cfg.mix_lambda)
        alignment = alignment_distance(projected[mixed], target, cfg.distance)
    elif cfg.name == "denoise":
        alignment = alignment_distance(projected[mixed], t_clean[mixed], cfg.distance)
    else:
        alignment = zero
    retention = alignment_distance(projected[is_clean], t_clean[is_clean], cfg.distance)
    alpha = cfg.alpha if cfg.name != "tagging" else 0.0
    total = tagging + alpha * alignment + cfg.beta * retention
    return LossTerms(total=total, tagging=tagging, alignment=alignment, retention=retention)
