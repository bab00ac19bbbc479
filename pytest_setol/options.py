"""Settings that change what a layer's analysis computes, shared by every front end."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

XMIN_STRATEGIES = ("ks", "median", "peak", "clip")
SCALES = ("raw", "1/N")


@dataclass(frozen=True)
class AnalysisOptions:
    """Settings of the eigenvalue computation and the fit.

    ``device`` is the resolved device (``cpu`` or ``cuda:N``), never ``auto``.
    ``cache_dir`` is the spectra cache directory, or None to compute every
    spectrum; it changes no result, so the report's settings leave it out.
    """

    device: str = "cpu"
    xmin_strategy: str = "ks"
    scale: str = "raw"
    randomize: bool = False
    seed: int = 0
    alpha_farms: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.xmin_strategy not in XMIN_STRATEGIES:
            raise ValueError(
                f"unknown xmin strategy {self.xmin_strategy!r}; "
                f"expected one of {', '.join(XMIN_STRATEGIES)}"
            )
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; expected raw or 1/N")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer of 0 or more, got {seed!r}")

    def to_dict(self) -> dict[str, Any]:
        settings = asdict(self)
        del settings["cache_dir"]
        return settings
