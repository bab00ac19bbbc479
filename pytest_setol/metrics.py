"""Spectral metrics of one layer: norms, the ERG condition and the MP bulk fit.

Every function takes all ``L`` eigenvalues of a layer (zeros included) on
the scale the caller chose, and returns plain floats or null values with a
reason. Nothing here depends on files or rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .powerlaw import FitFailure, PowerLawFit, is_constant

#: The MP iteration stops when sigma^2 changes by less than this, relatively.
_MP_TOLERANCE = 1e-9
_MP_MAX_ROUNDS = 100

#: Report keys whose values come from the power-law fit.
FIT_KEYS = (
    "alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "xmin_strategy",
    "num_fingers", "raw_alpha", "alpha_hat", "log_alpha_norm", "erg_delta",
    "erg_gap",
)  # fmt: skip


@dataclass(frozen=True)
class ErgResult:
    """The smallest tail of normalised eigenvalues whose log-sum is negative."""

    erg_num: int | None
    erg_lambda_min: float | None
    erg_tail_norm: float | None
    reason: str | None = None


@dataclass(frozen=True)
class MarchenkoPasturFit:
    """Bulk edges of a Marchenko-Pastur law fitted to the normalised spectrum."""

    mp_sigma: float
    mp_lambda_plus: float
    mp_lambda_minus: float
    num_spikes: int
    mp_softrank: float


def normalised(eigenvalues: np.ndarray) -> np.ndarray:
    """Return ``lambda * L / sum(lambda)``: the spectrum rescaled to mean 1."""
    return eigenvalues * (eigenvalues.size / eigenvalues.sum())


def erg_condition(eigenvalues: np.ndarray) -> ErgResult:
    """Find the ERG tail of SETOL's TRACE-LOG condition ``det X~ = 1``.

    The tail is the ``k`` largest normalised eigenvalues for the smallest
    ``k`` whose running sum of logs falls below 0; a running sum is used
    because the product of eigenvalues overflows.
    """
    if eigenvalues.size == 0 or is_constant(eigenvalues):
        return ErgResult(None, None, None, "constant spectrum: no ERG tail")
    scaled = np.sort(normalised(eigenvalues))[::-1]
    with np.errstate(divide="ignore"):
        running = np.cumsum(np.log(scaled))
    below = np.flatnonzero(running < 0.0)
    if below.size == 0:
        return ErgResult(None, None, None, "log-sum of the spectrum is not negative")
    count = int(below[0]) + 1
    tail = scaled[:count]
    return ErgResult(
        erg_num=count,
        erg_lambda_min=float(tail[-1]),
        erg_tail_norm=float(tail.sum() / scaled.size),
    )


def norm_metrics(
    eigenvalues: np.ndarray, alpha: float | None
) -> dict[str, float | None]:
    """Return the log norms, stable rank and ``alpha_hat`` of a spectrum."""
    total = float(eigenvalues.sum())
    top = float(eigenvalues.max())
    if top <= 0.0:
        return {
            "lambda_max": top,
            "log_norm": None,
            "log_spectral_norm": None,
            "stable_rank": None,
            "alpha_hat": None,
            "log_alpha_norm": None,
        }
    result: dict[str, float | None] = {
        "lambda_max": top,
        "log_norm": math.log10(total),
        "log_spectral_norm": math.log10(top),
        "stable_rank": total / top,
        "alpha_hat": None,
        "log_alpha_norm": None,
    }
    if alpha is not None:
        result["alpha_hat"] = alpha * math.log10(top)
        result["log_alpha_norm"] = _log10_power_sum(eigenvalues, alpha)
    return result


def _log10_power_sum(eigenvalues: np.ndarray, alpha: float) -> float:
    """Return ``log10(sum(lambda ** alpha))`` without overflowing."""
    positive = eigenvalues[eigenvalues > 0.0]
    logs = alpha * np.log(positive)
    peak = float(logs.max())
    return (peak + math.log(float(np.exp(logs - peak).sum()))) / math.log(10.0)


def marchenko_pastur_fit(
    eigenvalues: np.ndarray, q: float, m: int | None = None
) -> MarchenkoPasturFit | None:
    """Fit the MP bulk edge to the normalised spectrum by fixed-point iteration.

    ``q`` is ``N / M`` of each matrix and ``m`` its ``M``, which defaults to
    the number of eigenvalues (a pooled convolution has ``M * slices``).
    Returns None for a spectrum with no positive eigenvalue.
    """
    if eigenvalues.size == 0 or float(eigenvalues.sum()) <= 0.0:
        return None
    scaled = normalised(eigenvalues)
    edge = (1.0 + 1.0 / math.sqrt(q)) ** 2
    sigma2 = 1.0
    for _ in range(_MP_MAX_ROUNDS):
        inside = scaled[scaled <= sigma2 * edge]
        if inside.size == 0:
            break
        updated = float(inside.mean())
        converged = abs(updated - sigma2) < _MP_TOLERANCE * abs(sigma2)
        sigma2 = updated
        if converged:
            break
    lambda_plus = sigma2 * edge
    lambda_minus = sigma2 * (1.0 - 1.0 / math.sqrt(q)) ** 2
    threshold = spike_threshold(lambda_plus, q, m or eigenvalues.size)
    return MarchenkoPasturFit(
        mp_sigma=math.sqrt(sigma2),
        mp_lambda_plus=lambda_plus,
        mp_lambda_minus=lambda_minus,
        num_spikes=int(np.count_nonzero(scaled > threshold)),
        mp_softrank=lambda_plus / float(scaled.max()),
    )


def spike_threshold(lambda_plus: float, q: float, m: int) -> float:
    """Return the bulk edge plus the square root of its Tracy-Widom width.

    ``tw = Q ** -0.5 * lambda_plus ** (2/3) * M ** (-2/3)``; a normalised
    eigenvalue above the returned value is a spike.
    """
    tracy_widom = q**-0.5 * lambda_plus ** (2.0 / 3.0) * m ** (-2.0 / 3.0)
    return lambda_plus + math.sqrt(tracy_widom)


def erg_delta(
    fit: PowerLawFit | FitFailure, erg: ErgResult, eigenvalues: np.ndarray
) -> float | None:
    """Return where the power-law tail starts minus where the ERG tail starts.

    Both positions are in normalised units (mean eigenvalue 1).
    """
    if isinstance(fit, FitFailure) or erg.erg_lambda_min is None:
        return None
    return fit.xmin * eigenvalues.size / float(eigenvalues.sum()) - erg.erg_lambda_min


def fit_metrics(
    eigenvalues: np.ndarray, fit: PowerLawFit | FitFailure, erg: ErgResult
) -> dict[str, object]:
    """Return every report key that depends on the power-law fit.

    ``eigenvalues`` are all ``L`` of them on the scale of ``fit``. Every key
    is present, null when the fit failed, so applying the result replaces
    the values of another fit completely.
    """
    values: dict[str, object] = dict.fromkeys(FIT_KEYS)
    if isinstance(fit, FitFailure):
        return values
    values.update(
        alpha=fit.alpha,
        xmin=fit.xmin,
        xmax=fit.xmax,
        D=fit.D,
        sigma=fit.sigma,
        num_pl_spikes=fit.num_pl_spikes,
        xmin_strategy=fit.strategy,
        num_fingers=fit.num_fingers,
        raw_alpha=fit.raw_alpha,
        erg_delta=erg_delta(fit, erg, eigenvalues),
    )
    norms = norm_metrics(eigenvalues, fit.alpha)
    values.update(alpha_hat=norms["alpha_hat"], log_alpha_norm=norms["log_alpha_norm"])
    if erg.erg_num is not None:
        values["erg_gap"] = erg.erg_num - fit.num_pl_spikes
    return values
