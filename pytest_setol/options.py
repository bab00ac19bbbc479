"""Settings that change what a layer's analysis computes, shared by every front end."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

XMIN_STRATEGIES = ("ks", "median", "peak", "clip")
SCALES = ("raw", "1/N")


@dataclass(frozen=True)
class AnalysisOptions:
    """How eigenvalues are computed and fitted.

    ``device`` is the resolved device (``cpu`` or ``cuda:N``), never ``auto``.
    """

    device: str = "cpu"
    xmin_strategy: str = "ks"
    scale: str = "raw"
    randomize: bool = False
    seed: int = 0
    alpha_farms: bool = False

    def __post_init__(self) -> None:
        if self.xmin_strategy not in XMIN_STRATEGIES:
            raise ValueError(
                f"unknown xmin strategy {self.xmin_strategy!r}; "
                f"expected one of {', '.join(XMIN_STRATEGIES)}"
            )
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; expected raw or 1/N")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
