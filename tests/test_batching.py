"""Batched eigenvalue solves on the CPU give the same spectra as one layer at a time."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_setol import spectra
from pytest_setol.config import Config
from pytest_setol.planner import plan_layers
from pytest_setol.reader import open_checkpoint
from pytest_setol.spectra import layer_spectra, layer_spectrum
from tests.conftest import heavy_tailed_matrix

#: Two float64 solves of one matrix by different LAPACK calls agree to a few
#: ulps of lambda_max.
SOLVER_RTOL = 1e-10


def plans_of(path):
    return plan_layers(open_checkpoint(path), Config()).layers


@pytest.fixture
def mixed_checkpoint(make_checkpoint):
    """Small matrices of two orders (batched), a large one (not), interleaved."""
    rng = np.random.default_rng(0)
    tensors = {}
    for index in range(6):
        rows, cols = ((160, 40), (30, 120), (150, 100))[index % 3]
        tensors[f"layer.{index}.weight"] = heavy_tailed_matrix(rows, cols, rng)
    return make_checkpoint(tensors)


def test_batched_equals_one_at_a_time(mixed_checkpoint):
    plans = plans_of(mixed_checkpoint)
    assert {p.M for p in plans} == {40, 30, 100}
    batched = layer_spectra(plans)
    for plan, spectrum in zip(plans, batched, strict=True):
        alone = layer_spectrum(plan)
        assert spectrum.eigenvalues.shape == (plan.L,)
        assert np.array_equal(spectrum.eigenvalues, alone.eigenvalues), plan.name


def test_small_batches_equal_one_batch(mixed_checkpoint, monkeypatch):
    plans = plans_of(mixed_checkpoint)
    whole = layer_spectra(plans)
    # Room for one 40 x 40 Gram matrix per batch.
    monkeypatch.setattr(spectra, "BATCH_BYTES", 40 * 40 * 8)
    split = layer_spectra(plans)
    for a, b in zip(whole, split, strict=True):
        assert np.array_equal(a.eigenvalues, b.eigenvalues)


def test_batched_matches_reference(mixed_checkpoint):
    for plan, spectrum in zip(
        plans := plans_of(mixed_checkpoint), layer_spectra(plans)
    ):
        matrix = plan.tensor.read().astype(np.float64)
        reference = np.sort(np.linalg.svd(matrix, compute_uv=False) ** 2)
        np.testing.assert_allclose(
            spectrum.eigenvalues, reference, rtol=0, atol=SOLVER_RTOL * reference[-1]
        )


def test_conv_slices_solved_as_stack(make_checkpoint):
    rng = np.random.default_rng(1)
    kernel = rng.standard_t(3.0, size=(48, 16, 3, 3))
    path = make_checkpoint({"conv.weight": kernel})
    (plan,) = plans_of(path)
    spectrum = layer_spectrum(plan)
    pooled = []
    for i in range(3):
        for j in range(3):
            matrix = kernel[:, :, i, j] * plan.scale
            pooled.append(np.linalg.svd(matrix, compute_uv=False) ** 2)
    reference = np.sort(np.concatenate(pooled))
    assert spectrum.eigenvalues.shape == (16 * 9,)
    np.testing.assert_allclose(
        spectrum.eigenvalues, reference, rtol=0, atol=SOLVER_RTOL * reference[-1]
    )


def test_invalid_layer_in_batch(make_checkpoint):
    rng = np.random.default_rng(2)
    bad = heavy_tailed_matrix(100, 20, rng)
    bad[5, 5] = np.inf
    bad[6, 6] = np.nan
    path = make_checkpoint(
        {
            "a.weight": heavy_tailed_matrix(100, 20, rng),
            "b.weight": bad,
            "c.weight": heavy_tailed_matrix(100, 20, rng),
        }
    )
    a, b, c = layer_spectra(plans_of(path))
    assert b.eigenvalues is None
    assert b.nonfinite == 2
    assert a.eigenvalues is not None
    assert c.eigenvalues is not None


def test_seconds_shared_over_batch(mixed_checkpoint):
    batched = layer_spectra(plans_of(mixed_checkpoint))
    assert all(spectrum.seconds > 0 for spectrum in batched)


def test_thread_pool_equals_serial(mixed_checkpoint, monkeypatch):
    from pytest_setol import analysis

    def without_timings(report):
        layers = report.to_dict()["checkpoints"][0]["layers"]
        return [{k: v for k, v in layer.items() if k != "seconds"} for layer in layers]

    monkeypatch.setattr(analysis, "cpu_workers", lambda: 3)
    pooled = analysis.analyze(mixed_checkpoint, device="cpu")
    monkeypatch.setattr(analysis, "cpu_workers", lambda: 1)
    serial = analysis.analyze(mixed_checkpoint, device="cpu")
    assert without_timings(pooled) == without_timings(serial)


def test_workers_follow_thread_variables(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert spectra.cpu_workers() == 1
