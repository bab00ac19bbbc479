"""The session of a run that lints checkpoints: collection, results, reports.

Loaded only when a run lints checkpoints: ``--setol`` is given, a spec file
is collected, or an xdist controller receives a layer report. Layers are
computed when their items run, never at collection, so ``--collect-only``
reads headers only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from .analysis import CheckpointAnalysis, find_config, report_settings
from .baseline import (
    Baseline,
    BaselineError,
    compare,
    drift_to_dict,
    load_baseline,
    render_drift,
    updated_document,
)
from .config import Config, load_config
from .errors import CheckpointError, ConfigError, SetolError
from .gpu import resolve_device
from .items import (
    MODEL_ITEM,
    CheckpointFile,
    LayerItem,
    ModelItem,
    OrderKey,
    SetolCheckFailure,
    checkpoint_items,
    layer_properties,
)
from .options import AnalysisOptions
from .plugin import SESSION_PLUGIN, option, path_option
from .report import DEFAULT_COLUMNS, render_terminal
from .results import (
    CheckpointResult,
    LayerResult,
    Report,
    checkpoint_from_dict,
    checkpoint_to_dict,
    layer_from_dict,
    layer_to_dict,
)

__all__ = [
    "MODEL_ITEM",
    "CheckpointFile",
    "LayerItem",
    "ModelItem",
    "SetolCheckFailure",
    "SetolSession",
    "SpecFile",
    "ensure_session",
]

#: Width of the report when output is not a terminal.
PLAIN_WIDTH = 132


class SpecFile(pytest.File):
    """A ``setol.yaml`` or ``*.setol.yaml`` file that names its checkpoints.

    The file is also the thresholds of those checkpoints; paths in its
    ``checkpoints`` list are relative to the file.
    """

    def collect(self) -> list[pytest.Collector]:
        session = ensure_session(self.config)
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            raise self.CollectError(str(exc)) from None
        nodes: list[pytest.Collector] = []
        names: set[str] = set()
        for index, entry in enumerate(config.checkpoints):
            target = Path(os.path.normpath(self.path.parent / entry))
            analysis = session.analysis(_display_path(self.config, target), config)
            load_error = None
            try:
                names.update(analysis.layer_names())
            except CheckpointError as exc:
                load_error = f"{self.nodeid}: checkpoints[{index}] {entry!r}: {exc}"
            node = SpecCheckpoint.from_parent(self, name=entry, path=target)
            node.source = (analysis, load_error, (1, self.nodeid, index))
            nodes.append(node)
        if names:
            try:
                config.check_patterns(names)
            except ConfigError as exc:
                raise self.CollectError(str(exc)) from None
        return nodes


class SpecCheckpoint(pytest.Collector):
    """One checkpoint named by a spec file; collects its layer and model items."""

    source: tuple[CheckpointAnalysis, str | None, OrderKey]

    def collect(self) -> list[pytest.Item]:
        analysis, load_error, order = self.source
        baseline = ensure_session(self.config).baseline_entry(analysis.path)
        return checkpoint_items(self, analysis, load_error, order, baseline)


def _display_path(config: pytest.Config, path: Path) -> str:
    """Return ``path`` relative to the invocation folder when it lies inside it."""
    try:
        return str(path.relative_to(config.invocation_params.dir))
    except ValueError:
        return str(path)


def ensure_session(config: pytest.Config) -> SetolSession:
    """Return the run's session object, registering it on first use."""
    session = config.pluginmanager.get_plugin(SESSION_PLUGIN)
    if session is None:
        session = SetolSession(config)
        config.pluginmanager.register(session, SESSION_PLUGIN)
    assert isinstance(session, SetolSession)
    return session


class SetolSession:
    """Plugin object of a run that lints checkpoints.

    Workers and the controller of an xdist run each have one. Workers run
    items; the controller (or a run without xdist) assembles the report from
    the ``setol_*`` attributes of the test reports, which xdist serialises.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.paths: list[str] = list(config.getoption("setol"))
        self._names_by_config: dict[int, tuple[Config, set[str]]] = {}
        self.requested_device = str(option(config, "setol_device") or "auto")
        try:
            device = resolve_device(self.requested_device)
        except SetolError as exc:
            raise pytest.UsageError(f"--setol-device: {exc}") from None
        cache_dir = spectra_cache_dir(config)
        try:
            self.options = AnalysisOptions(
                device=device,
                xmin_strategy=config.getoption("setol_xmin_strategy"),
                scale=config.getoption("setol_scale"),
                randomize=config.getoption("setol_randomize"),
                seed=config.getoption("setol_seed"),
                alpha_farms=config.getoption("setol_alpha_farms"),
                cache_dir=cache_dir,
            )
        except ValueError as exc:
            # The choices of the other options are checked by the parser.
            raise pytest.UsageError(f"--setol-seed: {exc}") from None
        self.columns = _table_columns(config.getoption("setol_columns"))
        config_path = path_option(config, "setol_config")
        self.shared_config: Config | None = None
        if config_path is not None:
            self.shared_config = _load(config_path)
        self.baseline_path = path_option(config, "setol_baseline")
        self.update_baseline = bool(config.getoption("setol_update_baseline"))
        self.baseline: Baseline | None = None
        if self.baseline_path is not None and not self.update_baseline:
            try:
                self.baseline = load_baseline(self.baseline_path)
            except BaselineError as exc:
                raise pytest.UsageError(str(exc)) from None
        self.report_targets = _report_targets(config)
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.layer_reports: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        self.orders: dict[str, OrderKey] = {}

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def pytest_report_header(self) -> list[str]:
        cache = self.options.cache_dir or "off"
        return [f"setol: device {self.options.device}, float64; spectra cache {cache}"]

    def analysis(self, path: str, config: Config | None = None) -> CheckpointAnalysis:
        """Return a lazy analysis of ``path`` under ``config`` or the run's rules."""
        if config is None:
            config = self.shared_config
        if config is None:
            found = find_config(path)
            config = _load(found) if found else Config()
        base = self.config.getoption("setol_base")
        return CheckpointAnalysis(path, config, self.options, base=base)

    def baseline_entry(self, path: str) -> CheckpointResult | None:
        """Return the baseline report's entry for checkpoint ``path``, if any."""
        return None if self.baseline is None else self.baseline.match(path)

    # Collection -------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        """Add one collector per ``--setol`` checkpoint to the session's own.

        Going through collection, rather than adding items afterwards, lets
        pytest count, deselect and list the layer items like any other test.
        """
        report = yield
        if isinstance(collector, pytest.Session) and report.passed and self.paths:
            report.result.extend(self._checkpoint_nodes(collector))
        return report

    def _checkpoint_nodes(self, session: pytest.Session) -> list[CheckpointFile]:
        nodes = []
        for index, path in enumerate(self.paths):
            analysis = self.analysis(path)
            load_error = None
            try:
                names = analysis.layer_names()
            except CheckpointError as exc:
                load_error = str(exc)
                names = []
            entry = self._names_by_config.setdefault(
                id(analysis.config), (analysis.config, set())
            )
            entry[1].update(names)
            baseline = None if load_error else self.baseline_entry(path)
            absolute = Path(path).absolute()
            try:
                absolute.relative_to(session.config.rootpath)
                nodeid = None
            except ValueError:
                # Outside the root folder pytest would give no path part at
                # all; the path as the user wrote it keeps node ids readable.
                nodeid = path
            node = CheckpointFile.from_parent(session, path=absolute, nodeid=nodeid)
            node.source = (analysis, load_error, (0, "", index), baseline)
            nodes.append(node)
        return nodes

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self) -> None:
        """Reject a ``match`` glob that matches no layer of any checkpoint."""
        for config_obj, names_seen in self._names_by_config.values():
            if names_seen:
                try:
                    config_obj.check_patterns(names_seen)
                except ConfigError as exc:
                    raise pytest.UsageError(str(exc)) from None

    # Outcomes ---------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if not isinstance(item, (LayerItem, ModelItem)):
            return report
        if call.when == "setup" and isinstance(item, LayerItem) and report.skipped:
            # A layer skipped at collection still belongs in the report.
            item.setol_result = item.analysis.layer(item.name)
            item.user_properties.extend(layer_properties(item.setol_result))
        elif call.when != "call":
            return report
        report.setol_path = item.analysis.path  # type: ignore[attr-defined]
        report.setol_order = list(item.order)  # type: ignore[attr-defined]
        if isinstance(item, LayerItem) and item.setol_result is not None:
            report.setol_layer = layer_to_dict(item.setol_result)  # type: ignore[attr-defined]
            report.setol_index = item.index  # type: ignore[attr-defined]
        elif isinstance(item, ModelItem):
            result = item.setol_result
            if result is None:
                error = item.load_error or str(
                    call.excinfo.value if call.excinfo else ""
                )
                result = CheckpointResult(
                    path=item.analysis.path,
                    summary=None,
                    not_analysed={},
                    layers=(),
                    error=error,
                )
            report.setol_checkpoint = checkpoint_to_dict(result)  # type: ignore[attr-defined]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.record(report)

    def record(self, report: pytest.TestReport) -> None:
        """Store the layer or checkpoint result a report carries; idempotent."""
        path = getattr(report, "setol_path", None)
        if path is None:
            return
        order = report.setol_order  # type: ignore[attr-defined]
        self.orders.setdefault(path, (int(order[0]), str(order[1]), int(order[2])))
        layer = getattr(report, "setol_layer", None)
        if layer is not None:
            by_name = self.layer_reports.setdefault(path, {})
            by_name[layer["name"]] = (report.setol_index, layer)  # type: ignore[attr-defined]
        checkpoint = getattr(report, "setol_checkpoint", None)
        if checkpoint is not None:
            self.checkpoints[path] = checkpoint

    # Reporting --------------------------------------------------------------

    def report(self) -> Report:
        """Assemble the document from the reports every worker sent back.

        A checkpoint whose model item ran is taken whole from that item; one
        whose model item was deselected is built from the layer reports, in
        plan order, without a summary.
        """
        checkpoints = []
        for path in sorted(self.orders, key=self.orders.__getitem__):
            data = self.checkpoints.get(path)
            if data is not None:
                checkpoints.append(checkpoint_from_dict(data))
                continue
            entries = sorted(self.layer_reports.get(path, {}).values(), key=_index)
            layers = tuple(layer_from_dict(layer) for _, layer in entries)
            checkpoints.append(
                CheckpointResult(
                    path=path, summary=None, not_analysed={}, layers=layers
                )
            )
        settings = report_settings(self.requested_device, self.options)
        return Report(settings=settings, checkpoints=tuple(checkpoints))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not self.orders:
            return
        report = self.report()
        terminalreporter.write_sep("=", "setol report")
        width = terminalreporter._tw.fullwidth
        if not terminalreporter.hasmarkup:
            # CI logs do not wrap, and folded layer names are hard to search.
            width = max(width, PLAIN_WIDTH)
        color = terminalreporter.hasmarkup
        terminalreporter.write(
            render_terminal(report, width=width, color=color, columns=self.columns)
        )
        if self.baseline is not None:
            terminalreporter.write_sep("=", "setol drift")
            drifts = compare(report, self.baseline)
            terminalreporter.write(render_drift(drifts, self.baseline, width, color))
        elif self.update_baseline and self.baseline_path is not None:
            terminalreporter.write_line(
                f"setol baseline written to {self.baseline_path}"
            )

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker or not self.orders:
            return
        report = self.report()
        targets = list(self.report_targets)
        target = path_option(self.config, "setol_json")
        if target is not None:
            targets.insert(0, ("json", target))
        for fmt, path in targets:
            if fmt != "json":
                _write_formatted(report, fmt, path, self.options.cache_dir)
                continue
            document = report.to_dict()
            if self.baseline is not None:
                drifts = compare(report, self.baseline)
                document["baseline"] = drift_to_dict(self.baseline, drifts)
            _write_json(path, document)
        if self.update_baseline and self.baseline_path is not None:
            previous = None
            if self.baseline_path.is_file():
                with contextlib.suppress(BaselineError):
                    previous = load_baseline(self.baseline_path)
            _write_json(self.baseline_path, updated_document(report, previous))


def _report_targets(config: pytest.Config) -> list[tuple[str, Path]]:
    """Parse the ``--setol-report FORMAT:FILE`` values; reject a bad one at start."""
    from .formats import parse_report_target

    targets = []
    for value in config.getoption("setol_report") or ():
        try:
            targets.append(parse_report_target(value))
        except ValueError as exc:
            raise pytest.UsageError(f"--setol-report: {exc}") from None
    return targets


def _write_formatted(
    report: Report, fmt: str, path: Path, cache_dir: str | None
) -> None:
    """Write a table, Markdown or HTML report; HTML embeds figures when it can."""
    from .formats import write_report
    from .plots import plotting_available, render_figures

    figures = None
    if fmt == "html" and plotting_available():
        figures = render_figures(report, cache_dir=cache_dir)
    write_report(report, fmt, path, figures=figures)


def _index(entry: tuple[int, Any]) -> int:
    return entry[0]


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _table_columns(text: str | None) -> tuple[str, ...]:
    """Parse ``--setol-columns``; raise UsageError naming an unknown key."""
    if text is None:
        return DEFAULT_COLUMNS
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    known = {f.name for f in dataclasses.fields(LayerResult)} - {"name", "status"}
    for column in columns:
        if column not in known:
            raise pytest.UsageError(
                f"--setol-columns: unknown layer key {column!r}; use keys of the "
                "JSON layer entries other than name and status, such as alpha, D, "
                "mp_softrank, rand_jsd"
            )
    return columns


def _load(path: str | Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def spectra_cache_dir(config: pytest.Config) -> str | None:
    """Return the run's spectra cache directory, or None to compute every spectrum.

    ``--setol-cache-dir`` wins; otherwise the cache lives in pytest's cache
    directory, and there is none when the cacheprovider plugin is disabled.
    """
    if config.getoption("setol_no_cache"):
        return None
    explicit = config.getoption("setol_cache_dir")
    if explicit:
        return str(Path(explicit).absolute())
    cache = getattr(config, "cache", None)
    if cache is None:
        return None
    return str(cache.mkdir("setol"))
