"""The analysis pipeline behind every front end: checkpoint in, results out."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, load_config
from .errors import CheckpointError, SetolError
from .farms import alpha_farms
from .metrics import erg_condition, fit_metrics, marchenko_pastur_fit, norm_metrics
from .options import AnalysisOptions
from .planner import LayerPlan, Plan, plan_layers
from .powerlaw import FitFailure, fit_power_law
from .randomize import layer_matrices, randomize_layer
from .reader import Checkpoint, open_checkpoint
from .results import CheckpointResult, LayerResult, Report
from .spectra import (
    Spectrum,
    cpu_workers,
    large_first,
    layer_spectra,
    layer_spectrum,
    one_blas_thread,
)
from .verdicts import judge_layer, judge_model, summarize

#: File looked up beside a checkpoint when no configuration is given.
CONFIG_NAME = "setol.yaml"

LayerCallback = Callable[[LayerResult], None]


def analyze_layer(
    plan: LayerPlan,
    config: Config,
    options: AnalysisOptions | None = None,
    spectrum: Spectrum | None = None,
) -> LayerResult:
    """Compute the spectrum, fit and metrics of one planned layer, then judge it.

    ``spectrum`` is the layer's spectrum when the caller already has it (from
    the cache or a batch); its ``seconds`` count towards the layer's time.
    """
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
        aliases=plan.aliases,
        flags=_plan_flags(plan),
    )
    if plan.skip_reason is not None:
        layer = dataclasses.replace(layer, status="skipped", reason=plan.skip_reason)
        return judge_layer(layer, (), config)
    if spectrum is None:
        spectrum = layer_spectrum(plan, options.device)
    else:
        start -= spectrum.seconds
    if spectrum.eigenvalues is None:
        layer = dataclasses.replace(
            layer,
            status="invalid",
            reason=f"{spectrum.nonfinite} NaN or Inf entries",
        )
    else:
        layer = _measure(layer, spectrum.eigenvalues, plan, options)
    low_rank = plan.tensor.low_rank
    if layer.status == "fit-failed" and low_rank is not None:
        layer = dataclasses.replace(
            layer, reason=f"low-rank update of rank {low_rank.rank}: {layer.reason}"
        )
    rules = config.rules_for(plan.name)
    # A rule with its own xmin strategy is checked against a refit with that
    # strategy; the reported values stay those of the run's strategy.
    refits: dict[str, LayerResult] = {}
    if spectrum.eigenvalues is not None:
        strategies = {r.xmin_strategy for r in rules if r.xmin_strategy is not None}
        for strategy in sorted(strategies - {options.xmin_strategy}):
            refit_options = dataclasses.replace(
                options, xmin_strategy=strategy, randomize=False, alpha_farms=False
            )
            refit = _measure(layer, spectrum.eigenvalues, plan, refit_options)
            refits[strategy] = refit
    layer = judge_layer(layer, rules, config, refits)
    return dataclasses.replace(layer, seconds=time.perf_counter() - start)


def _plan_flags(plan: LayerPlan) -> tuple[str, ...]:
    flags = ("alias",) if plan.aliases else ()
    return flags + (("quantized",) if plan.tensor.quantization else ())


def _measure(
    layer: LayerResult,
    eigenvalues: np.ndarray,
    plan: LayerPlan,
    options: AnalysisOptions,
) -> LayerResult:
    """Fill in the fit and every metric of ``options`` from the layer's eigenvalues.

    With ``scale="1/N"`` the eigenvalues are divided by ``N`` after the fit's
    floor has been applied, so only scale-dependent values change.
    """
    factor = 1.0 / plan.N if options.scale == "1/N" else 1.0
    scaled = eigenvalues * factor
    fit = fit_power_law(eigenvalues, options.xmin_strategy, factor)
    erg = erg_condition(scaled)
    values: dict[str, object] = dict(norm_metrics(scaled, None))
    values.update(
        erg_num=erg.erg_num,
        erg_lambda_min=erg.erg_lambda_min,
        erg_tail_norm=erg.erg_tail_norm,
    )
    values.update(fit_metrics(scaled, fit, erg))
    values["xmin_strategy"] = options.xmin_strategy
    mp = marchenko_pastur_fit(scaled, plan.Q, plan.M)
    if mp is not None:
        values.update(dataclasses.asdict(mp))
    reasons = [erg.reason]
    if options.randomize or options.alpha_farms:
        matrices = layer_matrices(plan)
        if options.randomize:
            randomized = randomize_layer(plan, matrices, scaled, options.seed, factor)
            values.update(
                rand_num_spikes=randomized.rand_num_spikes,
                rand_traps=randomized.rand_traps,
                rand_lambda_max=randomized.rand_lambda_max,
                rand_jsd=randomized.rand_jsd,
            )
            reasons.append(randomized.reason)
        if options.alpha_farms:
            farms = alpha_farms([m * plan.scale for m in matrices])
            values["alpha_farms"] = farms.alpha_farms
            reasons.append(farms.reason)
    if isinstance(fit, FitFailure):
        reasons.insert(0, fit.reason)
    reason = "; ".join(r for r in reasons if r) or None
    status = "fit-failed" if isinstance(fit, FitFailure) else "ok"
    return dataclasses.replace(layer, status=status, reason=reason, **values)  # type: ignore[arg-type]


def find_config(checkpoint: str | Path) -> Path | None:
    """Return ``setol.yaml`` beside (or, for a folder, inside) a checkpoint."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    candidate = folder / CONFIG_NAME
    return candidate if candidate.is_file() else None


class CheckpointAnalysis:
    """Lazy analysis of one checkpoint: header and plan first, spectra on demand.

    The plugin requests layers one item at a time, and the API and the
    command line request everything through ``result()``. Both paths run
    the same ``analyze_layer``, so a layer reads the same in every output.
    """

    def __init__(
        self,
        path: str | Path,
        config: Config,
        options: AnalysisOptions | None = None,
        on_layer: LayerCallback | None = None,
        *,
        checkpoint: Checkpoint | None = None,
        base: str | Path | None = None,
    ) -> None:
        """Analyse the checkpoint at ``path``, or ``checkpoint`` when one is given.

        ``checkpoint`` is a ready checkpoint (in-memory weights); ``path`` then
        only names it. ``base`` is the checkpoint a fine-tuned one started from:
        each matching matrix is also reported as ``name[delta]``.
        """
        self.path = str(path)
        self.config = config
        self.options = options or AnalysisOptions()
        self.on_layer = on_layer
        self.base = None if base is None else str(base)
        self._checkpoint: Checkpoint | None = checkpoint
        self._plan: Plan | None = None
        self._results: dict[str, LayerResult] = {}
        self._spectra: dict[str, Spectrum | Future[list[Spectrum]]] = {}
        self._seconds = 0.0

    @property
    def plan(self) -> Plan:
        """Read the header and plan the layers; raise CheckpointError if unreadable."""
        if self._plan is None:
            if self._checkpoint is None:
                self._checkpoint = open_checkpoint(self.path)
            if self.base is not None:
                from .finetune import with_base

                base = open_checkpoint(self.base)
                self._checkpoint = with_base(self._checkpoint, base)
                self.base = None
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
                with one_blas_thread():
                    ready = self._spectra.pop(name, None)
                    if isinstance(ready, Future):
                        spectrum: Spectrum | None = ready.result()[0]
                    else:
                        spectrum = ready
                    if spectrum is None and plan.skip_reason is None:
                        spectrum = self._compute_spectra([plan])[0]
                    result = analyze_layer(plan, self.config, self.options, spectrum)
            except CheckpointError as exc:
                result = _unreadable_layer(plan, exc)
            self._seconds += time.perf_counter() - start
            self._results[name] = result
            if self.on_layer is not None:
                self.on_layer(result)
        return self._results[name]

    def record(self, result: LayerResult) -> None:
        """Keep a layer result computed elsewhere, such as on a Dask worker."""
        if result.name in self._results:
            return
        self._seconds += result.seconds or 0.0
        self._results[result.name] = result
        if self.on_layer is not None:
            self.on_layer(result)

    def _compute_spectra(self, plans: Sequence[LayerPlan]) -> list[Spectrum]:
        """Return the spectra of ``plans``, through the spectra cache if one is set."""
        if self.options.cache_dir is None:
            return layer_spectra(plans, self.options.device)
        from .cache import SpectrumCache

        assert self._checkpoint is not None  # planned, so opened
        cache = SpectrumCache(self.options.cache_dir)
        return cache.spectra(self._checkpoint, plans, self.options.device)

    def _prefetch_spectra(self) -> None:
        """Compute every pending spectrum at once on a GPU, which batches equal shapes.

        The CPU gains nothing from batches across layers, so there spectra are
        computed as their layers are analysed and progress stays per layer.
        """
        if not self.options.device.startswith("cuda"):
            return
        pending = [
            plan
            for plan in self.plan.layers
            if plan.name not in self._results and plan.skip_reason is None
        ]
        start = time.perf_counter()
        try:
            spectra = self._compute_spectra(pending)
        except CheckpointError:
            return  # each layer then reports its own read error
        names = [plan.name for plan in pending]
        self._spectra.update(zip(names, spectra, strict=True))
        self._seconds += time.perf_counter() - start

    @contextlib.contextmanager
    def _spectra_pool(self) -> Iterator[None]:
        """Compute pending CPU spectra on threads while layers are fitted in order.

        numpy releases the GIL inside BLAS and LAPACK, and each thread runs
        one BLAS thread, so layers overlap without the fine-grained
        synchronisation that slows a threaded BLAS on a loaded machine.
        """
        workers = cpu_workers()
        pending = [
            plan
            for plan in self.plan.layers
            if plan.skip_reason is None
            and plan.name not in self._results
            and plan.name not in self._spectra
        ]
        if self.options.device.startswith("cuda") or workers < 2 or len(pending) < 2:
            yield
            return
        pool = ThreadPoolExecutor(workers, thread_name_prefix="setol-spectra")
        try:
            with one_blas_thread():
                for plan in large_first(pending):
                    future = pool.submit(self._compute_spectra, [plan])
                    self._spectra[plan.name] = future
                yield
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def result(self) -> CheckpointResult:
        """Analyse every layer not yet done and return the checkpoint's result."""
        plan = self.plan
        self._prefetch_spectra()
        with self._spectra_pool():
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


def error_result(
    path: str | Path, error: Exception, config: Config | None
) -> CheckpointResult:
    """Return the result of a checkpoint that could not be read."""
    return CheckpointResult(
        path=str(path),
        config=config.path if config else None,
        summary=None,
        not_analysed={},
        layers=(),
        error=str(error),
    )


def resolve_config(
    config: Config | str | Path | None, checkpoint: str | Path
) -> Config:
    """Return ``config``, else ``setol.yaml`` beside the checkpoint, else defaults."""
    if isinstance(config, Config):
        return config
    if config is not None:
        return load_config(config)
    found = find_config(checkpoint)
    return load_config(found) if found else Config()


def analyze(
    source: Any,
    config: Config | str | Path | None = None,
    device: str = "auto",
    *,
    base: str | Path | None = None,
    xmin_strategy: str = "ks",
    scale: str = "raw",
    randomize: bool = False,
    seed: int = 0,
    alpha_farms: bool = False,
    on_layer: LayerCallback | None = None,
    cache_dir: str | Path | None = None,
    scheduler: str | None = None,
) -> Report:
    """Analyse one or more checkpoints and return the report.

    A checkpoint is a path (file or folder), an ``nn.Module``, or a state dict
    of torch tensors or numpy arrays. ``config`` is a ``Config``, a YAML path,
    or None to use ``setol.yaml`` beside each checkpoint (or the built-in
    defaults). ``base`` is the checkpoint the others were fine-tuned from.
    ``cache_dir`` keeps spectra between runs (default: no cache).
    ``scheduler`` is the address of a Dask scheduler whose workers compute
    the layers; they must see the checkpoint files at the same paths.
    Raises ConfigError for an invalid configuration and CheckpointError for an
    unreadable checkpoint.
    """
    from .distributed import analyze_on_cluster, cluster_client
    from .gpu import resolve_device
    from .reader_memory import checkpoint_from_memory, is_in_memory

    single = isinstance(source, (str, Path)) or is_in_memory(source)
    sources: list[Any] = [source] if single else list(source)
    options = AnalysisOptions(
        device=resolve_device(device),
        xmin_strategy=xmin_strategy,
        scale=scale,
        randomize=randomize,
        seed=seed,
        alpha_farms=alpha_farms,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    results = []
    with cluster_client(scheduler) as client:
        for item in sources:
            checkpoint = checkpoint_from_memory(item) if is_in_memory(item) else None
            path = checkpoint.path if checkpoint is not None else item
            if checkpoint is None or config is not None:
                resolved = resolve_config(config, path)
            else:
                resolved = Config()  # in-memory weights have no folder to search
            analysis = CheckpointAnalysis(
                path, resolved, options, on_layer, checkpoint=checkpoint, base=base
            )
            resolved.check_patterns(analysis.layer_names())
            if client is not None:
                if checkpoint is not None:
                    raise SetolError(
                        f"{path}: in-memory weights cannot be sent to Dask workers; "
                        "save them to a file on shared storage, or omit scheduler"
                    )
                base_path = None if base is None else str(base)
                analyze_on_cluster(analysis, client, base_path)
            results.append(analysis.result())
    settings = report_settings(device, options)
    return Report(settings=settings, checkpoints=tuple(results))


def report_settings(
    requested_device: str, options: AnalysisOptions
) -> dict[str, object]:
    """Return the ``settings`` entry of the report document."""
    from . import __version__

    settings: dict[str, object] = {
        "version": __version__,
        "device_requested": requested_device,
        "dtype": "float64",
    }
    settings.update(options.to_dict())
    return settings
