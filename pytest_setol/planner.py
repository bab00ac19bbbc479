"""Decide which tensors are weight matrices, how to slice them, and why others are not."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from .config import Config
from .reader import Checkpoint, TensorRef

#: Names that mark token or position embeddings and output heads, whose
#: scale differs from hidden layers.
_EMBEDDING_NAME = re.compile(
    r"(embed|wte|wpe|lm_head|token_embd|tok_embeddings|(^|\.)output\.weight$)"
)
#: Each convolution slice is scaled by 1/sqrt(2) before pooling.
CONV_SLICE_SCALE = 1.0 / math.sqrt(2.0)


@dataclass(frozen=True)
class LayerPlan:
    """One weight matrix (or a pooled stack of convolution slices) to analyse.

    ``rows`` and ``cols`` are the shape of each matrix; a convolution kernel
    has ``slices`` of them, one per kernel position.
    """

    name: str
    kind: str
    tensor: TensorRef
    rows: int
    cols: int
    slices: int = 1
    scale: float = 1.0
    skip_reason: str | None = None

    @property
    def N(self) -> int:
        return max(self.rows, self.cols)

    @property
    def M(self) -> int:
        return min(self.rows, self.cols)

    @property
    def Q(self) -> float:
        return self.N / self.M if self.M else math.nan

    @property
    def L(self) -> int:
        return self.M * self.slices


@dataclass(frozen=True)
class Plan:
    """Matrices to report, counts of other tensors by reason, and parameter totals."""

    layers: tuple[LayerPlan, ...]
    not_analysed: dict[str, int]
    float_parameters: int


def plan_layers(checkpoint: Checkpoint, config: Config) -> Plan:
    """Classify every tensor of ``checkpoint`` in its natural-sort order."""
    layers: list[LayerPlan] = []
    not_analysed: Counter[str] = Counter()
    float_parameters = 0
    for tensor in checkpoint.tensors:
        if tensor.is_float:
            float_parameters += tensor.size
        reason = _not_a_matrix(tensor)
        if reason is not None:
            not_analysed[reason] += 1
            continue
        layers.append(_plan_matrix(tensor, config))
    return Plan(tuple(layers), dict(not_analysed), float_parameters)


def _not_a_matrix(tensor: TensorRef) -> str | None:
    if not tensor.is_float:
        return f"non-float dtype {tensor.dtype}"
    if len(tensor.shape) == 0:
        return "scalar"
    if len(tensor.shape) == 1:
        return "1-D tensor (bias or norm)"
    if len(tensor.shape) > 4:
        return f"{len(tensor.shape)}-D tensor"
    return None


def _plan_matrix(tensor: TensorRef, config: Config) -> LayerPlan:
    shape = tensor.shape
    if len(shape) == 2:
        kind = "embedding" if _EMBEDDING_NAME.search(tensor.name) else "linear"
        plan = LayerPlan(tensor.name, kind, tensor, shape[0], shape[1])
    else:
        slices = math.prod(shape[2:])
        kind = "conv1d" if len(shape) == 3 else "conv2d"
        plan = LayerPlan(
            tensor.name, kind, tensor, shape[0], shape[1], slices, CONV_SLICE_SCALE
        )
    reason = config.skip_reason(tensor.name)
    if reason is None and plan.M == 0:
        reason = "zero-size matrix"
    elif reason is None and plan.L < config.min_eigenvalues:
        reason = (
            f"{plan.L} eigenvalues, fewer than min_eigenvalues = "
            f"{config.min_eigenvalues}"
        )
    if reason is not None:
        plan = LayerPlan(
            plan.name, plan.kind, tensor, plan.rows, plan.cols, plan.slices,
            plan.scale, reason,
        )  # fmt: skip
    return plan
