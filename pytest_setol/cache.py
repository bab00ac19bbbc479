"""Spectra cache: eigenvalues kept on disk between runs, keyed so none goes stale.

A key covers the tensor's content and everything that changes its
eigenvalues: the layer plan (name, shape, dtype, slices, scale), the engine
(device kind and precision), the block size of the Gram accumulation, and the
versions of this package and numpy. The content is identified one of two ways:

- by the file's identity (real path, device, inode, size, and the modification
  and status-change times in nanoseconds) for formats read from one file
  (and of its base file, for ``[delta]`` tensors). An unchanged file pins
  every tensor in it by name, and stat costs nothing next to a solve;
- by a SHA-256 hash of the tensor's bytes otherwise: folders, shard indexes,
  in-memory modules, and files changed less than ``RACY_SECONDS`` ago, whose
  timestamps could repeat within one tick of a coarse file system clock.

Entries are ``.npy`` files written atomically, so concurrent pytest-xdist
workers or Dask workers can share one directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import SetolError
from .planner import LayerPlan
from .reader import Checkpoint
from .spectra import BLOCK_BYTES, Spectrum, layer_spectra

#: Bumped whenever the stored layout or the eigenvalue computation changes.
CACHE_VERSION = 1
#: Files changed more recently than this are identified by content: two
#: writes within one timestamp tick (about 4 ms on ext4, 2 s on FAT) would
#: otherwise look like one file.
RACY_SECONDS = 2.0
#: Formats whose checkpoint path is the one file every tensor is read from.
SINGLE_FILE_FORMATS = frozenset({"safetensors", "gguf", "torch"})

_FileIdentity = tuple[str, int, int, int, int, int]


class SpectrumCache:
    """A directory of cached spectra."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetolError(
                f"cannot create the spectra cache directory {self.directory}: "
                f"{exc.strerror}; choose another cache directory or disable the cache"
            ) from exc

    def spectra(
        self, checkpoint: Checkpoint, plans: Sequence[LayerPlan], device: str
    ) -> list[Spectrum]:
        """Return the spectra of ``plans``: cached ones loaded, the rest computed.

        Computed spectra are stored unless the file changed while they were
        computed.
        """
        identity_before = checkpoint_identity(checkpoint)
        # A LoRA update's spectrum comes from its small factors: cheaper than a key.
        keys = [
            None
            if plan.tensor.low_rank is not None
            else self.key(plan, identity_before, device)
            for plan in plans
        ]
        results = [
            None if key is None else self.load(key, plan)
            for key, plan in zip(keys, plans, strict=True)
        ]
        missing = [index for index, spectrum in enumerate(results) if spectrum is None]
        if missing:
            computed = layer_spectra([plans[index] for index in missing], device)
            unchanged = checkpoint_identity(checkpoint) == identity_before
            for index, spectrum in zip(missing, computed, strict=True):
                results[index] = spectrum
                key = keys[index]
                if unchanged and key is not None:
                    self.store(key, spectrum)
        return [spectrum for spectrum in results if spectrum is not None]

    def key(
        self, plan: LayerPlan, identity: tuple[_FileIdentity, ...] | None, device: str
    ) -> str:
        """Return the hex key of ``plan``'s spectrum on ``device``."""
        material = {
            "cache_version": CACHE_VERSION,
            "package": _package_version(),
            "numpy": np.__version__,
            "engine": f"{device.partition(':')[0]}-float64",
            "block_bytes": BLOCK_BYTES,
            "plan": repr(plan),
            "source": identity if identity else content_hash(plan),
        }
        text = json.dumps(material, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key[2:]}.npy"

    def load(self, key: str, plan: LayerPlan) -> Spectrum | None:
        """Return the cached spectrum under ``key``, or None if absent or unusable."""
        start = time.perf_counter()
        try:
            values = np.load(self.path(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if values.ndim != 1:
            return None
        seconds = time.perf_counter() - start
        if values.dtype == np.int64 and values.size == 1:
            return Spectrum(None, int(values[0]), seconds)
        if values.dtype != np.float64 or values.size != plan.L:
            return None
        return Spectrum(values, seconds=seconds)

    def store(self, key: str, spectrum: Spectrum) -> None:
        """Write ``spectrum`` under ``key``; a failed write leaves no entry."""
        if spectrum.eigenvalues is None:
            values = np.array([spectrum.nonfinite], dtype=np.int64)
        else:
            values = np.asarray(spectrum.eigenvalues, dtype=np.float64)
        target = self.path(key)
        temporary: str | None = None
        try:
            target.parent.mkdir(exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as file:
                np.save(file, values, allow_pickle=False)
            os.replace(temporary, target)
        except OSError:
            # A full or read-only disk loses only the cache entry, so the
            # result is still returned.
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)


def default_cache_dir() -> Path:
    """Return the command line's cache: ``$SETOL_CACHE_DIR``, else the user cache."""
    explicit = os.environ.get("SETOL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return Path(base) / "pytest-setol"


def checkpoint_identity(checkpoint: Checkpoint) -> tuple[_FileIdentity, ...] | None:
    """Return the stat identity of the files a checkpoint's tensors are read from.

    That is the checkpoint file, plus its base file when the checkpoint was
    compared with one (the ``[delta]`` tensors read both). Returns None, so
    that content is hashed, for other layouts and for recently changed files.
    """
    if checkpoint.format not in SINGLE_FILE_FORMATS:
        return None
    paths = [checkpoint.path]
    if "base" in checkpoint.metadata:
        paths.append(checkpoint.metadata["base"])
    identities = [file_identity(path) for path in paths]
    if any(identity is None for identity in identities):
        return None
    return tuple(identity for identity in identities if identity is not None)


def file_identity(path: str) -> _FileIdentity | None:
    """Return the stat identity of a regular file, or None if it changed recently.

    Also None when the file is missing or not a regular file.
    """
    try:
        real = os.path.realpath(path)
        stat = os.stat(real)
    except OSError:
        return None
    if not os.path.isfile(real):
        return None
    newest = max(stat.st_mtime_ns, stat.st_ctime_ns)
    if time.time_ns() - newest < RACY_SECONDS * 1e9:
        return None
    return (
        real,
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
    )


def content_hash(plan: LayerPlan) -> str:
    """Return the SHA-256 of the tensor's values as read, block by block."""
    digest = hashlib.sha256()
    for block in plan.tensor.row_blocks(BLOCK_BYTES):
        digest.update(np.ascontiguousarray(block).view(np.uint8).data)
    return digest.hexdigest()


def _package_version() -> str:
    from . import __version__

    return __version__
