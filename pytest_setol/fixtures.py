"""The ``setol`` fixture and the ``@pytest.mark.setol`` marker for users' own tests.

The plugin registers this module in every pytest run, so it imports nothing
heavy at module level; the analysis loads on the first ``setol.analyze`` call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .config import Config
    from .results import Report

MARKER_HELP = (
    "setol(**rules): thresholds for every layer a test analyses with the setol "
    "fixture, as in setol.yaml's rules (e.g. alpha={'max': 5}, "
    "model={'mean_alpha': {'max': 4}}); a fail verdict fails the test"
)
#: Label of marker rules in verdict messages and errors.
MARKER_ORIGIN = "@pytest.mark.setol"
_HASH_CHUNK = 1 << 20

CacheKey = tuple[str, str, str]
_CACHE = pytest.StashKey[dict[CacheKey, "Report"]]()
_FIXTURE = pytest.StashKey["SetolFixture"]()


class SetolFixture:
    """``setol.analyze`` for one test, over a cache shared by the whole session.

    The cache key is the weights' content (file bytes, or tensor bytes for
    in-memory weights), the thresholds and the device, so a model that
    changed between two calls is analysed again.
    """

    def __init__(
        self,
        cache: dict[CacheKey, Report],
        marker_rules: Mapping[str, Any] | None,
        default_config: Path | None,
        default_device: str,
    ) -> None:
        self._cache = cache
        self._marker_rules = marker_rules
        self._default_config = default_config
        self._default_device = default_device
        #: Every report this test's calls returned, in call order.
        self.reports: list[Report] = []

    def analyze(
        self,
        model_or_path: Any,
        config: Config | str | Path | None = None,
        device: str | None = None,
        **options: Any,
    ) -> Report:
        """Analyse a checkpoint path, a list of paths or in-memory weights.

        The same call as ``pytest_setol.analyze``. ``config`` defaults to the
        run's ``--setol-config`` (or ``setol_config`` ini option), else
        ``setol.yaml`` beside the checkpoint, else the built-in defaults.
        ``device`` defaults to the run's ``--setol-device``, else ``auto``.
        Keyword ``options`` (``xmin_strategy``, ``base``, ...) pass through
        to ``pytest_setol.analyze`` and are part of the cache key. A
        ``@pytest.mark.setol`` marker on the test adds its rules.
        """
        from .results import Report

        device = device or self._default_device
        config = config if config is not None else self._default_config
        sources = _sources(model_or_path)
        if not sources:
            raise ValueError("setol.analyze needs a checkpoint, got an empty list")
        reports = [
            self._analyze_one(source, config, device, options) for source in sources
        ]
        if len(reports) == 1:
            report = reports[0]
        else:
            checkpoints = tuple(c for r in reports for c in r.checkpoints)
            report = Report(settings=reports[0].settings, checkpoints=checkpoints)
        self.reports.append(report)
        return report

    def _analyze_one(
        self,
        source: Any,
        config: Config | str | Path | None,
        device: str,
        options: dict[str, Any],
    ) -> Report:
        from .analysis import analyze

        resolved = self._config(source, config)
        settings = repr((device, sorted(options.items())))
        key = (content_key(source), repr(resolved), settings)
        report = self._cache.get(key)
        if report is None:
            report = analyze(source, resolved, device, **options)
            self._cache[key] = report
        return report

    def _config(self, source: Any, config: Config | str | Path | None) -> Config:
        from .analysis import resolve_config
        from .config import Config

        if config is None and not isinstance(source, (str, Path)):
            base = Config()
        else:
            base = resolve_config(
                config, source if isinstance(source, (str, Path)) else "."
            )
        if not self._marker_rules:
            return base
        return with_marker_rules(base, self._marker_rules)

    def enforce(self) -> None:
        """Fail the test on fail verdicts and warn on warn verdicts of its reports."""
        from .warning_types import SetolFitWarning, SetolRuleWarning

        failures = []
        for report in self.reports:
            for checkpoint in report.checkpoints:
                verdicts = [v for layer in checkpoint.layers for v in layer.verdicts]
                for verdict in verdicts + list(checkpoint.verdicts):
                    if verdict.outcome in ("fail", "error"):
                        failures.append(verdict.message)
                    elif verdict.outcome == "warn":
                        fit = verdict.rule == "fit-failed"
                        category = SetolFitWarning if fit else SetolRuleWarning
                        warnings.warn(verdict.message, category, stacklevel=2)
        if failures:
            pytest.fail("\n".join(dict.fromkeys(failures)), pytrace=False)


def with_marker_rules(base: Config, rules: Mapping[str, Any]) -> Config:
    """Return ``base`` with a marker's rules applied to every layer.

    Each marker rule updates the top-level rule of its metric and, for layers
    that a ``layers`` entry overrides, that entry's rule too, so it binds
    every layer. Raises ConfigError naming the marker and the key.
    """
    from .config import _Parser

    parser = _Parser(MARKER_ORIGIN, {})
    layer_rules = {k: v for k, v in rules.items() if k != "model"}
    parsed = parser.rules(layer_rules, "rules", base=base.rules)
    top = dict(base.rules)
    for metric, rule in parsed.items():
        if rule is None:
            top.pop(metric, None)
        else:
            top[metric] = dataclasses.replace(rule, origin=MARKER_ORIGIN)
    overrides = []
    for override in base.layers:
        merged = dict(override.rules)
        for metric in parsed.keys() & merged.keys():
            key = f"rules.{metric}"
            rule = parser.rule(layer_rules[metric], key, metric, merged[metric])
            merged[metric] = (
                None
                if rule is None
                else dataclasses.replace(rule, origin=MARKER_ORIGIN)
            )
        overrides.append(dataclasses.replace(override, rules=merged))
    model = dict(base.model)
    if "model" in rules:
        for name, rule in parser.model(rules["model"]).items():
            model[name] = dataclasses.replace(rule, origin=MARKER_ORIGIN)
    return dataclasses.replace(base, rules=top, layers=tuple(overrides), model=model)


def _sources(model_or_path: Any) -> list[Any]:
    """Split a list of checkpoint paths; anything else is one source."""
    if isinstance(model_or_path, Sequence) and not isinstance(
        model_or_path, (str, bytes)
    ):
        return list(model_or_path)
    return [model_or_path]


def content_key(source: Any) -> str:
    """Return a digest of the weights' content: file bytes or tensor bytes.

    A path digests the file, every file of a folder, or an index file and the
    shards it names. A mapping or an object with ``state_dict()`` digests each
    tensor's name, dtype, shape and bytes.
    """
    digest = hashlib.blake2b(digest_size=20)
    if isinstance(source, (str, Path)):
        for path in _files_of(Path(source)):
            digest.update(str(path).encode() + b"\0")
            _hash_file(digest, path)
        return "path:" + digest.hexdigest()
    if isinstance(source, Mapping):
        tensors = source
    elif callable(getattr(source, "state_dict", None)):
        tensors = source.state_dict()
    else:
        raise TypeError(
            f"setol.analyze expects a checkpoint path, a list of paths, a state "
            f"dict or an nn.Module, got {type(source).__name__}"
        )
    for name in sorted(tensors, key=str):
        _hash_tensor(digest, str(name), tensors[name])
    return "tensors:" + digest.hexdigest()


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if not path.is_file():
        # Nothing to digest; analyze() reports the missing file.
        return []
    files = [path]
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            shards = []
        files += [
            path.parent / shard for shard in shards if (path.parent / shard).is_file()
        ]
    return files


def _hash_file(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)


def _hash_tensor(digest: Any, name: str, value: Any) -> None:
    """Digest one tensor's name, dtype, shape and bytes without converting it."""
    if type(value).__module__.startswith("torch"):
        import torch

        tensor = value.detach().cpu().contiguous()
        header = f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
        data = tensor.reshape(-1).view(torch.uint8).numpy()
    else:
        import numpy as np

        array = np.ascontiguousarray(value)
        header = f"{name}\0{array.dtype.str}\0{array.shape}\0"
        data = array.reshape(-1).view(np.uint8)
    digest.update(header.encode())
    digest.update(memoryview(data))


@pytest.fixture
def setol(request: pytest.FixtureRequest) -> SetolFixture:
    """Analyse checkpoints or models inside a test: ``setol.analyze(model)``."""
    from .plugin import option, path_option

    config = request.config
    cache = config.stash.setdefault(_CACHE, {})
    marker_rules: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("setol"))):
        if marker.args:
            pytest.fail(
                f"{MARKER_ORIGIN} takes keyword arguments only, such as "
                f"alpha={{'max': 5}}; got positional {marker.args!r}",
                pytrace=False,
            )
        marker_rules.update(marker.kwargs)
    default_config = path_option(config, "setol_config")
    device = option(config, "setol_device") or "auto"
    fixture = SetolFixture(cache, marker_rules, default_config, device)
    if marker_rules:
        from .config import Config
        from .errors import ConfigError

        try:
            with_marker_rules(Config(), marker_rules)
        except ConfigError as exc:
            pytest.fail(str(exc), pytrace=False)
        request.node.stash[_FIXTURE] = fixture
    return fixture


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield
    fixture = item.stash.get(_FIXTURE, None)
    if fixture is not None:
        fixture.enforce()
