"""The analysis pipeline behind every front end: checkpoint in, results out."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .config import Config, load_config
from .errors import CheckpointError
from .options import AnalysisOptions
from .metrics import erg_condition, erg_delta, marchenko_pastur_fit, norm_metrics
from .planner import LayerPlan, Plan, plan_layers
from .powerlaw import FitFailure, fit_power_law
from .reader import Checkpoint, open_checkpoint
from .results import CheckpointResult, LayerResult, Report
from .spectra import layer_spectrum
from .verdicts import judge_layer, judge_model, summarize

#: File looked up beside a checkpoint when no configuration is given.
CONFIG_NAME = "setol.yaml"

LayerCallback = Callable[[LayerResult], None]


def analyze_layer(
    plan: LayerPlan, config: Config, options: AnalysisOptions | None = None
) -> LayerResult:
    """Compute the spectrum, fit and metrics of one planned layer, then judge it."""
    options = options or AnalysisOptions()
    start = time.perf_counter()
    layer = LayerResult(
        name=plan.name,
        kind=plan.kind,
        shape=plan.tensor.shape,
        N=plan.N,
        M=plan.M,
        Q=plan.Q if plan.M else None,
        L=plan.L,
        dtype=plan.tensor.dtype,
        quantization=plan.tensor.quantization,
        scale=options.scale,
    )
    if plan.skip_reason is not None:
        layer = dataclasses.replace(layer, status="skipped", reason=plan.skip_reason)
        return judge_layer(layer, (), config)
    spectrum = layer_spectrum(plan, options.device)
    if spectrum.eigenvalues is None:
        layer = dataclasses.replace(
            layer,
            status="invalid",
            reason=f"{spectrum.nonfinite} NaN or Inf entries",
        )
    else:
        layer = _measure(layer, spectrum.eigenvalues, plan.Q, options)
    layer = judge_layer(layer, config.rules_for(plan.name), config)
    return dataclasses.replace(layer, seconds=time.perf_counter() - start)


def _measure(
    layer: LayerResult, eigenvalues: np.ndarray, q: float, options: AnalysisOptions
) -> LayerResult:
    fit = fit_power_law(eigenvalues)
    erg = erg_condition(eigenvalues)
    alpha = None if isinstance(fit, FitFailure) else fit.alpha
    values: dict[str, object] = dict(norm_metrics(eigenvalues, alpha))
    values.update(
        erg_num=erg.erg_num,
        erg_lambda_min=erg.erg_lambda_min,
        erg_tail_norm=erg.erg_tail_norm,
        erg_delta=erg_delta(fit, erg, eigenvalues),
        xmin_strategy="ks",
    )
    mp = marchenko_pastur_fit(eigenvalues, q)
    if mp is not None:
        values.update(dataclasses.asdict(mp))
    if isinstance(fit, FitFailure):
        return dataclasses.replace(layer, status="fit-failed", reason=fit.reason, **values)  # type: ignore[arg-type]
    values.update(
        alpha=fit.alpha,
        xmin=fit.xmin,
        xmax=fit.xmax,
        D=fit.D,
        sigma=fit.sigma,
        num_pl_spikes=fit.num_pl_spikes,
        xmin_strategy=fit.strategy,
    )
    if erg.erg_num is not None:
        values["erg_gap"] = erg.erg_num - fit.num_pl_spikes
    reason = erg.reason
    return dataclasses.replace(layer, status="ok", reason=reason, **values)  # type: ignore[arg-type]


def find_config(checkpoint: str | Path) -> Path | None:
    """Return ``setol.yaml`` beside (or, for a folder, inside) a checkpoint."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    candidate = folder / CONFIG_NAME
    return candidate if candidate.is_file() else None


class CheckpointAnalysis:
    """Lazy analysis of one checkpoint: header and plan first, spectra on demand.

    The plugin asks for layers one item at a time; the API and the command
    line ask for everything through ``result()``. Both paths run the same
    ``analyze_layer``, so a layer reads the same in every output.
    """

    def __init__(
        self,
        path: str | Path,
        config: Config,
        options: AnalysisOptions | None = None,
        on_layer: LayerCallback | None = None,
    ) -> None:
        self.path = str(path)
        self.config = config
        self.options = options or AnalysisOptions()
        self.on_layer = on_layer
        self._checkpoint: Checkpoint | None = None
        self._plan: Plan | None = None
        self._results: dict[str, LayerResult] = {}
        self._seconds = 0.0

    @property
    def plan(self) -> Plan:
        """Read the header and plan the layers; raise CheckpointError if unreadable."""
        if self._plan is None:
            self._checkpoint = open_checkpoint(self.path)
            self._plan = plan_layers(self._checkpoint, self.config)
        return self._plan

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.plan.layers]

    def layer(self, name: str) -> LayerResult:
        """Return the result of layer ``name``, computing it once."""
        if name not in self._results:
            plan = next(p for p in self.plan.layers if p.name == name)
            start = time.perf_counter()
            try:
                result = analyze_layer(plan, self.config, self.options)
            except CheckpointError as exc:
                result = _unreadable_layer(plan, exc)
            self._seconds += time.perf_counter() - start
            self._results[name] = result
            if self.on_layer is not None:
                self.on_layer(result)
        return self._results[name]

    def result(self) -> CheckpointResult:
        """Analyse every layer not yet done and return the checkpoint's result."""
        plan = self.plan
        layers = tuple(self.layer(p.name) for p in plan.layers)
        summary = summarize(
            layers, plan.float_parameters, self.options.device, self._seconds
        )
        verdicts = judge_model(self.path, layers, summary, self.config.model)
        return CheckpointResult(
            path=self.path,
            config=self.config.path,
            summary=summary,
            not_analysed=dict(plan.not_analysed),
            layers=layers,
            verdicts=verdicts,
        )


def _unreadable_layer(plan: LayerPlan, error: CheckpointError) -> LayerResult:
    """Report a tensor whose data could not be read as an ``error`` verdict."""
    from .results import Verdict

    return LayerResult(
        name=plan.name,
        kind=plan.kind,
        shape=plan.tensor.shape,
        status="invalid",
        reason=str(error),
        dtype=plan.tensor.dtype,
        verdicts=(Verdict("read", "error", "fail", message=str(error)),),
    )


def error_result(path: str | Path, error: Exception, config: Config | None) -> CheckpointResult:
    """Return the result of a checkpoint that could not be read."""
    return CheckpointResult(
        path=str(path),
        config=config.path if config else None,
        summary=None,
        not_analysed={},
        layers=(),
        error=str(error),
    )


def resolve_config(config: Config | str | Path | None, checkpoint: str | Path) -> Config:
    """Use ``config`` if given, else ``setol.yaml`` beside the checkpoint, else defaults."""
    if isinstance(config, Config):
        return config
    if config is not None:
        return load_config(config)
    found = find_config(checkpoint)
    return load_config(found) if found else Config()


def analyze(
    source: str | Path | Sequence[str | Path],
    config: Config | str | Path | None = None,
    device: str = "auto",
    *,
    xmin_strategy: str = "ks",
    scale: str = "raw",
    randomize: bool = False,
    seed: int = 0,
    alpha_farms: bool = False,
    on_layer: LayerCallback | None = None,
) -> Report:
    """Analyse one or more checkpoint paths and return the report.

    ``config`` is a ``Config``, a YAML path, or None to use ``setol.yaml``
    beside each checkpoint (or the built-in defaults). Raises ConfigError for
    an invalid configuration and CheckpointError for an unreadable checkpoint.
    """
    from .gpu import resolve_device

    paths = [source] if isinstance(source, (str, Path)) else list(source)
    options = AnalysisOptions(
        device=resolve_device(device),
        xmin_strategy=xmin_strategy,
        scale=scale,
        randomize=randomize,
        seed=seed,
        alpha_farms=alpha_farms,
    )
    results = []
    for path in paths:
        resolved = resolve_config(config, path)
        analysis = CheckpointAnalysis(path, resolved, options, on_layer)
        resolved.check_patterns(analysis.layer_names())
        results.append(analysis.result())
    settings = report_settings(device, options)
    return Report(settings=settings, checkpoints=tuple(results))


def report_settings(requested_device: str, options: AnalysisOptions) -> dict[str, object]:
    """Return the ``settings`` entry of the report document."""
    from . import __version__

    settings: dict[str, object] = {
        "version": __version__,
        "device_requested": requested_device,
        "dtype": "float64",
    }
    settings.update(options.to_dict())
    return settings
