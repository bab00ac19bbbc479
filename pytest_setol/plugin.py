"""pytest entry point: options, the marker and the fixture, spec-file discovery.

pytest imports this module in every run of every project that installs the
package, so it imports nothing beyond pytest and the standard library. The
analysis modules load only when a run lints checkpoints: ``--setol`` is given,
a spec file naming checkpoints is collected, or (on an xdist controller) a
worker sends a layer result.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from . import fixtures
from .options import SCALES, XMIN_STRATEGIES

_DEVICE_HELP = (
    "auto, cpu or cuda[:N] (default: auto, which uses CUDA when a driver and "
    "torch are present)"
)
#: Spec files name their checkpoints in a top-level ``checkpoints:`` key.
_CHECKPOINTS_KEY = re.compile(r"^checkpoints\s*:", re.MULTILINE)
#: Name under which the session object of a linting run is registered.
SESSION_PLUGIN = "setol-session"


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
        help="YAML thresholds for --setol paths (default: setol.yaml beside each "
        "checkpoint, else the built-in defaults)",
    )
    group.addoption("--setol-device", metavar="DEVICE", default=None, help=_DEVICE_HELP)
    group.addoption(
        "--setol-base",
        metavar="PATH",
        default=None,
        help="checkpoint the linted ones were fine-tuned from: also report "
        "W - W_base of each matching matrix as NAME[delta]; with a LoRA adapter "
        "folder, lint the merged weights",
    )
    group.addoption(
        "--setol-json",
        metavar="FILE",
        default=None,
        help="write the report document (schema_version 1) to FILE as JSON; "
        "short for --setol-report json:FILE",
    )
    group.addoption(
        "--setol-report",
        action="append",
        default=[],
        metavar="FORMAT:FILE",
        help="also write the report to FILE in FORMAT: table (plain text), json, "
        "markdown (GitHub-flavoured, for $GITHUB_STEP_SUMMARY) or html (one "
        "self-contained file, figures embedded when matplotlib is installed) "
        "(repeatable; default: none)",
    )
    group.addoption(
        "--setol-baseline",
        metavar="FILE",
        default=None,
        help="compare every layer with FILE, a previous --setol-json report: "
        "checks the max_increase and max_decrease rules and prints the drift",
    )
    group.addoption(
        "--setol-update-baseline",
        action="store_true",
        default=False,
        help="write this run's report to the --setol-baseline FILE instead of "
        "checking drift against it",
    )
    group.addoption(
        "--setol-xmin-strategy",
        choices=XMIN_STRATEGIES,
        default="ks",
        help="how the power-law fit chooses xmin: ks (smallest Kolmogorov-Smirnov "
        "distance), median, peak (near the mode of the log histogram) or clip "
        "(ks without up to 10 outlying eigenvalues) (default: ks)",
    )
    group.addoption(
        "--setol-scale",
        choices=SCALES,
        default="raw",
        help="scale of eigenvalue-valued outputs (xmin, xmax, lambda_max, the log "
        "norms, alpha_hat, rand_traps, rand_lambda_max): raw squared singular "
        "values, or divided by N as in the HTSR papers (default: raw)",
    )
    group.addoption(
        "--setol-randomize",
        action="store_true",
        default=False,
        help="also shuffle each matrix and report rand_num_spikes, rand_traps, "
        "rand_lambda_max and rand_jsd; doubles the eigenvalue work (default: off)",
    )
    group.addoption(
        "--setol-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the --setol-randomize shuffle, 0 or more; the same seed gives "
        "the same numbers in every process (default: 0)",
    )
    group.addoption(
        "--setol-alpha-farms",
        action="store_true",
        default=False,
        help="also report alpha_farms, an alpha of 100 x 200 submatrices that "
        "compares across layer shapes; about 100 extra small solves per matrix "
        "(default: off)",
    )
    group.addoption(
        "--setol-columns",
        metavar="KEYS",
        default=None,
        help="comma-separated layer keys shown between the layer name and its "
        "status in the setol report table; any key of the JSON layer entries "
        "(default: shape,alpha,alpha_hat,erg_delta)",
    )
    group.addoption(
        "--setol-cache-dir",
        metavar="DIR",
        default=None,
        help="keep computed spectra under DIR and reuse them while the tensor and "
        "every setting that changes its eigenvalues are unchanged (default: "
        "pytest's cache directory, .pytest_cache/d/setol; no cache with "
        "-p no:cacheprovider)",
    )
    group.addoption(
        "--setol-no-cache",
        action="store_true",
        default=False,
        help="compute every spectrum, reading and writing no cache (default: off)",
    )
    parser.addini("setol_config", "default for --setol-config", default=None)
    parser.addini("setol_device", "default for --setol-device", default="auto")
    parser.addini("setol_json", "default for --setol-json", default=None)
    parser.addini("setol_baseline", "default for --setol-baseline", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", fixtures.MARKER_HELP)
    if not config.pluginmanager.is_registered(fixtures):
        config.pluginmanager.register(fixtures, "setol-fixtures")
    _check_baseline_options(config)
    config.pluginmanager.register(_SpecFiles(config), "setol-spec-files")
    if config.getoption("setol"):
        from .session import ensure_session

        ensure_session(config)


def _check_baseline_options(config: pytest.Config) -> None:
    """Reject a missing baseline before anything is collected or computed."""
    baseline = path_option(config, "setol_baseline")
    if config.getoption("setol_update_baseline"):
        if baseline is None:
            raise pytest.UsageError(
                "--setol-update-baseline needs --setol-baseline FILE (or the "
                "setol_baseline ini option) to name the file to write"
            )
    elif baseline is not None and not baseline.is_file():
        raise pytest.UsageError(
            f"--setol-baseline: {baseline}: baseline file not found; write it "
            "with --setol-update-baseline or point --setol-baseline at a "
            "--setol-json report"
        )


def option(config: pytest.Config, name: str) -> Any:
    """Return command-line option ``name``, else ini option ``name``, else None."""
    value = config.getoption(name)
    if value is None or value == "":
        value = config.getini(name) or None
    return value


def path_option(config: pytest.Config, name: str) -> Path | None:
    """Return a path option; an ini value is relative to the ini file's folder."""
    value = config.getoption(name)
    if value:
        return Path(value)
    value = config.getini(name)
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute() and config.inipath is not None:
        path = config.inipath.parent / path
    return path


class _SpecFiles:
    """Collects spec files and starts the session when linting comes into play."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_collect_file(
        self, file_path: Path, parent: pytest.Collector
    ) -> pytest.Collector | None:
        name = file_path.name
        if name != "setol.yaml" and not name.endswith(".setol.yaml"):
            return None
        try:
            text = file_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        if not _CHECKPOINTS_KEY.search(text):
            # A thresholds file beside a checkpoint, not a spec file.
            return None
        from .session import SpecFile

        spec: pytest.Collector = SpecFile.from_parent(parent, path=file_path)
        return spec

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # An xdist controller collects nothing, so a spec-file run starts its
        # session on the first report that carries a setol result.
        if getattr(report, "setol_path", None) is None:
            return
        if self.config.pluginmanager.get_plugin(SESSION_PLUGIN) is not None:
            return
        from .session import ensure_session

        ensure_session(self.config).record(report)
