"""Read GGUF files (llama.cpp and friends), dequantizing tensors in blocks of rows.

The header is parsed here, skipping metadata arrays without decoding them:
``gguf.GGUFReader`` (gguf 0.19.0) decodes every element of every array, which
took 26 s for Gemma 3 270M's 262,144-token vocabulary on a 2-core machine,
against 0.7 s here. Type sizes and dequantization come from ``gguf``.

GGUF lists dimensions innermost first, so a tensor of GGUF shape
``[cols, rows]`` is the numpy array ``(rows, cols)``. Each row is a whole
number of quantization blocks, so rows decode independently and memory stays
at one block of rows.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .reader import Checkpoint, TensorRef, natural_key, numpy_dtype

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
#: Sizes of the fixed-width GGUF metadata value types, by type id.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
#: GGML types stored as plain numbers, and their dtype codes.
_PLAIN = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64",
          "I8": "I8", "I16": "I16", "I32": "I32", "I64": "I64"}  # fmt: skip


class _Truncated(Exception):
    """The header ended before a field it declares."""


class _Cursor:
    """Sequential little-endian reads over the file's bytes."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> Any:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise _Truncated
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise _Truncated
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        return bytes(self.take(self.unpack("<Q"))).decode("utf-8", errors="replace")

    def skip_value(self, value_type: int) -> Any:
        """Skip one value, returning it only when it is a scalar (for alignment)."""
        if value_type in _SCALAR_SIZES:
            return self.take(_SCALAR_SIZES[value_type])
        if value_type == _STRING:
            self.take(self.unpack("<Q"))
            return None
        if value_type == _ARRAY:
            item_type, count = self.unpack("<IQ")
            if item_type in _SCALAR_SIZES:
                self.take(_SCALAR_SIZES[item_type] * count)
            else:
                for _ in range(count):
                    self.skip_value(item_type)
            return None
        raise ValueError(f"unknown metadata value type {value_type}")


def read_gguf(path: Path) -> Checkpoint:
    """Parse a GGUF header and return lazy, dequantizing references to its tensors."""
    try:
        import gguf
    except ImportError:
        raise CheckpointError(
            path, "reading GGUF files needs gguf: pip install 'pytest-setol[gguf]'"
        ) from None
    file_size = path.stat().st_size
    with (
        path.open("rb") as handle,
        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
    ):
        try:
            infos, data_start, architecture = _parse_header(path, _Cursor(data))
        except _Truncated:
            raise CheckpointError(
                path, "GGUF header ends early; the file is truncated"
            ) from None
        except (ValueError, UnicodeError) as exc:
            raise CheckpointError(path, f"invalid GGUF header: {exc}") from None
    tensors = []
    for name, dims, type_id, offset in infos:
        tensors.append(
            _tensor_ref(path, gguf, name, dims, type_id, data_start + offset, file_size)
        )
    tensors.sort(key=lambda tensor: natural_key(tensor.name))
    metadata = {"architecture": architecture} if architecture else {}
    return Checkpoint(str(path), "gguf", tuple(tensors), metadata)


_Info = tuple[str, tuple[int, ...], int, int]


def _parse_header(path: Path, cursor: _Cursor) -> tuple[list[_Info], int, str]:
    if bytes(cursor.take(4)) != _MAGIC:
        raise CheckpointError(path, "not a GGUF file (the magic bytes are wrong)")
    version = cursor.unpack("<I")
    if version not in _VERSIONS:
        if version & 0xFFFF == 0:
            raise CheckpointError(path, "big-endian GGUF files are not supported")
        raise CheckpointError(path, f"GGUF version {version} is not supported (2 or 3)")
    tensor_count, kv_count = cursor.unpack("<QQ")
    alignment = _DEFAULT_ALIGNMENT
    architecture = ""
    for _ in range(kv_count):
        key = cursor.string()
        value_type = cursor.unpack("<I")
        if key == "general.architecture" and value_type == _STRING:
            architecture = cursor.string()
            continue
        value = cursor.skip_value(value_type)
        if key == "general.alignment" and value_type == _UINT32:
            alignment = struct.unpack("<I", value)[0]
            if alignment == 0 or alignment & (alignment - 1):
                raise CheckpointError(
                    path, f"general.alignment {alignment} is not a power of two"
                )
    infos: list[_Info] = []
    seen: set[str] = set()
    for _ in range(tensor_count):
        name = cursor.string()
        n_dims = cursor.unpack("<I")
        if n_dims > 8:
            raise CheckpointError(path, f"tensor {name!r}: {n_dims} dimensions")
        dims = tuple(cursor.unpack("<Q") for _ in range(n_dims))
        type_id, offset = cursor.unpack("<IQ")
        if name in seen:
            raise CheckpointError(path, f"tensor {name!r} appears twice")
        seen.add(name)
        infos.append((name, dims, type_id, offset))
    data_start = -(-cursor.offset // alignment) * alignment
    return infos, data_start, architecture


def _tensor_ref(
    path: Path,
    gguf: Any,
    name: str,
    dims: tuple[int, ...],
    type_id: int,
    begin: int,
    file_size: int,
) -> TensorRef:
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
    except ValueError:
        raise CheckpointError(
            path, f"tensor {name!r}: unknown GGML type {type_id}"
        ) from None
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    shape = tuple(int(d) for d in reversed(dims))
    cols = int(dims[0]) if dims else 1
    if cols % block_size:
        raise CheckpointError(
            path,
            f"tensor {name!r}: row length {cols} is not a multiple of the "
            f"{qtype.name} block size {block_size}",
        )
    row_bytes = cols // block_size * type_size
    flat_rows = math.prod(shape[:-1]) if shape else 1
    nbytes = flat_rows * row_bytes
    if begin + nbytes > file_size:
        raise CheckpointError(
            path,
            f"tensor {name!r}: data runs past the end of the file; "
            "the file is truncated",
        )
    plain = _PLAIN.get(qtype.name)
    code = plain or "F32"

    def read_flat_rows(start: int, stop: int) -> np.ndarray:
        size = (stop - start) * row_bytes
        with path.open("rb") as handle:
            handle.seek(begin + start * row_bytes)
            buffer = handle.read(size)
        if len(buffer) != size:
            raise CheckpointError(path, f"tensor {name!r}: file ended while reading")
        if plain is not None:
            values = np.frombuffer(buffer, dtype=numpy_dtype(code))
            return values.reshape(stop - start, cols)
        raw = np.frombuffer(buffer, dtype=np.uint8).reshape(stop - start, row_bytes)
        try:
            return gguf.quants.dequantize(raw, qtype)
        except NotImplementedError:
            raise CheckpointError(
                path,
                f"tensor {name!r}: the installed gguf package cannot dequantize "
                f"{qtype.name}; upgrade gguf",
            ) from None

    # Rows of the first axis span this many rows of the (-1, cols) view.
    per_row = math.prod(shape[1:-1]) if len(shape) > 1 else 1

    def read_rows(start: int, stop: int) -> np.ndarray:
        if len(shape) <= 1:
            values = read_flat_rows(0, 1)
            return values.reshape(shape)[start:stop] if shape else values.reshape(())
        values = read_flat_rows(start * per_row, stop * per_row)
        return values.reshape((stop - start, *shape[1:]))

    quantization = None if plain else qtype.name
    return TensorRef(name, shape, code, nbytes, read_rows, quantization, read_flat_rows)
