"""Read ``.safetensors`` files: validate the header as the safetensors library does.

The checks follow safetensors 0.8: an 8-byte little-endian header length of at
most 100 MB, a UTF-8 JSON object (strict JSON: no NaN, no numbers out of
range, no duplicate fields in a tensor entry), and tensors whose byte ranges
tile the data section exactly, with no gap, overlap or trailing byte.
``scripts/fuzz_safetensors.py`` checks this module against ``safe_open``.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .reader import Checkpoint, TensorRef, natural_key, numpy_dtype

#: The safetensors library rejects headers larger than this (100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Shapes, offsets and sizes are Rust ``usize`` values in the library.
_USIZE_MAX = 2**64 - 1
#: numpy dimensions are signed 64-bit; an empty tensor may declare a larger one.
_NUMPY_DIM_MAX = 2**63 - 1
#: serde_json, the library's parser, rejects JSON nested 128 levels deep.
_MAX_DEPTH = 128

#: Element size in bits of every safetensors dtype code.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
_ENTRY_FIELDS = ("dtype", "shape", "data_offsets")

_Entry = tuple[str, str, tuple[int, ...], int, int]


class _InvalidJSON(ValueError):
    """JSON that Python accepts but a strict parser (serde_json) rejects."""


class _JSONObject(dict[str, Any]):
    """A decoded JSON object that remembers which keys appeared twice."""

    duplicates: frozenset[str] = frozenset()


def read_safetensors(path: Path) -> Checkpoint:
    """Parse and validate a safetensors header; tensors are read later, by rows."""
    file_size = path.stat().st_size
    if file_size == 0:
        raise CheckpointError(path, "file is empty")
    if file_size < 8:
        raise CheckpointError(
            path, "file is shorter than the 8-byte safetensors header length"
        )
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(
                path,
                f"header length {header_len} bytes exceeds the 100 MB limit; "
                "the file is corrupt or not a safetensors file",
            )
        if 8 + header_len > file_size:
            raise CheckpointError(
                path,
                f"header length {header_len} bytes runs past the end of the "
                f"{file_size}-byte file; the file is truncated or not safetensors",
            )
        raw = handle.read(header_len)
    header = _parse_header(path, raw)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise CheckpointError(
            path, "__metadata__ must be a JSON object of string values"
        )
    data_start = 8 + header_len
    entries = [_parse_entry(path, name, info) for name, info in header.items()]
    _check_layout(path, entries, file_size - data_start)
    tensors = tuple(
        _safetensors_ref(path, data_start, *entry)
        for entry in sorted(entries, key=lambda e: natural_key(e[0]))
    )
    return Checkpoint(str(path), "safetensors", tensors, dict(metadata))


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_object_pairs,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
        _check_strings(header)
    except (UnicodeError, json.JSONDecodeError, _InvalidJSON) as exc:
        raise CheckpointError(path, f"header is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise CheckpointError(
            path, "header is not valid JSON: nested too deeply"
        ) from exc
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object")
    return header


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JSONObject:
    result = _JSONObject(pairs)
    if len(result) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        result.duplicates = frozenset(key for key, count in counts.items() if count > 1)
    return result


def _reject_constant(name: str) -> Any:
    raise _InvalidJSON(f"{name} is not a JSON number")


def _parse_int(text: str) -> int | float:
    value = int(text)
    if value == 0 and text.startswith("-"):
        return -0.0  # a strict parser reads -0 as a float, never an unsigned size
    if value > _USIZE_MAX or value < -(2**63):
        return _parse_float(text)  # beyond 64 bits a strict parser reads a float
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _InvalidJSON(f"number {text[:40]} is out of range")
    return value


def _check_strings(value: Any, depth: int = 0) -> None:
    """Reject lone UTF-16 surrogates (``"\\ud800"``) and over-deep nesting.

    A lone surrogate is not valid UTF-8; serde_json also stops at 128 levels.
    """
    if isinstance(value, str):
        value.encode("utf-8")
        return
    if isinstance(value, (dict, list)) and depth + 1 >= _MAX_DEPTH:
        raise _InvalidJSON(f"nested deeper than {_MAX_DEPTH - 1} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            key.encode("utf-8")
            _check_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, depth + 1)


def _is_usize(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_entry(path: Path, name: str, info: Any) -> _Entry:
    if not isinstance(info, dict):
        raise CheckpointError(path, f"tensor {name!r}: header entry is not an object")
    repeated = [k for k in _ENTRY_FIELDS if k in getattr(info, "duplicates", ())]
    if repeated:
        raise CheckpointError(path, f"tensor {name!r}: duplicate field {repeated[0]!r}")
    dtype = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise CheckpointError(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_usize(d) for d in shape):
        raise CheckpointError(path, f"tensor {name!r}: invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_usize(o) for o in offsets)
    ):
        raise CheckpointError(
            path, f"tensor {name!r}: invalid data_offsets {offsets!r}"
        )
    count = 1
    for dim in shape:  # left to right, as the library's checked multiplication
        count *= dim
        if count > _USIZE_MAX:
            raise CheckpointError(path, f"tensor {name!r}: shape {shape} overflows")
    bits = count * DTYPE_BITS[dtype]
    if bits > _USIZE_MAX:
        raise CheckpointError(path, f"tensor {name!r}: shape {shape} overflows")
    expected = bits // 8
    if bits % 8 or offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            path,
            f"tensor {name!r}: data_offsets span {offsets[1] - offsets[0]} bytes "
            f"but shape {shape} of {dtype} needs {bits / 8:g}",
        )
    return name, dtype, tuple(shape), offsets[0], offsets[1]


def _check_layout(path: Path, entries: list[_Entry], data_size: int) -> None:
    """Require the tensors to tile the data section exactly, as safetensors does."""
    position = 0
    for name, _dtype, _shape, begin, end in sorted(entries, key=lambda e: e[3:]):
        if begin < position:
            raise CheckpointError(
                path, f"tensor {name!r}: data overlaps the previous tensor"
            )
        if begin > position:
            raise CheckpointError(
                path,
                f"tensor {name!r}: gap of {begin - position} bytes before its data",
            )
        position = end
    if position > data_size:
        raise CheckpointError(
            path,
            f"tensor data runs past the end of the file ({position} bytes needed, "
            f"{data_size} present); the file is truncated",
        )
    if position < data_size:
        raise CheckpointError(
            path, f"{data_size - position} trailing bytes after the last tensor"
        )


def _safetensors_ref(
    path: Path,
    data_start: int,
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    begin: int,
    end: int,
) -> TensorRef:
    def read_span(first: int, count: int, row_shape: tuple[int, ...]) -> np.ndarray:
        """Read ``count`` rows of ``row_shape`` from row ``first`` on."""
        np_dtype = numpy_dtype(dtype)
        if any(dim > _NUMPY_DIM_MAX for dim in shape):
            raise CheckpointError(
                path, f"tensor {name!r}: shape {list(shape)} is too large for numpy"
            )
        row_bytes = math.prod(row_shape) * np_dtype.itemsize
        size = count * row_bytes
        with path.open("rb") as handle:
            handle.seek(data_start + begin + first * row_bytes)
            buffer = handle.read(size)
        if len(buffer) != size:
            raise CheckpointError(path, f"tensor {name!r}: file ended while reading")
        return np.frombuffer(buffer, dtype=np_dtype).reshape((count, *row_shape))

    def read_rows(start: int, stop: int) -> np.ndarray:
        if not shape:
            return read_span(0, 1, ()).reshape(())
        return read_span(start, stop - start, shape[1:])

    def read_flat_rows(start: int, stop: int) -> np.ndarray:
        return read_span(start, stop - start, shape[-1:])

    flat = read_flat_rows if shape else None
    return TensorRef(name, shape, dtype, end - begin, read_rows, None, flat)
