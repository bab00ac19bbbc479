"""Randomization: seeded shuffles, correlation traps and the ESD distance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import pytest_setol
from pytest_setol.planner import LayerPlan
from pytest_setol.randomize import (
    RandomizedSpectrum,
    layer_matrices,
    matrix_eigenvalues,
    randomize_layer,
    shuffle_generator,
    shuffled,
    spectral_distance,
)
from pytest_setol.reader import TensorRef, open_checkpoint
from tests.conftest import MakeCheckpoint, heavy_tailed_matrix

RAND_KEYS = ("rand_num_spikes", "rand_traps", "rand_lambda_max", "rand_jsd")
#: A shuffled Gaussian matrix is again Gaussian: its ESD differs from the
#: original's by the noise of two 400-value histograms in 100 bins only
#: (measured 0.14 to 0.17 over five seeds).
SAME_LAW_JSD = 0.25
#: A rank-2 signal far above the noise makes up most of the Frobenius norm,
#: so after normalisation the original bulk sits far below the shuffled one
#: (measured 0.96).
STRUCTURED_JSD = 0.5


@pytest.fixture
def checkpoint(make_checkpoint: MakeCheckpoint) -> Path:
    rng = np.random.default_rng(0)
    return make_checkpoint(
        {
            "dense": heavy_tailed_matrix(300, 120, rng, tail=2.5),
            "conv": rng.standard_t(2.5, size=(40, 24, 3, 3)),
        }
    )


def randomized_values(path: Path, seed: int) -> dict[str, dict[str, object]]:
    report = pytest_setol.analyze(path, device="cpu", randomize=True, seed=seed)
    return {
        layer.name: {key: getattr(layer, key) for key in RAND_KEYS}
        for layer in report.layers
    }


def test_generator_seeded_by_seed_and_name() -> None:
    expected = np.random.default_rng(
        np.random.SeedSequence([7, zlib.crc32(b"layers.0.weight")])
    ).random(5)
    assert np.array_equal(shuffle_generator("layers.0.weight", 7).random(5), expected)


def test_shuffle_permutes_each_slice_separately() -> None:
    rng = np.random.default_rng(1)
    slices = [rng.standard_normal((6, 4)) + 100.0 * index for index in range(3)]
    result = shuffled(slices, "conv", 3)
    for before, after in zip(slices, result, strict=True):
        assert after.shape == before.shape
        assert np.array_equal(np.sort(after.ravel()), np.sort(before.ravel()))
        assert not np.array_equal(after, before)


def test_shuffle_draws_slices_in_order() -> None:
    rng = np.random.default_rng(2)
    slices = [rng.standard_normal((5, 5)) for _ in range(2)]
    generator = shuffle_generator("conv", 4)
    first = generator.permutation(slices[0].ravel()).reshape(5, 5)
    second = generator.permutation(slices[1].ravel()).reshape(5, 5)
    result = shuffled(slices, "conv", 4)
    assert np.array_equal(result[0], first)
    assert np.array_equal(result[1], second)


def test_conv_layer_matrices_are_slices(checkpoint: Path) -> None:
    tensor = next(t for t in open_checkpoint(checkpoint).tensors if t.name == "conv")
    plan = LayerPlan("conv", "conv2d", tensor, 40, 24, slices=9)
    matrices = layer_matrices(plan)
    kernel = tensor.read()
    assert len(matrices) == 9
    assert np.array_equal(matrices[4], kernel[:, :, 1, 1])


def test_same_seed_same_numbers(checkpoint: Path) -> None:
    assert randomized_values(checkpoint, 11) == randomized_values(checkpoint, 11)


def test_different_seeds_differ(checkpoint: Path) -> None:
    first = randomized_values(checkpoint, 11)
    second = randomized_values(checkpoint, 12)
    for name in ("dense", "conv"):
        assert first[name]["rand_lambda_max"] != second[name]["rand_lambda_max"]
        assert first[name]["rand_jsd"] != second[name]["rand_jsd"]


def test_same_seed_same_numbers_across_processes(checkpoint: Path) -> None:
    # A fresh interpreter with another hash seed: nothing may depend on
    # Python's per-process string hashing or on import order.
    script = (
        "import json, sys, pytest_setol\n"
        "report = pytest_setol.analyze(sys.argv[1], device='cpu', randomize=True, "
        "seed=11)\n"
        "keys = " + repr(RAND_KEYS) + "\n"
        "print(json.dumps({l.name: {k: getattr(l, k) for k in keys} "
        "for l in report.layers}))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    completed = subprocess.run(
        [sys.executable, "-c", script, str(checkpoint)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    other = json.loads(completed.stdout)
    here = json.loads(json.dumps(randomized_values(checkpoint, 11)))
    assert other == here


def test_gaussian_matrix_has_no_traps() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((800, 400))
    result = randomize_plan(matrix)
    assert result.rand_num_spikes == 0
    assert result.rand_traps == ()
    assert result.rand_jsd is not None
    assert result.rand_jsd < SAME_LAW_JSD


def test_large_entry_is_a_correlation_trap() -> None:
    # One entry far above the rest survives any shuffle and makes one
    # eigenvalue of about its square.
    rng = np.random.default_rng(4)
    matrix = rng.standard_normal((800, 400))
    matrix[10, 20] = 200.0
    result = randomize_plan(matrix)
    assert result.rand_num_spikes == 1
    assert result.rand_traps is not None
    assert len(result.rand_traps) == 1
    assert result.rand_traps[0] == pytest.approx(200.0**2, rel=0.1)
    assert result.rand_lambda_max == result.rand_traps[0]


def test_structured_matrix_is_far_from_shuffled() -> None:
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((800, 400))
    u, _ = np.linalg.qr(rng.standard_normal((800, 2)))
    v, _ = np.linalg.qr(rng.standard_normal((400, 2)))
    matrix = noise + (u * np.array([2000.0, 1500.0])) @ v.T
    result = randomize_plan(matrix)
    assert result.rand_jsd is not None
    assert result.rand_jsd > STRUCTURED_JSD


def test_traps_on_layer_scale(checkpoint: Path) -> None:
    raw = pytest_setol.analyze(checkpoint, device="cpu", randomize=True).layer("dense")
    scaled = pytest_setol.analyze(
        checkpoint, device="cpu", randomize=True, scale="1/N"
    ).layer("dense")
    assert raw.rand_traps is not None
    assert scaled.rand_traps is not None
    assert len(scaled.rand_traps) == len(raw.rand_traps)
    for trap, scaled_trap in zip(raw.rand_traps, scaled.rand_traps, strict=True):
        assert scaled_trap == pytest.approx(trap / 300, rel=1e-12)


def test_randomization_off_by_default(checkpoint: Path) -> None:
    layer = pytest_setol.analyze(checkpoint, device="cpu").layer("dense")
    assert all(getattr(layer, key) is None for key in RAND_KEYS)


def test_matrix_eigenvalues_match_svd() -> None:
    rng = np.random.default_rng(6)
    for shape in [(50, 30), (30, 50)]:
        matrix = rng.standard_normal(shape).astype(np.float32)
        expected = np.sort(np.linalg.svd(matrix.astype(np.float64))[1] ** 2)
        assert np.allclose(matrix_eigenvalues(matrix), expected, rtol=1e-10)


def test_spectral_distance_bounds() -> None:
    rng = np.random.default_rng(7)
    spectrum = rng.exponential(1.0, 200)
    assert spectral_distance(spectrum, spectrum) == 0.0
    # Disjoint supports after normalisation: the distance is 1 (base 2).
    disjoint = np.concatenate([np.full(100, 1.0), np.full(100, 1e6)])
    assert spectral_distance(np.full(200, 1.0) + rng.random(200) * 1e-3, disjoint) == (
        pytest.approx(1.0)
    )
    assert spectral_distance(np.zeros(10), spectrum) is None


def randomize_plan(matrix: np.ndarray) -> RandomizedSpectrum:
    """Randomize an in-memory matrix through the same plan a checkpoint gets."""
    tensor = TensorRef(
        "w", matrix.shape, "F64", matrix.nbytes, lambda start, stop: matrix[start:stop]
    )
    rows, cols = matrix.shape
    plan = LayerPlan("w", "linear", tensor, rows, cols)
    eigenvalues = np.sort(np.linalg.svd(matrix)[1] ** 2)
    return randomize_layer(plan, layer_matrices(plan), eigenvalues, seed=0, factor=1.0)
