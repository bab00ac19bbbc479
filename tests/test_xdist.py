"""pytest-xdist runs: the same outcomes and the same report as a serial run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.checkpoint_builders import (
    bulk_and_tail,
    matrices,
    mixed_tensors,
    pareto,
    without_seconds,
    write,
)

pytest.importorskip("xdist", reason="pytest-xdist is in the test extra")

# Inner runs emit SetolWarnings on purpose; the project turns warnings into errors.
pytestmark = pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")

#: Layer names of ``mixed_tensors()`` in natural-sort order.
MIXED_LAYERS = ["ok", "over", "tiny", "under", "warned"]


@pytest.fixture
def mixed(pytester: pytest.Pytester) -> Path:
    return write(pytester.path / "mixed.safetensors", mixed_tensors())


@pytest.fixture
def second(pytester: pytest.Pytester) -> Path:
    tensors = matrices(seed=7, a__0=bulk_and_tail(), a__1=pareto(3.0))
    return write(pytester.path / "second.safetensors", tensors)


def _run(
    pytester: pytest.Pytester, name: str, *args: str
) -> tuple[pytest.RunResult, dict[str, object]]:
    target = pytester.path / f"{name}.json"
    # Without the spectra cache, every process computes what it reports.
    options = ("-rA", "--setol-no-cache", "--setol-json", str(target))
    result = pytester.runpytest(*args, *options)
    return result, json.loads(target.read_text())


def _summary_lines(result: pytest.RunResult) -> list[str]:
    """Return the sorted ``-rA`` lines (``PASSED node``), which xdist keeps as is."""
    prefixes = ("PASSED ", "FAILED ", "SKIPPED ", "ERROR ")
    lines = [line for line in result.outlines if line.startswith(prefixes)]
    return sorted(line.split(" - ")[0] for line in lines)


def test_serial_and_two_workers_agree(
    pytester: pytest.Pytester, mixed: Path, second: Path
) -> None:
    args = ("--setol", str(mixed), "--setol", str(second))
    serial, serial_json = _run(pytester, "serial", *args)
    parallel, parallel_json = _run(pytester, "parallel", *args, "-n", "2")
    expected = {"passed": 6, "failed": 2, "skipped": 1, "warnings": 4}
    serial.assert_outcomes(**expected)
    parallel.assert_outcomes(**expected)
    assert _summary_lines(parallel) == _summary_lines(serial)
    assert without_seconds(parallel_json) == without_seconds(serial_json)
    paths = [c["path"] for c in parallel_json["checkpoints"]]  # type: ignore[index]
    assert paths == [str(mixed), str(second)]
    parallel.stdout.fnmatch_lines(["*setol report*", "*over *over-trained*"])


def test_model_item_alone_checks_every_layer(
    pytester: pytest.Pytester, mixed: Path
) -> None:
    _, serial_json = _run(pytester, "serial", "--setol", str(mixed))
    only_model, model_json = _run(
        pytester, "model", "--setol", str(mixed), "-n", "2", "-k", "model"
    )
    # xdist deselects on the workers, so the controller counts no deselected.
    only_model.assert_outcomes(passed=1)
    assert without_seconds(model_json) == without_seconds(serial_json)


def test_last_failed_model_item_checks_whole_model(
    pytester: pytest.Pytester, mixed: Path
) -> None:
    (pytester.path / "setol.yaml").write_text("model:\n  mean_alpha: {max: 3}\n")
    first, _ = _run(pytester, "first", "--setol", str(mixed), "-n", "2")
    first.assert_outcomes(passed=2, failed=3, skipped=1, warnings=3)
    again, again_json = _run(
        pytester, "again", "--setol", str(mixed), "-n", "2", "--lf"
    )
    again.assert_outcomes(failed=3, warnings=2)
    layers = again_json["checkpoints"][0]["layers"]  # type: ignore[index]
    assert [layer["name"] for layer in layers] == MIXED_LAYERS
    assert all(
        layer["alpha"] is not None for layer in layers if layer["name"] != "tiny"
    )
    again.stdout.fnmatch_lines(["*mixed.safetensors (model): mean_alpha = * above*"])


def test_deselected_model_item_keeps_plan_order(
    pytester: pytest.Pytester, mixed: Path
) -> None:
    result, document = _run(
        pytester, "layers", "--setol", str(mixed), "-n", "2", "-k", "not model"
    )
    result.assert_outcomes(passed=2, failed=2, skipped=1, warnings=3)
    checkpoint = document["checkpoints"][0]  # type: ignore[index]
    assert checkpoint["summary"] is None
    names = [layer["name"] for layer in checkpoint["layers"]]
    assert names == MIXED_LAYERS


def test_spec_file_reported_by_controller(
    pytester: pytest.Pytester, mixed: Path
) -> None:
    spec = pytester.path / "tests" / "model.setol.yaml"
    spec.parent.mkdir()
    spec.write_text(
        textwrap.dedent(
            """
            checkpoints:
              - ../mixed.safetensors
            rules:
              erg_delta: null
            """
        )
    )
    target = pytester.path / "spec.json"
    result = pytester.runpytest("tests", "-n", "2", "--setol-json", str(target))
    result.assert_outcomes(passed=3, failed=2, skipped=1)
    result.stdout.fnmatch_lines(["*setol report*", "*mixed.safetensors*"])
    document = json.loads(target.read_text())
    assert [c["path"] for c in document["checkpoints"]] == ["mixed.safetensors"]
    assert len(document["checkpoints"][0]["layers"]) == 5


def test_blas_threads_shared_between_workers() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy as np

    from pytest_setol.items import _cpu_count, blas_limit

    class WorkerConfig:
        workerinput = {"workercount": 2}

    np.linalg.eigvalsh(np.eye(3))  # threadpoolctl only limits loaded libraries
    with blas_limit(WorkerConfig()):  # type: ignore[arg-type]
        # Only BLAS pools are limited; torch's OpenMP pool, loaded by other
        # tests in the same process, keeps its own size.
        inside = {
            i["num_threads"]
            for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"
        }
    assert inside == {max(1, _cpu_count() // 2)}
