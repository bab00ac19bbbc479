"""ESD and alpha overview figures as PNG bytes, drawn with matplotlib.

matplotlib is the optional ``plot`` extra: it is imported when a figure is
drawn, never at import, and a missing install raises PlotUnavailableError
with the install command. Figures use matplotlib's object API with the
Agg canvas, so drawing never touches pyplot's global state or the caller's
backend.

Results do not store eigenvalues, so the figures read each analysed layer's
spectrum from the spectra cache, or compute it again from the checkpoint on
the report's device when there is no cache.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SetolError
from .results import CheckpointResult, LayerResult, Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .planner import Plan
    from .reader import Checkpoint

#: Install hint shown wherever figures are requested without matplotlib.
PLOT_INSTALL_HINT = "pip install pytest-setol[plot]"
#: The power-law fit ignores eigenvalues at or below this absolute floor.
FIT_FLOOR = 1e-5
#: HTSR's usual alpha band, shaded when the report carries no alpha rule.
DEFAULT_ALPHA_BAND = (2.0, 6.0)
#: Resolution of the PNG files, in dots per inch.
DPI = 96
_HISTOGRAM_BINS = 60
_ANALYSED = (
    "ok",
    "over-trained",
    "under-trained",
    "erg-violated",
    "flagged",
    "fit-failed",
)

FigureCallback = Callable[[str], None]


class PlotUnavailableError(SetolError):
    """matplotlib, the ``plot`` extra, is not installed."""


@dataclass(frozen=True)
class LayerFigure:
    """The ESD figure of one layer."""

    name: str
    png: bytes


@dataclass(frozen=True)
class CheckpointFigures:
    """The alpha overview and the per-layer ESD figures of one checkpoint.

    ``note`` is the reason the ESD figures are missing, when they are.
    """

    path: str
    overview: bytes | None
    layers: tuple[LayerFigure, ...]
    note: str | None = None


def plotting_available() -> bool:
    """Return True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailableError(
            f"figures need matplotlib, which is not installed: {PLOT_INSTALL_HINT}"
        ) from exc
    # Fixed margins: constrained layout costs more than drawing these figures.
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure, tight: bool = False) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(
        buffer, format="png", dpi=DPI, bbox_inches="tight" if tight else None
    )
    return buffer.getvalue()


def esd_figure(layer: LayerResult, eigenvalues: np.ndarray) -> bytes:
    """Draw the log-log ESD of one layer with its power-law fit; return PNG bytes.

    The histogram is a density over the eigenvalues above the fit floor.
    The fitted density ``(alpha - 1) / xmin * (x / xmin) ** -alpha`` is drawn
    from ``xmin`` to ``xmax``, scaled by the fraction of values in the tail,
    with vertical lines where the power-law tail and the ERG tail start.
    """
    figure = _new_figure(5.6, 3.8)
    figure.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.86)
    axes = figure.add_subplot()
    values = np.sort(eigenvalues)
    positive = values[values > FIT_FLOOR]
    if positive.size >= 2 and positive[-1] > positive[0]:
        edges = np.geomspace(positive[0], positive[-1], _HISTOGRAM_BINS + 1)
        density, _ = np.histogram(positive, bins=edges, density=True)
        # One stairs artist draws much faster than hist's one patch per bin.
        axes.stairs(density, edges, fill=True, color="#9ab8d8", label="ESD")
    elif positive.size:
        axes.axvline(positive[0], color="#9ab8d8", label="ESD (one value)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    # Decade ticks suffice here, and minor log ticks cost a third of the drawing.
    axes.minorticks_off()
    if layer.alpha is not None and layer.xmin is not None and positive.size:
        _draw_fit(axes, layer, positive)
    erg_start = _erg_tail_start(layer, values)
    if erg_start is not None:
        axes.axvline(erg_start, color="#2a9d4b", linestyle=":", label="ERG tail start")
    axes.set_xlabel(f"eigenvalue ({layer.scale} scale)")
    axes.set_ylabel("density")
    axes.set_title(_esd_title(layer), fontsize=9)
    axes.legend(fontsize=7, loc="lower left")
    return _png(figure)


def _draw_fit(axes: Any, layer: LayerResult, positive: np.ndarray) -> None:
    alpha = float(layer.alpha)  # type: ignore[arg-type]
    xmin = float(layer.xmin)  # type: ignore[arg-type]
    xmax = float(layer.xmax) if layer.xmax is not None else float(positive[-1])
    tail_fraction = np.count_nonzero(positive >= xmin) / positive.size
    if xmax > xmin:
        x = np.geomspace(xmin, xmax, 100)
        density = tail_fraction * (alpha - 1.0) / xmin * (x / xmin) ** -alpha
        axes.plot(x, density, color="#c0392b", label=f"power law, alpha {alpha:.2f}")
    axes.axvline(xmin, color="#c0392b", linestyle="--", label="xmin")


def _erg_tail_start(layer: LayerResult, eigenvalues: np.ndarray) -> float | None:
    """Return where the ERG tail starts, converted from normalised to plotted units."""
    if layer.erg_lambda_min is None or eigenvalues.size == 0:
        return None
    total = float(eigenvalues.sum())
    if total <= 0.0:
        return None
    return layer.erg_lambda_min * total / eigenvalues.size


def _esd_title(layer: LayerResult) -> str:
    if layer.alpha is None:
        return f"{layer.name}\n{layer.status}: {layer.reason or 'no power-law fit'}"
    parts = [f"alpha = {layer.alpha:.3f}"]
    if layer.erg_delta is not None:
        parts.append(f"erg_delta = {layer.erg_delta:.3f}")
    parts.append(layer.status)
    return f"{layer.name}\n" + ", ".join(parts)


def overview_figure(checkpoint: CheckpointResult) -> bytes:
    """Draw alpha per layer in report order with the alpha band; return PNG bytes.

    Layers whose status is not ``ok`` get a red cross, and layers flagged
    ``fit-unreliable`` a grey ring.
    """
    fitted = [layer for layer in checkpoint.layers if layer.alpha is not None]
    width = min(16.0, max(6.0, 0.18 * len(fitted) + 2.0))
    figure = _new_figure(width, 4.2)
    axes = figure.add_subplot()
    low, high = alpha_band(checkpoint)
    if low is not None or high is not None:
        axes.axhspan(
            low if low is not None else 0.0,
            high if high is not None else max([6.0] + [f.alpha or 0 for f in fitted]),
            color="#d8ecd8",
            label=f"alpha rule [{_bound(low)}, {_bound(high)}]",
        )
    positions = np.arange(len(fitted))
    alphas = np.array([layer.alpha for layer in fitted], dtype=float)
    flagged = np.array([layer.status != "ok" for layer in fitted], dtype=bool)
    axes.plot(positions, alphas, color="#4a6fa5", marker="o", markersize=3, lw=1)
    unreliable = np.array(["fit-unreliable" in layer.flags for layer in fitted], bool)
    if unreliable.any():
        axes.scatter(
            positions[unreliable],
            alphas[unreliable],
            marker="o",
            s=60,
            facecolors="none",
            edgecolors="#7f7f7f",
            zorder=3,
            label="fit-unreliable",
        )
    if flagged.any():
        axes.scatter(
            positions[flagged],
            alphas[flagged],
            marker="x",
            s=50,
            color="#c0392b",
            zorder=4,
            label="status not ok",
        )
    axes.set_ylabel("alpha")
    axes.set_title(f"{checkpoint.path}: alpha per layer", fontsize=9)
    step = max(1, math.ceil(len(fitted) / 80))
    axes.set_xticks(positions[::step])
    axes.set_xticklabels([f.name for f in fitted][::step], rotation=90, fontsize=6)
    axes.legend(fontsize=7, loc="upper left")
    # Tick labels are layer names of any length: fit the margins to them.
    return _png(figure, tight=True)


def alpha_band(checkpoint: CheckpointResult) -> tuple[float | None, float | None]:
    """Return the alpha rule's bounds as the layers' verdicts state them."""
    for layer in checkpoint.layers:
        for verdict in layer.verdicts:
            if verdict.rule == "alpha" and verdict.outcome != "skip":
                return verdict.min, verdict.max
    return DEFAULT_ALPHA_BAND


def _bound(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def layer_spectra(
    checkpoint: CheckpointResult, device: str = "cpu", cache_dir: str | None = None
) -> Iterator[tuple[LayerResult, np.ndarray]]:
    """Yield each analysed layer of ``checkpoint`` with its eigenvalues.

    The spectra are computed again from the file, or loaded from the spectra
    cache in ``cache_dir`` where the analysis stored them. Raises
    CheckpointError when the file can no longer be read.
    """
    from .reader import open_checkpoint

    analysed = {
        layer.name: layer for layer in checkpoint.layers if layer.status in _ANALYSED
    }
    if not analysed:
        return
    source = open_checkpoint(checkpoint.path)
    plans = [p for p in _plan(source, checkpoint).layers if p.name in analysed]
    if cache_dir is not None:
        from .cache import SpectrumCache

        spectra = SpectrumCache(cache_dir).spectra(source, plans, device)
    else:
        from .spectra import layer_spectra as compute_spectra

        spectra = compute_spectra(plans, device)
    for layer_plan, spectrum in zip(plans, spectra, strict=True):
        if spectrum.eigenvalues is None:
            continue
        layer = analysed[layer_plan.name]
        eigenvalues = spectrum.eigenvalues
        if layer.scale == "1/N" and layer_plan.N:
            eigenvalues = eigenvalues / layer_plan.N
        yield layer, eigenvalues


def _plan(source: Checkpoint, checkpoint: CheckpointResult) -> Plan:
    """Plan ``source`` under the thresholds file the analysis used, when readable.

    The same configuration gives the same plans, so spectra cache keys match.
    """
    from .config import Config, load_config
    from .errors import ConfigError
    from .planner import plan_layers

    config = Config()
    if checkpoint.config is not None:
        try:
            config = load_config(checkpoint.config)
        except ConfigError:
            pass  # Changed since the analysis: plan with the defaults.
    return plan_layers(source, config)


def render_figures(
    report: Report,
    on_figure: FigureCallback | None = None,
    cache_dir: str | None = None,
) -> tuple[CheckpointFigures, ...]:
    """Draw the overview and ESD figures of every readable checkpoint of ``report``.

    ``on_figure`` is called with each layer name after its figure is drawn;
    ``cache_dir`` is the spectra cache of the analysis, if any. A
    checkpoint that cannot be reopened (in-memory weights, a file changed
    since) keeps its overview and gets a note in place of its ESD figures.
    """
    from .errors import CheckpointError

    device = str(report.settings.get("device", "cpu"))
    figures = []
    for checkpoint in report.checkpoints:
        if checkpoint.error is not None:
            continue
        layers = []
        note = None
        try:
            for layer, eigenvalues in layer_spectra(checkpoint, device, cache_dir):
                layers.append(LayerFigure(layer.name, esd_figure(layer, eigenvalues)))
                if on_figure is not None:
                    on_figure(layer.name)
        except CheckpointError as exc:
            note = f"ESD figures not drawn: {exc}"
        overview = overview_figure(checkpoint) if checkpoint.layers else None
        figures.append(
            CheckpointFigures(checkpoint.path, overview, tuple(layers), note)
        )
    return tuple(figures)


def figure_count(report: Report) -> int:
    """Return how many ESD figures ``render_figures`` draws for ``report``."""
    return sum(
        1
        for checkpoint in report.checkpoints
        if checkpoint.error is None
        for layer in checkpoint.layers
        if layer.status in _ANALYSED
    )


def write_figures(
    figures: tuple[CheckpointFigures, ...], directory: Path
) -> list[Path]:
    """Write the figures as PNG files, one folder per checkpoint; return the paths.

    Files are ``overview.png`` and ``esd-NNN-<layer>.png`` numbered in report
    order, so a file listing keeps the layers' natural order.
    """
    written = []
    used: set[str] = set()
    for checkpoint in figures:
        folder = directory / _unique(_safe_name(Path(checkpoint.path).name), used)
        folder.mkdir(parents=True, exist_ok=True)
        if checkpoint.overview is not None:
            written.append(_write(folder / "overview.png", checkpoint.overview))
        for index, layer in enumerate(checkpoint.layers, start=1):
            name = f"esd-{index:03d}-{_safe_name(layer.name)}.png"
            written.append(_write(folder / name, layer.png))
    return written


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _safe_name(name: str) -> str:
    """Return ``name`` with every character outside ``[A-Za-z0-9._-]`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120] or "checkpoint"


def _unique(name: str, used: set[str]) -> str:
    candidate, suffix = name, 2
    while candidate in used:
        candidate, suffix = f"{name}-{suffix}", suffix + 1
    used.add(candidate)
    return candidate
