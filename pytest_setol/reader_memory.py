"""Wrap in-memory weights (an ``nn.Module``, a state dict of arrays) as a checkpoint.

A mapping of numpy arrays never imports torch; anything else goes through
``reader_torch``, which does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import CheckpointError
from .reader import DTYPE_CODES, Checkpoint, TensorRef, natural_key


def is_in_memory(source: Any) -> bool:
    """Return whether ``source`` is weights in memory rather than a path."""
    return isinstance(source, Mapping) or callable(getattr(source, "state_dict", None))


def memory_label(source: Any) -> str:
    """Return the name a report gives in-memory weights, such as ``<MobileNetV2>``."""
    if isinstance(source, Mapping):
        return "<state_dict>"
    return f"<{type(source).__name__}>"


def checkpoint_from_memory(source: Any, label: str | None = None) -> Checkpoint:
    """Return a checkpoint over the tensors of ``source``, without copying them."""
    label = label or memory_label(source)
    if isinstance(source, Mapping) and all(
        isinstance(value, np.ndarray) for value in source.values()
    ):
        refs = tuple(
            _array_ref(str(name), source[name])
            for name in sorted(source, key=lambda n: natural_key(str(n)))
        )
        return Checkpoint(label, "memory", refs)
    from .reader_torch import (
        _import_torch,
        find_state_dict,
        strip_wrapper_prefix,
        tensor_refs,
    )

    torch = _import_torch(label)
    if isinstance(source, Mapping):
        state_dict, _key = find_state_dict(source)
    else:
        state_dict = dict(source.state_dict())
    if not state_dict:
        raise CheckpointError(label, "contains no tensors; expected a state dict")
    state_dict = strip_wrapper_prefix(state_dict, ("module.", "_orig_mod."))
    return Checkpoint(label, "memory", tensor_refs(state_dict, torch))


def _array_ref(name: str, array: np.ndarray) -> TensorRef:
    code = DTYPE_CODES.get(array.dtype.name, array.dtype.name)
    array = np.ascontiguousarray(array)

    def read_rows(start: int, stop: int) -> np.ndarray:
        return array if array.ndim == 0 else array[start:stop]

    def read_flat_rows(start: int, stop: int) -> np.ndarray:
        return array.reshape(-1, array.shape[-1])[start:stop]

    flat = read_flat_rows if array.ndim else None
    key = (array.__array_interface__["data"][0], array.shape, code)
    shape = tuple(int(d) for d in array.shape)
    return TensorRef(name, shape, code, array.nbytes, read_rows, None, flat, key)
