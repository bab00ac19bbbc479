"""Tensor layouts and dtypes: upcasting, conv1d, ties, per-layer faults, fine-tuning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from pytest_setol import analyze
from pytest_setol.config import Config
from pytest_setol.planner import plan_layers
from pytest_setol.reader import open_checkpoint
from tests.conftest import MakeCheckpoint, heavy_tailed_matrix

ROWS, COLS = 200, 100
#: Eigenvalues from a Gram matrix and from an SVD of the same matrix agree to
#: about 1e-10 relative; log10 of their sums to this absolute error.
LOG_ATOL = 1e-9
#: Largest finite float16 value; a float16 sum of eigenvalues overflows above it.
FLOAT16_MAX = 65504.0
PEFT = "base_model.model."
Q_PROJ = "model.layers.0.self_attn.q_proj"


def tailed(seed: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    return heavy_tailed_matrix(rows, cols, np.random.default_rng(seed))


def log_norm(matrix: np.ndarray) -> float:
    return math.log10(float(np.sum(matrix.astype(np.float64) ** 2)))


def test_float16_sum_beyond_float16_range(make_checkpoint: MakeCheckpoint) -> None:
    rng = np.random.default_rng(2)
    weights = (rng.standard_t(3, size=(ROWS, COLS)) * 30).astype(np.float16)
    assert np.all(np.isfinite(weights))
    total = float(np.sum(weights.astype(np.float64) ** 2))
    assert total > FLOAT16_MAX
    result = analyze(make_checkpoint({"w": weights}), device="cpu").checkpoints[0]
    (layer,) = result.layers
    assert layer.dtype == "F16"
    assert layer.log_norm == pytest.approx(math.log10(total), abs=LOG_ATOL)
    assert layer.lambda_max is not None and math.isfinite(layer.lambda_max)


@pytest.mark.parametrize(
    "dtype", [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]
)
def test_low_precision_upcast(make_checkpoint: MakeCheckpoint, dtype: type) -> None:
    weights = tailed(3).astype(dtype)
    path = make_checkpoint({"w": weights})
    (tensor,) = open_checkpoint(path).tensors
    assert tensor.read().dtype == np.dtype(dtype)
    (layer,) = analyze(path, device="cpu").checkpoints[0].layers
    assert layer.log_norm == pytest.approx(log_norm(weights), abs=LOG_ATOL)


def test_integer_and_bool_not_analysed(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint(
        {
            "w": tailed(4).astype(np.float32),
            "ids": np.arange(ROWS * COLS, dtype=np.int64).reshape(ROWS, COLS),
            "mask": np.ones((ROWS, COLS), dtype=bool),
            "codes": np.zeros((ROWS, COLS), dtype=np.int8),
        }
    )
    result = analyze(path, device="cpu").checkpoints[0]
    assert [layer.name for layer in result.layers] == ["w"]
    assert result.not_analysed == {
        "non-float dtype BOOL": 1,
        "non-float dtype I64": 1,
        "non-float dtype I8": 1,
    }


def test_conv1d_pools_kernel_positions(make_checkpoint: MakeCheckpoint) -> None:
    kernel = np.random.default_rng(5).standard_normal((120, 60, 3))
    path = make_checkpoint({"conv.weight": kernel.astype(np.float32)})
    (plan,) = plan_layers(open_checkpoint(path), Config()).layers
    assert (plan.kind, plan.rows, plan.cols, plan.slices) == ("conv1d", 120, 60, 3)
    (layer,) = analyze(path, device="cpu").checkpoints[0].layers
    assert layer.L == 180
    # Each slice is scaled by 1/sqrt(2): the pooled trace is half the sum of squares.
    stored = kernel.astype(np.float32).astype(np.float64)
    expected = math.log10(0.5 * float(np.sum(stored**2)))
    assert layer.log_norm == pytest.approx(expected, abs=LOG_ATOL)


def test_identical_content_is_alias(make_checkpoint: MakeCheckpoint) -> None:
    embedding = tailed(6).astype(np.float32)
    other = tailed(7).astype(np.float32)
    other[0] = embedding[0]  # same first row, different content
    path = make_checkpoint(
        {"wte.weight": embedding, "lm_head.weight": embedding.copy(), "h.0.w": other}
    )
    result = analyze(path, device="cpu").checkpoints[0]
    assert [(layer.name, layer.aliases) for layer in result.layers] == [
        ("h.0.w", ()),
        ("lm_head.weight", ("wte.weight",)),
    ]
    assert result.summary is not None
    assert result.summary.float_parameters == 2 * ROWS * COLS


def test_equal_zero_matrices_not_aliases(make_checkpoint: MakeCheckpoint) -> None:
    zeros = np.zeros((ROWS, COLS), dtype=np.float32)
    path = make_checkpoint({"a.w": zeros, "b.w": zeros.copy()})
    result = analyze(path, device="cpu").checkpoints[0]
    assert [(layer.name, layer.aliases) for layer in result.layers] == [
        ("a.w", ()),
        ("b.w", ()),
    ]


def test_nan_and_inf_are_invalid(make_checkpoint: MakeCheckpoint) -> None:
    broken = tailed(8).astype(np.float32)
    broken[3, 4] = np.nan
    broken[10, :3] = np.inf
    path = make_checkpoint({"a.broken": broken, "b.fine": tailed(9).astype(np.float32)})
    result = analyze(path, device="cpu").checkpoints[0]
    bad = result.layer("a.broken")
    assert bad.status == "invalid"
    assert bad.reason is not None and bad.reason.startswith("4 NaN or Inf")
    assert bad.failed
    assert result.layer("b.fine").alpha is not None


@pytest.mark.parametrize("value", [0.0, 0.25])
def test_constant_matrix_fit_failed(
    make_checkpoint: MakeCheckpoint, value: float
) -> None:
    path = make_checkpoint({"w": np.full((ROWS, COLS), value, dtype=np.float32)})
    (layer,) = analyze(path, device="cpu").checkpoints[0].layers
    assert layer.status == "fit-failed"
    assert layer.reason is not None
    assert "constant" in layer.reason or "above the floor" in layer.reason


def test_base_delta_beside_each_matrix(tmp_path: Path) -> None:
    base = {"layers.0.w": tailed(10), "layers.1.w": tailed(11), "bias": np.zeros(COLS)}
    update = 0.01 * tailed(12)
    tuned = dict(base, **{"layers.0.w": base["layers.0.w"] + update})
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    result = analyze(
        tmp_path / "tuned.safetensors", device="cpu", base=tmp_path / "base.safetensors"
    ).checkpoints[0]
    names = [layer.name for layer in result.layers]
    assert names == [
        "layers.0.w",
        "layers.0.w[delta]",
        "layers.1.w",
        "layers.1.w[delta]",
    ]
    delta = result.layer("layers.0.w[delta]")
    assert delta.log_norm == pytest.approx(log_norm(update), abs=1e-6)
    assert result.layer("layers.1.w[delta]").status == "fit-failed"  # zero update


def write_adapter(
    folder: Path, rank: int, alpha: float, seed: int = 13, **extra: object
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rank, COLS)).astype(np.float32)
    b = rng.standard_normal((ROWS, rank)).astype(np.float32)
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, **extra}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {f"{PEFT}{Q_PROJ}.lora_A.weight": a, f"{PEFT}{Q_PROJ}.lora_B.weight": b}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return a.astype(np.float64), b.astype(np.float64)


def test_lora_update_from_factors(tmp_path: Path) -> None:
    a, b = write_adapter(tmp_path / "adapter", rank=16, alpha=32)
    result = analyze(tmp_path / "adapter", device="cpu").checkpoints[0]
    (layer,) = result.layers
    assert layer.name == f"{Q_PROJ}.weight"
    assert (layer.M, layer.N) == (COLS, ROWS)
    update = 2.0 * b @ a  # lora_alpha / r = 32 / 16
    singular = np.linalg.svd(update, compute_uv=False)
    assert layer.log_norm == pytest.approx(
        math.log10(np.sum(singular**2)), abs=LOG_ATOL
    )
    assert layer.lambda_max == pytest.approx(singular[0] ** 2, rel=1e-10)


def test_lora_low_rank_fit_failed(tmp_path: Path) -> None:
    write_adapter(tmp_path / "adapter", rank=4, alpha=8)
    (layer,) = analyze(tmp_path / "adapter", device="cpu").checkpoints[0].layers
    assert layer.status == "fit-failed"
    assert layer.reason is not None and "rank 4" in layer.reason
    assert layer.log_norm is not None


def test_lora_rslora_scale(tmp_path: Path) -> None:
    a, b = write_adapter(tmp_path / "adapter", rank=16, alpha=32, use_rslora=True)
    (layer,) = analyze(tmp_path / "adapter", device="cpu").checkpoints[0].layers
    update = (32 / 4) * b @ a  # lora_alpha / sqrt(r)
    assert layer.log_norm == pytest.approx(log_norm(update), abs=LOG_ATOL)


def test_lora_merged_with_base(tmp_path: Path) -> None:
    base_weight = tailed(14)
    mlp = tailed(15, COLS, ROWS)
    save_file(
        {f"{Q_PROJ}.weight": base_weight, "model.layers.0.mlp.weight": mlp},
        str(tmp_path / "base.safetensors"),
    )
    a, b = write_adapter(tmp_path / "adapter", rank=16, alpha=16)
    result = analyze(
        tmp_path / "adapter", device="cpu", base=tmp_path / "base.safetensors"
    ).checkpoints[0]
    names = [layer.name for layer in result.layers]
    assert names == [
        "model.layers.0.mlp.weight",
        f"{Q_PROJ}.weight",
        f"{Q_PROJ}.weight[delta]",
    ]
    merged = result.layer(f"{Q_PROJ}.weight")
    assert merged.log_norm == pytest.approx(log_norm(base_weight + b @ a), abs=LOG_ATOL)
    delta = result.layer(f"{Q_PROJ}.weight[delta]")
    assert delta.log_norm == pytest.approx(log_norm(b @ a), abs=LOG_ATOL)


def test_lora_embedding_update_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(16)
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 12, "lora_alpha": 12}))
    tensors = {
        f"{PEFT}model.embed_tokens.lora_embedding_A": rng.standard_normal((12, 300)),
        f"{PEFT}model.embed_tokens.lora_embedding_B": rng.standard_normal((64, 12)),
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (tensor,) = open_checkpoint(folder).tensors
    assert tensor.name == "model.embed_tokens.weight"
    assert tensor.shape == (300, 64)
    expected = (tensors[f"{PEFT}model.embed_tokens.lora_embedding_B"]
                @ tensors[f"{PEFT}model.embed_tokens.lora_embedding_A"]).T  # fmt: skip
    assert np.allclose(tensor.read(), expected, rtol=1e-12, atol=1e-12)


def test_setol_base_option(pytester: pytest.Pytester) -> None:
    base = {"layers.0.w": tailed(17).astype(np.float32)}
    tuned = {"layers.0.w": base["layers.0.w"] + 0.05 * tailed(18).astype(np.float32)}
    save_file(base, str(pytester.path / "base.safetensors"))
    save_file(tuned, str(pytester.path / "tuned.safetensors"))
    result = pytester.runpytest(
        "--setol", "tuned.safetensors", "--setol-base", "base.safetensors",
        "--collect-only", "-q",
    )  # fmt: skip
    ids = [line.split("::", 1)[1] for line in result.outlines if "::" in line]
    assert ids == ["layers.0.w", "layers.0.w[delta]", "model"]


def test_cli_base_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_setol.cli import main

    base = {"w": tailed(19).astype(np.float32)}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file({"w": base["w"] * 1.5}, str(tmp_path / "tuned.safetensors"))
    code = main(
        [
            "report", str(tmp_path / "tuned.safetensors"),
            "--base", str(tmp_path / "base.safetensors"),
            "--format", "json", "--device", "cpu", "--no-progress",
        ]
    )  # fmt: skip
    document = json.loads(capsys.readouterr().out)
    names = [layer["name"] for layer in document["checkpoints"][0]["layers"]]
    assert names == ["w", "w[delta]"]
    assert code in (0, 1)
