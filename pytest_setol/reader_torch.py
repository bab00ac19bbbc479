"""Read torch pickles (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) and in-memory tensors.

Files load only through ``torch.load(weights_only=True)``, which rejects any
pickle that names a global outside torch's allow-list, so reading never runs
code from the file. Zip-format files are memory-mapped (``mmap=True``); the
legacy format is loaded whole. Training checkpoints nest the weights beside
epochs, optimizer state or vocabularies: the tensors are taken from the entry
that contains the model's weights and reported under the inner module's names.
This is the only module that imports torch.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CheckpointError
from .reader import DTYPE_CODES, Checkpoint, TensorRef, natural_key, numpy_dtype

if TYPE_CHECKING:
    import torch

#: Keys of a training checkpoint that hold the model's weights, most likely first.
STATE_DICT_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "weights",
    "params",
    "ema",
)
#: Top-level entries that hold tensors but never the model's weights.
_NOT_WEIGHTS = re.compile(r"^(optim|optimizer|scheduler|lr_scheduler|scaler)", re.I)
#: Name prefixes added by wrappers (Lightning's ``self.model``, DataParallel,
#: ``torch.compile``); stripped when every tensor name carries the same one.
WRAPPER_PREFIXES = ("model.", "module.", "net.", "network.", "_orig_mod.")
#: Wrapper prefixes stripped from a plain state dict, which has no training wrapper.
_PLAIN_PREFIXES = ("module.", "_orig_mod.")

#: Dtypes numpy lacks: viewed as integers of the same width, then as ml_dtypes.
_BIT_VIEWS = {
    "BF16": "int16",
    "F8_E4M3": "uint8",
    "F8_E5M2": "uint8",
    "F8_E8M0": "uint8",
}


def read_torch_file(path: Path) -> Checkpoint:
    """Load ``path`` with ``weights_only=True`` and return its weights."""
    torch = _import_torch(path)
    # NOTE: pages of a memory-mapped file stay resident (and count in RSS)
    # after they are read, until the kernel reclaims them. A large torch file
    # can therefore show an RSS near its size, and the legacy format loads
    # whole. The streaming bound holds for safetensors and GGUF.
    try:
        with warnings.catch_warnings():
            # torch warns about legacy files; the reader reports its own errors.
            warnings.simplefilter("ignore")
            loaded = torch.load(
                path,
                map_location="cpu",
                weights_only=True,
                mmap=zipfile.is_zipfile(path),
            )
    except pickle.UnpicklingError as exc:
        raise CheckpointError(path, _unpickling_message(str(exc))) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first_sentence = first_line.split(". ")[0].rstrip(".")
        raise CheckpointError(
            path,
            f"is truncated or not a torch file ({first_sentence[:200]}); "
            "download or save it again",
        ) from None
    state_dict, nested_key = find_state_dict(loaded)
    if not state_dict:
        raise CheckpointError(
            path,
            "contains no tensors; expected a state dict, or a training checkpoint "
            f"with one under a key such as {', '.join(STATE_DICT_KEYS[:3])}",
        )
    prefixes = WRAPPER_PREFIXES if nested_key is not None else _PLAIN_PREFIXES
    state_dict = strip_wrapper_prefix(state_dict, prefixes)
    metadata = {"state_dict_key": nested_key} if nested_key else {}
    return Checkpoint(str(path), "torch", tensor_refs(state_dict, torch), metadata)


def _import_torch(path: Path | str) -> Any:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            path, "reading torch files needs torch: pip install 'pytest-setol[torch]'"
        ) from None
    return torch


def _unpickling_message(text: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found is None and "global" not in text.lower():
        # The weights_only unpickler also raises this for bytes that are no
        # pickle at all, such as a corrupt or unrelated file.
        return (
            "is corrupt or not a torch file (it does not unpickle); "
            "download or save it again"
        )
    named = f" ({found.group(1)})" if found else ""
    return (
        f"the pickle needs globals{named} that weights_only loading rejects, "
        "because unpickling them can run arbitrary code, so it was not loaded; "
        "re-save the weights with torch.save(model.state_dict()) or as safetensors"
    )


def find_state_dict(loaded: Any) -> tuple[dict[str, Any], str | None]:
    """Return the weights of a loaded object and the top-level key they came from.

    A plain state dict returns itself and None. A training checkpoint returns
    the entry under the first of ``STATE_DICT_KEYS`` that contains tensors, else
    the entry with the most tensor elements (optimizer state excluded).
    """
    import torch

    if isinstance(loaded, torch.Tensor):
        return {"tensor": loaded}, None
    if not isinstance(loaded, Mapping):
        return {}, None
    direct = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    nested = {
        key: _flatten(value, torch)
        for key, value in loaded.items()
        if isinstance(key, str) and isinstance(value, Mapping)
    }
    nested = {k: v for k, v in nested.items() if v}
    if direct and len(direct) >= sum(len(v) for v in nested.values()):
        return _flatten(loaded, torch), None
    for key in STATE_DICT_KEYS:
        if key in nested:
            return nested[key], key
    candidates = {k: v for k, v in nested.items() if not _NOT_WEIGHTS.match(k)}
    if not candidates:
        return direct, None
    best = max(candidates, key=lambda k: sum(t.numel() for t in candidates[k].values()))
    return candidates[best], best


def _flatten(
    mapping: Mapping[Any, Any], torch: Any, prefix: str = ""
) -> dict[str, Any]:
    """Collect the tensors of nested string-keyed mappings under dotted names."""
    result: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            return {}  # integer keys: optimizer state, not module parameters
        if isinstance(value, torch.Tensor):
            result[prefix + key] = value
        elif isinstance(value, Mapping):
            result.update(_flatten(value, torch, f"{prefix}{key}."))
    return result


def strip_wrapper_prefix(
    state_dict: dict[str, Any], prefixes: tuple[str, ...] = WRAPPER_PREFIXES
) -> dict[str, Any]:
    """Remove a wrapper prefix that every name shares (``module.model.``)."""
    while state_dict:
        shared = next(
            (p for p in prefixes if all(k.startswith(p) for k in state_dict)), None
        )
        if shared is None or any(k == shared for k in state_dict):
            return state_dict
        state_dict = {k[len(shared) :]: v for k, v in state_dict.items()}
    return state_dict


def dtype_code(tensor: torch.Tensor) -> str:
    """Return the safetensors-style dtype code of a torch tensor (``F32``, ``BF16``)."""
    name = str(tensor.dtype).removeprefix("torch.")
    return DTYPE_CODES.get(name, name)


def tensor_refs(state_dict: Mapping[str, Any], torch: Any) -> tuple[TensorRef, ...]:
    """Wrap CPU tensors as references in natural-sort order of their names."""
    refs = []
    for name in sorted(state_dict, key=natural_key):
        tensor = state_dict[name].detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        refs.append(_tensor_ref(name, tensor, torch))
    return tuple(refs)


def _tensor_ref(name: str, tensor: Any, torch: Any) -> TensorRef:
    code = dtype_code(tensor)
    shape = tuple(int(d) for d in tensor.shape)

    def to_numpy(part: Any) -> np.ndarray:
        part = part.contiguous()
        view = _BIT_VIEWS.get(code)
        if view is None:
            return part.numpy()
        return part.view(getattr(torch, view)).numpy().view(numpy_dtype(code))

    def read_rows(start: int, stop: int) -> np.ndarray:
        if not shape:
            return to_numpy(tensor)
        return to_numpy(tensor[start:stop])

    def read_flat_rows(start: int, stop: int) -> np.ndarray:
        return to_numpy(tensor.reshape(-1, shape[-1])[start:stop])

    flat = read_flat_rows if shape and tensor.is_contiguous() else None
    storage = tensor.untyped_storage()
    key = (
        storage.data_ptr(),
        tensor.storage_offset(),
        shape,
        tuple(tensor.stride()),
        code,
    )
    nbytes = tensor.numel() * tensor.element_size()
    return TensorRef(name, shape, code, nbytes, read_rows, None, flat, key)
