"""Compare a fine-tuned checkpoint with its base: ``W - W_base`` per matching matrix.

The update of each matrix whose name, shape and float dtype match in both
checkpoints is reported beside it as ``name[delta]``. A LoRA adapter is
merged into its base first: the merged weights ``W_base + scale * B A`` are
analysed under the base names, and each update ``scale * B A`` is the delta,
its eigenvalues taken from the factors.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import CheckpointError
from .reader import Checkpoint, TensorRef, natural_key

#: Suffix of the name under which a matrix's update is reported.
DELTA_SUFFIX = "[delta]"


def with_base(checkpoint: Checkpoint, base: Checkpoint) -> Checkpoint:
    """Return ``checkpoint`` with the update over ``base`` of each matching matrix."""
    if checkpoint.format == "lora":
        return _merge_adapter(checkpoint, base)
    base_by_name = {tensor.name: tensor for tensor in base.tensors}
    tensors = list(checkpoint.tensors)
    for tensor in checkpoint.tensors:
        original = base_by_name.get(tensor.name)
        if original is not None and _comparable(tensor, original):
            tensors.append(_delta_ref(tensor, original))
    if len(tensors) == len(checkpoint.tensors):
        raise CheckpointError(
            base.path,
            f"has no float matrix with the name and shape of one in {checkpoint.path}; "
            "the base must be the checkpoint that was fine-tuned",
        )
    tensors.sort(key=lambda tensor: natural_key(tensor.name))
    metadata = dict(checkpoint.metadata, base=base.path)
    return Checkpoint(checkpoint.path, checkpoint.format, tuple(tensors), metadata)


def _comparable(tensor: TensorRef, original: TensorRef) -> bool:
    return (
        tensor.shape == original.shape
        and len(tensor.shape) >= 2
        and tensor.is_float
        and original.is_float
    )


def _delta_ref(tensor: TensorRef, original: TensorRef) -> TensorRef:
    def read_rows(start: int, stop: int) -> np.ndarray:
        new = tensor.read_rows(start, stop).astype(np.float64)
        return new - original.read_rows(start, stop).astype(np.float64)

    nbytes = tensor.size * 8
    return TensorRef(tensor.name + DELTA_SUFFIX, tensor.shape, "F64", nbytes, read_rows)


def _merge_adapter(adapter: Checkpoint, base: Checkpoint) -> Checkpoint:
    base_by_name = {tensor.name: tensor for tensor in base.tensors}
    merged = dict(base_by_name)
    deltas = []
    for tensor in adapter.tensors:
        original = base_by_name.get(tensor.name)
        if tensor.low_rank is None:
            merged[tensor.name] = tensor  # saved whole (modules_to_save)
            continue
        if original is None or original.shape != tensor.shape:
            found = "is missing" if original is None else f"has shape {original.shape}"
            raise CheckpointError(
                adapter.path,
                f"the update of {tensor.name!r} has shape {tensor.shape} but the "
                f"base {base.path} {found} there; give the base the adapter was "
                "trained on",
            )
        merged[tensor.name] = _merged_ref(original, tensor)
        deltas.append(dataclasses.replace(tensor, name=tensor.name + DELTA_SUFFIX))
    tensors = sorted([*merged.values(), *deltas], key=lambda t: natural_key(t.name))
    metadata = dict(adapter.metadata, base=base.path)
    return Checkpoint(adapter.path, "lora-merged", tuple(tensors), metadata)


def _merged_ref(original: TensorRef, update: TensorRef) -> TensorRef:
    def read_rows(start: int, stop: int) -> np.ndarray:
        rows = original.read_rows(start, stop).astype(np.float64)
        return rows + update.read_rows(start, stop)

    nbytes = original.size * 8
    return TensorRef(original.name, original.shape, "F64", nbytes, read_rows)
