"""JUnit XML: every layer test case carries its metrics as properties."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.checkpoint_builders import mixed_tensors, write

pytestmark = pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")


def _cases(xml_path: Path) -> dict[str, dict[str, str]]:
    """Map each test case name to its properties."""
    cases = {}
    for case in ET.parse(xml_path).iter("testcase"):
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases[str(case.get("name"))] = {str(k): str(v) for k, v in properties.items()}
    return cases


@pytest.fixture
def mixed(pytester: pytest.Pytester) -> Path:
    return write(pytester.path / "mixed.safetensors", mixed_tensors())


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_layer_properties(
    pytester: pytest.Pytester, mixed: Path, workers: tuple[str, ...]
) -> None:
    if workers:
        pytest.importorskip("xdist")
    xml_path = pytester.path / "junit.xml"
    pytester.runpytest("--setol", str(mixed), f"--junit-xml={xml_path}", *workers)
    cases = _cases(xml_path)
    assert set(cases) == {"ok", "over", "under", "warned", "tiny", "model"}
    over = cases["over"]
    assert over["status"] == "over-trained"
    assert float(over["alpha"]) == pytest.approx(1.5, abs=0.01)
    assert float(over["erg_delta"]) < 0
    for key in ("D", "xmin", "xmax", "num_pl_spikes", "alpha_hat", "log_norm",
                "stable_rank", "erg_num", "mp_sigma", "N", "M", "Q", "L"):  # fmt: skip
        float(over[key])
    assert cases["ok"]["status"] == "ok"
    assert cases["warned"]["status"] == "erg-violated"
    assert cases["tiny"]["status"] == "skipped"
    assert "fewer than min_eigenvalues" in cases["tiny"]["reason"]
    assert "alpha" not in cases["tiny"]
    model = cases["model"]
    assert float(model["coverage"]) == pytest.approx(0.99, abs=0.01)
    assert float(model["fail_fraction"]) == pytest.approx(0.5)
    assert model["layers_over-trained"] == "1"


def test_drift_property(pytester: pytest.Pytester, mixed: Path) -> None:
    (pytester.path / "setol.yaml").write_text("rules:\n  alpha: {max_increase: 1}\n")
    baseline = pytester.path / "baseline.json"
    args = ("--setol", str(mixed), "--setol-baseline", str(baseline))
    pytester.runpytest(*args, "--setol-update-baseline")
    xml_path = pytester.path / "junit.xml"
    pytester.runpytest(*args, f"--junit-xml={xml_path}")
    assert float(_cases(xml_path)["over"]["alpha_drift"]) == 0.0
