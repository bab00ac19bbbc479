"""Open checkpoints as lazy tensor references; nothing here computes spectra.

A reference knows a tensor's name, shape and dtype from the file header and
reads rows on request, so planning a checkpoint costs one header read and
analysing it holds one tensor at a time. Files are opened read-only.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

#: The safetensors library rejects headers larger than this (100 MB).
MAX_HEADER_BYTES = 100_000_000
_LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"

#: Element size in bits of every safetensors dtype code.
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
#: Float codes that the analysis reads (all upcast to float64).
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0")

RowReader = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a checkpoint, read on request.

    ``read_rows(start, stop)`` returns rows ``start:stop`` of the first axis in
    the stored dtype (a float type numpy knows, bfloat16 and float8 through
    ml_dtypes).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    read_rows: RowReader = field(repr=False, compare=False)
    quantization: str | None = None

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def read(self) -> np.ndarray:
        """Return the whole tensor in its stored dtype."""
        rows = self.shape[0] if self.shape else 1
        return self.read_rows(0, rows).reshape(self.shape)

    def row_blocks(self, max_bytes: int) -> Iterator[np.ndarray]:
        """Yield the tensor in blocks of whole rows of at most ``max_bytes``."""
        rows = self.shape[0] if self.shape else 1
        row_bytes = max(1, self.nbytes // max(rows, 1))
        step = max(1, max_bytes // row_bytes)
        for start in range(0, rows, step):
            yield self.read_rows(start, min(rows, start + step))


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's tensors in natural-sort order of their names."""

    path: str
    format: str
    tensors: tuple[TensorRef, ...]
    metadata: dict[str, str] = field(default_factory=dict)


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", name)
        if part
    )


def numpy_dtype(code: str) -> np.dtype:
    """Return the numpy dtype of a safetensors dtype code (little-endian)."""
    simple = {
        "F64": "<f8", "F32": "<f4", "F16": "<f2",
        "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
        "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
        "BOOL": "?", "C64": "<c8",
    }  # fmt: skip
    if code in simple:
        return np.dtype(simple[code])
    import ml_dtypes  # registers bfloat16 and the float8 types with numpy

    extended = {
        "BF16": ml_dtypes.bfloat16,
        "F8_E4M3": ml_dtypes.float8_e4m3fn,
        "F8_E5M2": ml_dtypes.float8_e5m2,
        "F8_E8M0": ml_dtypes.float8_e8m0fnu,
    }
    if code in extended:
        return np.dtype(extended[code])
    raise ValueError(f"dtype {code} has no numpy equivalent")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint by path; raise CheckpointError naming the file on failure."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "file not found; check the path")
    if path.is_dir():
        raise CheckpointError(
            path, "is a directory; give the path of a .safetensors file"
        )
    _reject_lfs_pointer(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    raise CheckpointError(
        path,
        f"unsupported checkpoint format {path.suffix or '(no suffix)'!r}; "
        "expected a .safetensors file",
    )


def _reject_lfs_pointer(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_LFS_POINTER))
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file: {exc.strerror}") from exc
    if head == _LFS_POINTER:
        raise CheckpointError(
            path,
            "is a Git LFS pointer, not the weights; run `git lfs pull` to fetch them",
        )


def read_safetensors(path: Path) -> Checkpoint:
    """Parse and validate a safetensors header; tensors are read later, by rows."""
    file_size = path.stat().st_size
    if file_size == 0:
        raise CheckpointError(path, "file is empty")
    if file_size < 8:
        raise CheckpointError(path, "file is shorter than the 8-byte safetensors header length")
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(
                path, f"header length {header_len} bytes exceeds the 100 MB limit"
            )
        if 8 + header_len > file_size:
            raise CheckpointError(
                path,
                f"header length {header_len} bytes runs past the end of the "
                f"{file_size}-byte file; the file is truncated or not safetensors",
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "__metadata__ is not a JSON object")
    data_start = 8 + header_len
    entries = [_parse_entry(path, name, info) for name, info in header.items()]
    _check_layout(path, entries, file_size - data_start)
    tensors = tuple(
        _safetensors_ref(path, data_start, name, dtype, shape, begin, end)
        for name, dtype, shape, begin, end in sorted(entries, key=lambda e: natural_key(e[0]))
    )
    return Checkpoint(str(path), "safetensors", tensors, dict(metadata))


_Entry = tuple[str, str, tuple[int, ...], int, int]


def _parse_entry(path: Path, name: str, info: Any) -> _Entry:
    if not isinstance(info, dict):
        raise CheckpointError(path, f"tensor {name!r}: header entry is not an object")
    dtype = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if dtype not in _DTYPE_BITS:
        raise CheckpointError(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise CheckpointError(path, f"tensor {name!r}: invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(path, f"tensor {name!r}: invalid data_offsets {offsets!r}")
    count = int(np.prod(shape, dtype=object)) if shape else 1
    bits = count * _DTYPE_BITS[dtype]
    expected = bits // 8
    if bits % 8 or offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            path,
            f"tensor {name!r}: data_offsets span {offsets[1] - offsets[0]} bytes "
            f"but shape {shape} of {dtype} needs {expected}",
        )
    return name, dtype, tuple(shape), offsets[0], offsets[1]


def _check_layout(path: Path, entries: list[_Entry], data_size: int) -> None:
    """Require the tensors to tile the data section exactly, as safetensors does."""
    position = 0
    for name, _dtype, _shape, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin < position:
            raise CheckpointError(path, f"tensor {name!r}: data overlaps the previous tensor")
        if begin > position:
            raise CheckpointError(
                path, f"tensor {name!r}: gap of {begin - position} bytes before its data"
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
    rows = shape[0] if shape else 1
    row_shape = shape[1:]
    row_bytes = (end - begin) // rows if rows else 0

    def read_rows(start: int, stop: int) -> np.ndarray:
        np_dtype = numpy_dtype(dtype)
        count = (stop - start) * row_bytes
        with path.open("rb") as handle:
            handle.seek(data_start + begin + start * row_bytes)
            buffer = handle.read(count)
        if len(buffer) != count:
            raise CheckpointError(path, f"tensor {name!r}: file ended while reading")
        array = np.frombuffer(buffer, dtype=np_dtype)
        return array.reshape((stop - start, *row_shape)) if shape else array.reshape(())

    return TensorRef(name, shape, dtype, end - begin, read_rows)
