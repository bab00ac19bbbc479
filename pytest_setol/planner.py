"""Decide which tensors are weight matrices, how to slice them, and why not."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import Config
from .reader import Checkpoint, TensorRef

#: Names that mark token or position embeddings and output heads, whose
#: scale differs from hidden layers.
_EMBEDDING_NAME = re.compile(
    r"(embed|wte|wpe|lm_head|token_embd|tok_embeddings|(^|\.)output\.weight$)"
)
#: Each convolution slice is scaled by 1/sqrt(2) before pooling.
CONV_SLICE_SCALE = 1.0 / math.sqrt(2.0)
#: Stacked expert tensors of mixture-of-experts models, ``(experts, rows, cols)``
#: (``blk.0.ffn_gate_exps.weight`` in GGUF): one matrix per expert.
_EXPERTS_NAME = re.compile(r"_exps\b")
#: Bytes hashed per step when two tensors are compared for identical content.
_HASH_BLOCK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class LayerPlan:
    """One weight matrix (or a pooled stack of convolution slices) to analyse.

    ``rows`` and ``cols`` are the shape of each matrix; a convolution kernel
    has ``slices`` of them, one per kernel position. ``aliases`` are the other
    names of a tied tensor, analysed once under ``name``.
    """

    name: str
    kind: str
    tensor: TensorRef
    rows: int
    cols: int
    slices: int = 1
    scale: float = 1.0
    skip_reason: str | None = None
    aliases: tuple[str, ...] = ()

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
    """Classify every tensor of ``checkpoint`` in its natural-sort order.

    A tensor tied to an earlier one (shared storage or identical content) is
    not planned again: it becomes an alias of the first name, and its
    parameters count once.
    """
    aliases = find_aliases(checkpoint.tensors)
    alias_names = {name for names in aliases.values() for name in names}
    layers: list[LayerPlan] = []
    not_analysed: Counter[str] = Counter()
    float_parameters = 0
    for tensor in checkpoint.tensors:
        if tensor.name in alias_names:
            continue
        if tensor.is_float:
            float_parameters += tensor.size
        reason = _not_a_matrix(tensor)
        if reason is not None:
            not_analysed[reason] += 1
            continue
        if len(tensor.shape) == 3 and _EXPERTS_NAME.search(tensor.name):
            for expert in range(tensor.shape[0]):
                part = tensor.select(expert, f"{tensor.name}[{expert}]")
                layers.append(_plan_matrix(part, config))
            continue
        layers.append(_plan_matrix(tensor, config, aliases.get(tensor.name, ())))
    return Plan(tuple(layers), dict(not_analysed), float_parameters)


def find_aliases(tensors: Sequence[TensorRef]) -> dict[str, tuple[str, ...]]:
    """Map the first name of each group of tied float tensors to the other names.

    Tensors are tied when they share storage (a torch ``storage_key``) or hold
    identical bytes. Content is compared only within groups of equal shape and
    dtype, first by the first and last rows, then in full.
    """
    groups: defaultdict[tuple[object, ...], list[TensorRef]] = defaultdict(list)
    for tensor in tensors:
        if tensor.is_float and len(tensor.shape) >= 2 and tensor.size > 0:
            groups[(tensor.shape, tensor.dtype, tensor.quantization)].append(tensor)
    result: dict[str, tuple[str, ...]] = {}
    for group in groups.values():
        if len(group) < 2:
            continue
        for names in _tied_names(group):
            result[names[0]] = tuple(names[1:])
    return result


def _tied_names(group: Sequence[TensorRef]) -> list[list[str]]:
    """Return the lists of names (two or more) within ``group`` that are tied."""
    tied: defaultdict[object, list[TensorRef]] = defaultdict(list)
    for tensor in group:
        key = tensor.storage_key if tensor.storage_key is not None else id(tensor)
        tied[("storage", key)].append(tensor)
    # One representative per storage; compare content between representatives.
    # Constant matrices (a zero initialisation) are equal without being tied.
    by_sample: defaultdict[tuple[bytes, bytes], list[object]] = defaultdict(list)
    for key, members in tied.items():
        sample = _sample(members[0])
        if sample is not None:
            by_sample[sample].append(key)
    for keys in by_sample.values():
        if len(keys) < 2:
            continue
        by_digest: defaultdict[str, list[object]] = defaultdict(list)
        for key in keys:
            by_digest[_digest(tied[key][0])].append(key)
        for same in by_digest.values():
            for key in same[1:]:
                tied[same[0]].extend(tied.pop(key))
    groups = [sorted(m.name for m in members) for members in tied.values()]
    order = {tensor.name: index for index, tensor in enumerate(group)}
    return [sorted(names, key=order.__getitem__) for names in groups if len(names) > 1]


def _sample(tensor: TensorRef) -> tuple[bytes, bytes] | None:
    """Return the first and last rows' bytes, or None when all are one value."""
    rows = tensor.shape[0]
    first, last = tensor.read_rows(0, 1), tensor.read_rows(rows - 1, rows)
    values = np.concatenate([first.ravel(), last.ravel()])
    if np.all(values == values[0]):
        return None
    return first.tobytes(), last.tobytes()


def _digest(tensor: TensorRef) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for block in tensor.row_blocks(_HASH_BLOCK_BYTES):
        digest.update(block.tobytes())
    return digest.hexdigest()


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


def _plan_matrix(
    tensor: TensorRef, config: Config, aliases: tuple[str, ...] = ()
) -> LayerPlan:
    shape = tensor.shape
    if len(shape) == 2:
        kind = "embedding" if _EMBEDDING_NAME.search(tensor.name) else "linear"
        plan = LayerPlan(tensor.name, kind, tensor, shape[0], shape[1], aliases=aliases)
    else:
        slices = math.prod(shape[2:])
        kind = "conv1d" if len(shape) == 3 else "conv2d"
        plan = LayerPlan(
            tensor.name, kind, tensor, shape[0], shape[1], slices, CONV_SLICE_SCALE,
            aliases=aliases,
        )  # fmt: skip
    reason = config.skip_reason(tensor.name)
    if reason is None and plan.M == 0:
        reason = "zero-size matrix"
    elif reason is None and plan.L < config.min_eigenvalues:
        reason = (
            f"{plan.L} eigenvalues, fewer than min_eigenvalues = "
            f"{config.min_eigenvalues}"
        )
    if reason is not None:
        plan = dataclasses.replace(plan, skip_reason=reason)
    return plan
