"""The interface every trainable embedding encoder (a "student") implements.

The training loop, the export and the tests code against `Student` and `StudentOutput` only, so
that the YAMNet port and any other student are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@dataclass
class StudentOutput:
    """What a student's `forward` returns."""

    embedding: Tensor
    """[B, D] float32: the vector the memory bank stores."""
    logits: Tensor | None = None
    """[B, C] class logits (sigmoid gives scores), or None when the classifier did not run."""
    layers: list[Tensor] | None = None
    """Globally pooled outputs of intermediate blocks, [B, C_i] each, or None."""


@runtime_checkable
class Student(Protocol):
    """An `nn.Module` mapping 16 kHz waveforms [B, S] to a `StudentOutput`."""

    embedding_dim: int
    """D, the width of `StudentOutput.embedding`."""
    num_classes: int
    """C, the width of `StudentOutput.logits` (0 when the student has no classifier)."""
    window_samples: int
    """The shortest input it accepts, in samples at 16 kHz."""

    def forward(self, waveform: Tensor) -> StudentOutput:
        """Embed `waveform` [B, S] float32 in [-1, 1], S >= `window_samples`."""
        ...

    def __call__(self, waveform: Tensor) -> StudentOutput: ...

    def parameters(self, recurse: bool = True) -> object: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `module` (only those with requires_grad if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def as_student(module: nn.Module) -> Student:
    """`module` typed as a `Student`, after checking that it has the attributes."""
    for attr in ("embedding_dim", "num_classes", "window_samples"):
        if not isinstance(getattr(module, attr, None), int):
            raise TypeError(f"{type(module).__name__} is not a Student: no int attribute {attr!r}")
    return module  # type: ignore[return-value]


__all__ = ["Student", "StudentOutput", "as_student", "count_parameters"]
