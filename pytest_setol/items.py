"""pytest items of a linted checkpoint: one per weight matrix plus ``PATH::model``.

Items compute no spectra until they run. A layer item computes its own
layer; the model item computes every layer its process has not computed yet.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .analysis import CheckpointAnalysis
from .baseline import DRIFT_SUFFIX, apply_drift, apply_to_checkpoint
from .errors import CheckpointError
from .results import NUMERIC_KEYS, CheckpointResult, LayerResult, Verdict
from .warning_types import SetolFitWarning, SetolRuleWarning, SetolWarning

#: Name of the item that carries the model-level checks of a checkpoint.
MODEL_ITEM = "model"

#: Sort key of a checkpoint in the report: ``(0, "", i)`` for the i-th
#: ``--setol`` path, ``(1, spec node id, i)`` for the i-th entry of a spec file.
OrderKey = tuple[int, str, int]


class SetolCheckFailure(Exception):
    """A layer or model violated a fail-severity rule; the message names the rule."""


class CheckpointFile(pytest.File):
    """The collector of one ``--setol`` checkpoint's layer and model items.

    ``source`` is set by the session: the analysis, the error that made the
    checkpoint unreadable (or None), the item order key and the baseline.
    """

    source: tuple[
        CheckpointAnalysis, str | None, OrderKey, CheckpointResult | None
    ]

    def collect(self) -> list[pytest.Item]:
        analysis, load_error, order, baseline = self.source
        return checkpoint_items(self, analysis, load_error, order, baseline)


class _SetolItem(pytest.Item):
    analysis: CheckpointAnalysis
    load_error: str | None
    order: OrderKey

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str:
        if isinstance(excinfo.value, SetolCheckFailure):
            return str(excinfo.value)
        if isinstance(excinfo.value, SetolWarning):
            # ``-W error::pytest_setol.SetolWarning`` raised a warn verdict.
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # The domain heads failure sections, so it names the checkpoint too.
        return self.path, 0, f"setol {self.path.name}::{self.name}"


class LayerItem(_SetolItem):
    """One weight matrix: runs its rules and fails on a fail verdict."""

    #: Position of the layer in the checkpoint's plan, which orders the report.
    index: int
    #: The layer's entry in the baseline report; None without one.
    baseline: LayerResult | None
    setol_result: LayerResult | None = None

    def runtest(self) -> None:
        with blas_limit(self.config):
            result = self.analysis.layer(self.name)
        if self.baseline is not None:
            rules = self.analysis.config.rules_for(self.name)
            result = apply_drift(result, self.baseline, rules)
        self.setol_result = result
        self.user_properties.extend(layer_properties(result))
        _raise_verdicts(self.path, result.verdicts)


class ModelItem(_SetolItem):
    """Model-level checks over every layer; fails when the checkpoint cannot be read.

    It computes (or reads from the spectra cache) each layer its process has
    not computed yet, so on any xdist worker, and under ``-k`` or ``--lf``, it
    checks the whole model.
    """

    #: The checkpoint's entry in the baseline report; None without one.
    baseline: CheckpointResult | None
    setol_result: CheckpointResult | None = None

    def runtest(self) -> None:
        if self.load_error is not None:
            raise SetolCheckFailure(self.load_error)
        try:
            with blas_limit(self.config):
                result = self.analysis.result()
        except CheckpointError as exc:
            raise SetolCheckFailure(str(exc)) from None
        result = apply_to_checkpoint(result, self.baseline, self.analysis.config)
        self.setol_result = result
        summary = result.summary
        if summary is not None:
            self.user_properties.append(("coverage", summary.coverage))
            self.user_properties.append(("fail_fraction", summary.fail_fraction))
            if summary.mean_alpha is not None:
                self.user_properties.append(("mean_alpha", summary.mean_alpha))
            for status, count in summary.status_counts.items():
                self.user_properties.append((f"layers_{status}", count))
        _raise_verdicts(self.path, result.verdicts)


def checkpoint_items(
    parent: pytest.Collector,
    analysis: CheckpointAnalysis,
    load_error: str | None,
    order: OrderKey,
    baseline: CheckpointResult | None,
) -> list[pytest.Item]:
    """Return one item per planned layer, then the model item; read no spectra.

    ``baseline`` is the checkpoint's entry in the baseline report, or None.
    """
    before = {} if baseline is None else {b.name: b for b in baseline.layers}
    items: list[pytest.Item] = []
    layers = analysis.plan.layers if load_error is None else ()
    for index, layer in enumerate(layers):
        item = LayerItem.from_parent(parent, name=layer.name)
        item.analysis, item.load_error, item.order = analysis, None, order
        item.index = index
        item.baseline = before.get(layer.name)
        if layer.skip_reason is not None:
            reason = f"{layer.name}: {layer.skip_reason}"
            item.add_marker(pytest.mark.skip(reason=reason))
        items.append(item)
    model = ModelItem.from_parent(parent, name=MODEL_ITEM)
    model.analysis, model.load_error, model.order = analysis, load_error, order
    model.baseline = baseline
    items.append(model)
    return items


def layer_properties(layer: LayerResult) -> list[tuple[str, object]]:
    """Return a layer's JUnit XML properties: status, flags, then every metric set."""
    properties: list[tuple[str, object]] = [("status", layer.status)]
    if layer.flags:
        properties.append(("flags", ",".join(layer.flags)))
    if layer.reason:
        properties.append(("reason", layer.reason))
    for key in NUMERIC_KEYS:
        value = getattr(layer, key)
        if value is not None:
            properties.append((key, value))
    for verdict in layer.verdicts:
        if verdict.rule.endswith(DRIFT_SUFFIX) and verdict.observed is not None:
            properties.append((verdict.rule, verdict.observed))
    return properties


def _raise_verdicts(path: Path, verdicts: tuple[Verdict, ...]) -> None:
    for verdict in verdicts:
        if verdict.outcome == "warn":
            category = (
                SetolFitWarning if verdict.rule == "fit-failed" else SetolRuleWarning
            )
            warnings.warn_explicit(verdict.message, category, str(path), 0)
    failures = [v.message for v in verdicts if v.outcome in ("fail", "error")]
    if failures:
        raise SetolCheckFailure("\n".join(failures))


@contextlib.contextmanager
def blas_limit(config: pytest.Config) -> Iterator[None]:
    """Share the CPU cores between xdist workers instead of oversubscribing them.

    Each worker's OpenBLAS otherwise starts one thread per core, and threads
    that outnumber the cores spin against each other: on a shared 2-core
    machine, ``-n 2`` took 45 s for MiniLM's layers against 1.7 s with one
    thread per worker. Limiting needs threadpoolctl; without it this does
    nothing.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    workers = max(1, int(workerinput.get("workercount", 1)))
    threads = max(1, _cpu_count() // workers)
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
