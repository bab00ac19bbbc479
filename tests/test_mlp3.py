"""The MLP3 example at its smallest size: train, save as safetensors, lint, tabulate."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlp3"
#: The quick run took 15 to 25 s on two shared cores, so this only stops a hang.
TIMEOUT_S = 300
#: Tests that need the quick run, a subprocess that trains and lints two models.
needs_training = pytest.mark.slow
ANALYSED = ("fc1.weight", "fc2.weight")
FINITE_KEYS = (
    "alpha",
    "D",
    "erg_delta",
    "erg_gap",
    "erg_num",
    "num_spikes",
    "rand_num_spikes",
    "rand_lambda_max",
    "rand_jsd",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlp3")
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr
    return out


@pytest.fixture(scope="module")
def runs(quick_run: Path) -> list[dict[str, str]]:
    with (quick_run / "runs.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@needs_training
def test_quick_run_writes_outputs(quick_run: Path) -> None:
    for name in ("runs.csv", "summary.csv", "summary.md"):
        assert (quick_run / name).stat().st_size > 0, name
    assert (quick_run / "mlp3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_training
def test_quick_run_one_row_per_layer(runs: list[dict[str, str]]) -> None:
    keys = sorted((float(r["multiplier"]), r["layer"]) for r in runs)
    layers = ("fc1.weight", "fc2.weight", "fc3.weight")
    assert keys == sorted((m, layer) for m in (1.0, 32.0) for layer in layers)
    assert {r["seed"] for r in runs} == {"0"}


@needs_training
@pytest.mark.parametrize("layer", ANALYSED)
def test_analysed_layers_finite(runs: list[dict[str, str]], layer: str) -> None:
    rows = [r for r in runs if r["layer"] == layer]
    assert len(rows) == 2
    for row in rows:
        assert row["status"] != "skipped", row["reason"]
        for key in FINITE_KEYS:
            assert row[key] != "", f"{layer} {key} is empty at x{row['multiplier']}"
            assert math.isfinite(float(row[key])), f"{layer} {key} = {row[key]}"


@needs_training
def test_output_layer_skipped(runs: list[dict[str, str]]) -> None:
    rows = [r for r in runs if r["layer"] == "fc3.weight"]
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == "skipped"
        assert "min_eigenvalues" in row["reason"]
        assert row["alpha"] == ""


@needs_training
def test_errors_are_fractions(runs: list[dict[str, str]]) -> None:
    for row in runs:
        assert 0.0 <= float(row["train_error"]) <= 1.0
        assert 0.0 <= float(row["test_error"]) <= 1.0
        assert 1 <= int(row["epochs"]) <= 3


@needs_training
def test_summary_table_rows(quick_run: Path) -> None:
    lines = (quick_run / "summary.md").read_text().splitlines()
    assert lines[0].startswith("| data set | LR x |")
    assert len(lines) == 4
    assert lines[2].startswith("| teacher-student | 1 | 1 |")
    assert lines[3].startswith("| teacher-student | 32 | 1 |")


def test_stopping_rule_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from mlp3_training import EarlyStopper

    stopper = EarlyStopper(patience=3, min_improvement=1e-4)
    # 0.49995 and 0.49992 are within 1e-4 of the best (0.5), so they count as
    # no improvement; 0.3 resets the count.
    losses = [1.0, 0.5, 0.49995, 0.49992, 0.3, 0.29995, 0.29991]
    assert [stopper.update(loss) for loss in losses] == [False] * len(losses)
    assert stopper.update(0.29993) is True
