"""Lint neural-network checkpoints from their weights alone: HTSR alpha and SETOL's ERG.

The package imports nothing heavy until a name below is used, because pytest
loads its plugin in every run of every project that installs it.

PYTEST_DONT_REWRITE: the package asserts nothing for pytest to explain, and
tests that import it before running pytest in-process would otherwise get a
"module already imported" warning from the assertion rewriter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointResult",
    "Config",
    "ConfigError",
    "LayerResult",
    "Report",
    "SetolError",
    "SetolFitWarning",
    "SetolRuleWarning",
    "SetolWarning",
    "Verdict",
    "analyze",
    "load_config",
    "__version__",
]

_LAZY = {
    "analyze": "analysis",
    "Config": "config",
    "load_config": "config",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "SetolError": "errors",
    "CheckpointResult": "results",
    "LayerResult": "results",
    "Report": "results",
    "Verdict": "results",
    "SetolWarning": "warning_types",
    "SetolRuleWarning": "warning_types",
    "SetolFitWarning": "warning_types",
}

if TYPE_CHECKING:
    from .analysis import analyze
    from .config import Config, load_config
    from .errors import CheckpointError, ConfigError, SetolError
    from .results import CheckpointResult, LayerResult, Report, Verdict
    from .warning_types import SetolFitWarning, SetolRuleWarning, SetolWarning


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'pytest_setol' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{module_name}", __name__)
    value = getattr(module, name)
    globals()[name] = value
    return value
