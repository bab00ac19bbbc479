"""The pytest side of a ``--setol`` run: items, outcomes, reports.

Loaded only when a run lints checkpoints. Layers are computed when their
items run, never at collection, so ``--collect-only`` reads headers only.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from .analysis import CheckpointAnalysis, find_config, report_settings
from .config import Config, load_config
from .errors import CheckpointError, ConfigError, SetolError
from .gpu import resolve_device
from .options import AnalysisOptions
from .report import render_terminal
from .results import (
    CheckpointResult,
    LayerResult,
    Report,
    Verdict,
    checkpoint_from_dict,
    checkpoint_to_dict,
    layer_from_dict,
    layer_to_dict,
)
from .warning_types import SetolFitWarning, SetolRuleWarning

#: Name of the item that carries the model-level checks of a checkpoint.
MODEL_ITEM = "model"
#: Width of the report when output is not a terminal.
PLAIN_WIDTH = 132


class SetolCheckFailure(Exception):
    """A layer or model violated a fail-severity rule; the message says how."""


class CheckpointFile(pytest.File):
    """The collector that parents one checkpoint's items; it collects nothing itself."""

    def collect(self) -> list[pytest.Item]:
        return []


class _SetolItem(pytest.Item):
    analysis: CheckpointAnalysis
    load_error: str | None

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str:
        if isinstance(excinfo.value, SetolCheckFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, f"setol {self.name}"


class LayerItem(_SetolItem):
    """One weight matrix: runs its rules and fails on a fail verdict."""

    setol_result: LayerResult | None = None

    def runtest(self) -> None:
        result = self.analysis.layer(self.name)
        self.setol_result = result
        for key in ("status", "alpha", "erg_delta", "D", "xmin", "num_pl_spikes"):
            value = getattr(result, key)
            if value is not None:
                self.user_properties.append((key, value))
        _raise_verdicts(self.path, result.verdicts, result.flags)


class ModelItem(_SetolItem):
    """Model-level checks; fails when the checkpoint cannot be read."""

    setol_result: CheckpointResult | None = None

    def runtest(self) -> None:
        if self.load_error is not None:
            raise SetolCheckFailure(self.load_error)
        try:
            result = self.analysis.result()
        except CheckpointError as exc:
            raise SetolCheckFailure(str(exc)) from None
        self.setol_result = result
        summary = result.summary
        if summary is not None:
            self.user_properties.append(("coverage", summary.coverage))
            if summary.mean_alpha is not None:
                self.user_properties.append(("mean_alpha", summary.mean_alpha))
        _raise_verdicts(self.path, result.verdicts, ())


def _raise_verdicts(path: Path, verdicts: tuple[Verdict, ...], flags: tuple[str, ...]) -> None:
    for verdict in verdicts:
        if verdict.outcome == "warn":
            category = SetolFitWarning if verdict.rule == "fit-failed" else SetolRuleWarning
            warnings.warn_explicit(verdict.message, category, str(path), 0)
    failures = [v.message for v in verdicts if v.outcome in ("fail", "error")]
    if failures:
        raise SetolCheckFailure("\n".join(failures))


class SetolSession:
    """Plugin object registered for a run that lints checkpoints."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.paths: list[str] = list(config.getoption("setol"))
        requested = config.getoption("setol_device") or config.getini("setol_device")
        self.requested_device = str(requested or "auto")
        try:
            self.options = AnalysisOptions(device=resolve_device(self.requested_device))
        except SetolError as exc:
            raise pytest.UsageError(f"--setol-device: {exc}") from None
        config_path = config.getoption("setol_config") or config.getini("setol_config")
        self.shared_config: Config | None = None
        if config_path:
            self.shared_config = _load(config_path)
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.layer_reports: dict[str, dict[str, dict[str, Any]]] = {}

    # Collection -------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        names_by_config: dict[int, tuple[Config, set[str]]] = {}
        for path in self.paths:
            analysis = self._analysis(path)
            node = CheckpointFile.from_parent(session, path=Path(path).absolute())
            load_error = None
            names: list[str] = []
            try:
                names = analysis.layer_names()
            except CheckpointError as exc:
                load_error = str(exc)
            entry = names_by_config.setdefault(id(analysis.config), (analysis.config, set()))
            if load_error is None:
                entry[1].update(names)
            for layer in analysis.plan.layers if load_error is None else ():
                item = _make_item(LayerItem, node, layer.name, analysis, None)
                if layer.skip_reason is not None:
                    reason = f"{layer.name}: {layer.skip_reason}"
                    item.add_marker(pytest.mark.skip(reason=reason))
                items.append(item)
            items.append(_make_item(ModelItem, node, MODEL_ITEM, analysis, load_error))
        for config_obj, names_seen in names_by_config.values():
            if names_seen:
                try:
                    config_obj.check_patterns(names_seen)
                except ConfigError as exc:
                    raise pytest.UsageError(str(exc)) from None

    def _analysis(self, path: str) -> CheckpointAnalysis:
        config = self.shared_config
        if config is None:
            found = find_config(path)
            config = _load(found) if found else Config()
        return CheckpointAnalysis(path, config, self.options)

    # Outcomes ---------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when == "setup" and isinstance(item, LayerItem) and report.skipped:
            # A layer skipped at collection still belongs in the report.
            item.setol_result = item.analysis.layer(item.name)
        elif call.when != "call":
            return report
        if isinstance(item, LayerItem) and item.setol_result is not None:
            report.setol_layer = layer_to_dict(item.setol_result)  # type: ignore[attr-defined]
            report.setol_path = item.analysis.path  # type: ignore[attr-defined]
        elif isinstance(item, ModelItem):
            result = item.setol_result
            if result is None:
                result = CheckpointResult(
                    path=item.analysis.path,
                    summary=None,
                    not_analysed={},
                    layers=(),
                    error=item.load_error or str(call.excinfo.value if call.excinfo else ""),
                )
            report.setol_checkpoint = checkpoint_to_dict(result)  # type: ignore[attr-defined]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        layer = getattr(report, "setol_layer", None)
        if layer is not None:
            by_name = self.layer_reports.setdefault(report.setol_path, {})  # type: ignore[attr-defined]
            by_name[layer["name"]] = layer
        checkpoint = getattr(report, "setol_checkpoint", None)
        if checkpoint is not None:
            self.checkpoints[checkpoint["path"]] = checkpoint

    # Reporting --------------------------------------------------------------

    def report(self) -> Report:
        """Assemble the document from the reports every worker sent back."""
        checkpoints = []
        for path in self.paths:
            data = self.checkpoints.get(path)
            if data is not None and data.get("error") is None:
                checkpoints.append(checkpoint_from_dict(data))
            elif data is not None:
                checkpoints.append(checkpoint_from_dict(data))
            elif path in self.layer_reports:
                layers = tuple(
                    layer_from_dict(d) for d in self.layer_reports[path].values()
                )
                checkpoints.append(
                    CheckpointResult(path=path, summary=None, not_analysed={}, layers=layers)
                )
        settings = report_settings(self.requested_device, self.options)
        return Report(settings=settings, checkpoints=tuple(checkpoints))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput"):
            return
        report = self.report()
        if not report.checkpoints:
            return
        terminalreporter.write_sep("=", "setol report")
        width = terminalreporter._tw.fullwidth
        if not terminalreporter.hasmarkup:
            # CI logs do not wrap, and folded layer names are hard to search.
            width = max(width, PLAIN_WIDTH)
        text = render_terminal(report, width=width, color=terminalreporter.hasmarkup)
        terminalreporter.write(text)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return
        target = self.config.getoption("setol_json")
        if target:
            document = self.report().to_dict()
            Path(target).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _make_item(
    cls: type[_SetolItem],
    parent: CheckpointFile,
    name: str,
    analysis: CheckpointAnalysis,
    load_error: str | None,
) -> _SetolItem:
    item = cls.from_parent(parent, name=name)
    item.analysis = analysis
    item.load_error = load_error
    return item


def _load(path: str | Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
