"""Golden spectra: exact eigenvalues planted in real float64 matrices."""

from __future__ import annotations

import numpy as np
import pytest

import pytest_setol
from pytest_setol.metrics import erg_condition
from tests.conftest import MakeCheckpoint, matrix_with_eigenvalues

#: The golden values are printed to 6 decimals; planting eigenvalues through
#: random orthogonal factors perturbs them by about 1e-12 relative.
GOLDEN_TOL = 1e-6
ROWS = 2000


def spectrum_a() -> np.ndarray:
    i = np.arange(1, 1001)
    return (1 - (i - 0.5) / 1000) ** (-1 / 1.5)


def spectrum_c() -> np.ndarray:
    k = np.arange(1, 101)
    tail = 1.2 * (1 - (k - 0.5) / 100) ** (-1 / 1.2)
    return np.concatenate([np.linspace(0.05, 1.0, 900), tail])


GOLDEN = {
    "a": (
        spectrum_a,
        dict(
            alpha=2.501271, xmin=1.000333, D=0.000673, sigma=0.047474,
            num_pl_spikes=1000, erg_num=563, erg_lambda_min=0.513797,
            erg_delta=-0.163569, erg_gap=-437,
        ),
    ),
    "c": (
        spectrum_c,
        dict(
            alpha=2.210256, xmin=1.205023, D=0.006733, sigma=0.121026,
            num_pl_spikes=100, erg_num=545, erg_lambda_min=0.555342,
            erg_delta=0.705368, erg_gap=445,
        ),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def golden_layers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(20250717)
    tensors = {
        name: matrix_with_eigenvalues(build(), ROWS, rng)
        for name, (build, _) in GOLDEN.items()
    }
    path = tmp_path_factory.mktemp("golden") / "golden.safetensors"
    save_file(tensors, str(path))
    report = pytest_setol.analyze(path, device="cpu")
    return {layer.name: layer for layer in report.layers}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_spectrum(golden_layers: dict[str, object], name: str) -> None:
    layer = golden_layers[name]
    expected = GOLDEN[name][1]
    assert layer.N == ROWS
    assert layer.M == 1000
    assert layer.L == 1000
    for key, value in expected.items():
        observed = getattr(layer, key)
        if isinstance(value, int):
            assert observed == value, key
        else:
            assert observed == pytest.approx(value, abs=GOLDEN_TOL), key


def test_erg_four_values() -> None:
    erg = erg_condition(np.array([0.5, 1.0, 2.0, 4.0]))
    assert erg.erg_num == 4
    assert erg.erg_lambda_min == pytest.approx(0.266667, abs=GOLDEN_TOL)


def test_erg_zeros_and_ones() -> None:
    erg = erg_condition(np.concatenate([np.zeros(90), np.ones(10)]))
    assert erg.erg_num == 11
    assert erg.erg_lambda_min == 0.0


def test_erg_constant_spectrum() -> None:
    erg = erg_condition(np.full(60, 3.0))
    assert erg.erg_num is None
    assert erg.erg_lambda_min is None
    assert "constant" in (erg.reason or "")


@pytest.mark.parametrize("factor", [1e-2, 0.37, 1.0, 11.0, 1e2])
def test_rescaling_invariance(make_checkpoint: MakeCheckpoint, factor: float) -> None:
    rng = np.random.default_rng(7)
    base = matrix_with_eigenvalues(spectrum_c()[::5], 400, rng)
    path = make_checkpoint({"w": base, "w_scaled": base * factor})
    report = pytest_setol.analyze(path, device="cpu")
    # With factor 1 the two tensors are identical and reported as aliases of
    # one layer; Report.layer finds a layer under either name.
    reference, scaled = report.layer("w"), report.layer("w_scaled")
    # Scaling W by c scales every eigenvalue by c**2; the fit and the ERG tail
    # only see ratios, so the results agree to rounding of the Gram solve.
    assert scaled.alpha == pytest.approx(reference.alpha, rel=1e-9)
    assert scaled.D == pytest.approx(reference.D, rel=1e-7, abs=1e-12)
    assert scaled.erg_num == reference.erg_num
    assert scaled.erg_delta == pytest.approx(reference.erg_delta, rel=1e-9)
    assert scaled.xmin == pytest.approx(reference.xmin * factor**2, rel=1e-9)
