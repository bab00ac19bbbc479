"""Open checkpoints as lazy tensor references; nothing here computes spectra.

A reference stores a tensor's name, shape and dtype from the file header and
reads rows on request, so planning a checkpoint costs one header read and
analysing it holds one tensor at a time. Files are opened read-only. Each
format has its own module (``reader_safetensors``, ``reader_sharded``,
``reader_torch``, ``reader_gguf``, ``reader_memory``); ``open_checkpoint`` picks
one by path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

_LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"

#: Float codes that the analysis reads (all upcast to float64).
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0")

#: safetensors dtype code of each numpy and torch dtype name (torch names
#: drop the ``torch.`` prefix).
DTYPE_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0", "complex64": "C64", "bool": "BOOL",
    "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64",
    "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64",
}  # fmt: skip

RowReader = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class LowRank:
    """A matrix held as the product ``scale * B @ A`` of small factors (a LoRA update).

    ``B`` has shape ``(rows, rank)`` and ``A`` ``(rank, cols)``, both float64.
    """

    B: np.ndarray = field(repr=False)
    A: np.ndarray = field(repr=False)
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a checkpoint, read on request.

    ``read_rows(start, stop)`` returns rows ``start:stop`` of the first axis in
    a numpy dtype: the stored one (bfloat16 and float8 through ml_dtypes), or
    float32 for a quantized tensor, whose ``quantization`` names its GGML type.
    ``nbytes`` is the stored size. ``read_flat_rows``, where a format provides
    it, reads rows of the tensor reshaped to ``(-1, shape[-1])``, so one matrix
    of a stacked 3-D tensor streams without reading the others. Tensors with
    equal ``storage_key`` share storage (tied weights in a torch file). A
    ``low_rank`` tensor is a product of factors whose eigenvalues are computed
    from the factors.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    read_rows: RowReader = field(repr=False, compare=False)
    quantization: str | None = None
    read_flat_rows: RowReader | None = field(default=None, repr=False, compare=False)
    storage_key: Hashable | None = field(default=None, repr=False, compare=False)
    low_rank: LowRank | None = field(default=None, repr=False, compare=False)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def read(self) -> np.ndarray:
        """Return the whole tensor."""
        rows = self.shape[0] if self.shape else 1
        return self.read_rows(0, rows).reshape(self.shape)

    def row_blocks(self, max_bytes: int) -> Iterator[np.ndarray]:
        """Yield the tensor in blocks of whole rows of at most ``max_bytes``.

        The size counts the larger of the stored and the returned row, so a
        quantized tensor, which expands when it is decoded, stays in bound.
        """
        rows = self.shape[0] if self.shape else 1
        step = max(1, max_bytes // max(1, self._row_bytes()))
        for start in range(0, rows, step):
            yield self.read_rows(start, min(rows, start + step))

    def _row_bytes(self) -> int:
        rows = self.shape[0] if self.shape else 1
        stored = self.nbytes // max(rows, 1)
        try:
            itemsize = numpy_dtype(self.dtype).itemsize
        except ValueError:
            return stored
        return max(stored, math.prod(self.shape[1:]) * itemsize)

    def select(self, index: int, name: str) -> TensorRef:
        """Return ``self[index]`` (one expert of a 3-D stack) as a tensor ``name``."""
        if len(self.shape) < 3:
            raise ValueError(
                f"select needs a tensor of 3 or more axes, not {self.shape}"
            )
        inner = self.shape[1:]
        nbytes = self.nbytes // max(1, self.shape[0])
        flat = self.read_flat_rows
        if flat is None:

            def read_rows(start: int, stop: int) -> np.ndarray:
                return self.read_rows(index, index + 1)[0][start:stop]

        else:
            # Rows of the (-1, shape[-1]) view per row of ``inner`` and per index.
            flat_per_row = math.prod(inner[1:-1])
            base = index * inner[0] * flat_per_row

            def read_rows(start: int, stop: int) -> np.ndarray:
                block = flat(base + start * flat_per_row, base + stop * flat_per_row)
                return block.reshape((stop - start, *inner[1:]))

        return TensorRef(name, inner, self.dtype, nbytes, read_rows, self.quantization)


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


#: Suffixes of torch pickle files (``torch.save``, Lightning, Hugging Face ``.bin``).
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_GGUF_MAGIC = b"GGUF"
_ZIP_MAGIC = b"PK\x03\x04"


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint by path; raise CheckpointError naming the file on failure.

    ``path`` is a ``.safetensors`` file, a ``*.safetensors.index.json`` or
    ``*.bin.index.json`` shard index, a torch pickle, a ``.gguf`` file, or a
    folder holding one of them (a Hugging Face model folder or a LoRA adapter).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "file not found; check the path")
    if path.is_dir():
        from .reader_sharded import read_folder

        return read_folder(path)
    head = _read_head(path)
    if path.name.endswith(".index.json"):
        from .reader_sharded import read_index

        return read_index(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from .reader_safetensors import read_safetensors

        return read_safetensors(path)
    if suffix == ".gguf" or head.startswith(_GGUF_MAGIC):
        from .reader_gguf import read_gguf

        return read_gguf(path)
    if suffix in TORCH_SUFFIXES or head.startswith((_ZIP_MAGIC, b"\x80")):
        from .reader_torch import read_torch_file

        return read_torch_file(path)
    raise CheckpointError(
        path,
        f"unsupported checkpoint format {path.suffix or '(no suffix)'!r}; expected "
        ".safetensors, a shard index (.index.json), a torch file "
        f"({', '.join(TORCH_SUFFIXES)}), .gguf, or a model folder",
    )


def _read_head(path: Path) -> bytes:
    """Return the first bytes of ``path``; reject empty files and Git LFS pointers."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_LFS_POINTER))
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file: {exc.strerror}") from exc
    if not head:
        raise CheckpointError(path, "file is empty")
    if head == _LFS_POINTER:
        raise CheckpointError(
            path,
            "is a Git LFS pointer, not the weights; run `git lfs pull` to fetch them",
        )
    return head
