"""pytest entry point: options only, until a run asks for checkpoint linting.

pytest imports this module in every run of every project that installs the
package, so it imports nothing beyond pytest and the standard library; the
analysis modules load in ``pytest_configure`` when ``--setol`` is given.
"""

from __future__ import annotations

import pytest

_DEVICE_HELP = "auto, cpu or cuda[:N] (default: auto, which uses CUDA when a driver and torch are present)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("setol", "checkpoint linting (pytest-setol)")
    group.addoption(
        "--setol",
        action="append",
        default=[],
        metavar="PATH",
        help="lint the checkpoint at PATH: one test per weight matrix plus "
        "PATH::model (repeatable)",
    )
    group.addoption(
        "--setol-config",
        metavar="FILE",
        default=None,
        help="YAML thresholds (default: setol.yaml beside each checkpoint, "
        "else the built-in defaults)",
    )
    group.addoption("--setol-device", metavar="DEVICE", default=None, help=_DEVICE_HELP)
    group.addoption(
        "--setol-json",
        metavar="FILE",
        default=None,
        help="write the report document (schema_version 1) to FILE as JSON",
    )
    parser.addini("setol_config", "default for --setol-config", default=None)
    parser.addini("setol_device", "default for --setol-device", default="auto")


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("setol"):
        return
    from .session import SetolSession

    config.pluginmanager.register(SetolSession(config), "setol-session")
