"""Sharded checkpoints and model folders: index files, HF folders, natural order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from pytest_setol import CheckpointError, analyze
from pytest_setol.reader import open_checkpoint
from tests.conftest import heavy_tailed_matrix

ROWS, COLS = 160, 80


def layer_tensors(count: int, seed: int = 7) -> dict[str, np.ndarray]:
    """Weights named ``layers.{i}.weight`` plus one bias each."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(count):
        matrix = heavy_tailed_matrix(ROWS, COLS, rng).astype(np.float32)
        tensors[f"layers.{i}.weight"] = matrix
        tensors[f"layers.{i}.bias"] = np.zeros(COLS, dtype=np.float32)
    return tensors


def write_shards(
    folder: Path, tensors: dict[str, np.ndarray], shards: list[list[str]]
) -> Path:
    """Write ``shards`` (lists of names) as HF-style safetensors files and an index."""
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for number, names in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file({name: tensors[name] for name in names}, str(folder / file))
        weight_map.update(dict.fromkeys(names, file))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


@pytest.fixture
def three_shards(tmp_path: Path) -> Path:
    """Twelve layers over three shards, deliberately out of natural order."""
    tensors = layer_tensors(12)
    names = sorted(tensors)  # lexical: layers.1, layers.10, layers.11, layers.2 ...
    return write_shards(
        tmp_path / "model", tensors, [names[:8], names[8:16], names[16:]]
    )


def test_index_reads_every_shard(three_shards: Path) -> None:
    checkpoint = open_checkpoint(three_shards)
    assert checkpoint.format == "safetensors-sharded"
    assert len(checkpoint.tensors) == 24


def test_index_natural_order_across_shards(three_shards: Path) -> None:
    checkpoint = open_checkpoint(three_shards)
    weights = [t.name for t in checkpoint.tensors if t.name.endswith("weight")]
    assert weights == [f"layers.{i}.weight" for i in range(12)]


def test_folder_with_index_same_as_index(three_shards: Path) -> None:
    by_index = open_checkpoint(three_shards)
    by_folder = open_checkpoint(three_shards.parent)
    assert by_folder.path == str(three_shards.parent)
    assert [t.name for t in by_folder.tensors] == [t.name for t in by_index.tensors]


def test_sharded_values_match_source(three_shards: Path) -> None:
    expected = layer_tensors(12)
    checkpoint = open_checkpoint(three_shards)
    for tensor in checkpoint.tensors:
        assert np.array_equal(tensor.read(), expected[tensor.name]), tensor.name


def test_names_stable_across_runs(three_shards: Path) -> None:
    first = analyze(three_shards, device="cpu").checkpoints[0]
    second = analyze(three_shards, device="cpu").checkpoints[0]
    assert [layer.name for layer in first.layers] == [
        f"layers.{i}.weight" for i in range(12)
    ]
    assert [layer.alpha for layer in first.layers] == [
        layer.alpha for layer in second.layers
    ]


def test_hf_folder_single_safetensors(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
    save_file(layer_tensors(2), str(folder / "model.safetensors"))
    checkpoint = open_checkpoint(folder)
    assert checkpoint.format == "safetensors"
    assert checkpoint.path == str(folder)
    result = analyze(folder, device="cpu").checkpoints[0]
    assert result.path == str(folder)
    assert [t.name for t in checkpoint.tensors][-1] == "layers.1.weight"


def test_hf_folder_bin_shards(tmp_path: Path) -> None:
    folder = tmp_path / "hf-bin"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    tensors = {k: torch.from_numpy(v) for k, v in layer_tensors(3).items()}
    names = sorted(tensors)
    weight_map = {}
    for number, part in enumerate((names[:3], names[3:]), start=1):
        file = f"pytorch_model-{number:05d}-of-00002.bin"
        torch.save({name: tensors[name] for name in part}, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    index = {"weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    checkpoint = open_checkpoint(folder)
    assert checkpoint.format == "torch-sharded"
    assert [t.name for t in checkpoint.tensors if t.name.endswith("weight")] == [
        "layers.0.weight",
        "layers.1.weight",
        "layers.2.weight",
    ]
    read = checkpoint.tensors[1].read()
    assert np.array_equal(read, tensors[checkpoint.tensors[1].name].numpy())


def test_hf_folder_single_bin(tmp_path: Path) -> None:
    folder = tmp_path / "hf-one-bin"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    tensors = {k: torch.from_numpy(v) for k, v in layer_tensors(2).items()}
    torch.save(tensors, folder / "pytorch_model.bin")
    result = analyze(folder, device="cpu").checkpoints[0]
    assert [layer.name for layer in result.layers] == [
        "layers.0.weight",
        "layers.1.weight",
    ]


def test_folder_of_shards_without_index(tmp_path: Path) -> None:
    tensors = layer_tensors(4)
    names = sorted(tensors)
    folder = tmp_path / "plain"
    folder.mkdir()
    save_file({n: tensors[n] for n in names[:4]}, str(folder / "part-1.safetensors"))
    save_file({n: tensors[n] for n in names[4:]}, str(folder / "part-2.safetensors"))
    checkpoint = open_checkpoint(folder)
    assert len(checkpoint.tensors) == 8


def test_folder_duplicate_name_across_shards(tmp_path: Path) -> None:
    tensors = layer_tensors(1)
    folder = tmp_path / "dup"
    folder.mkdir()
    save_file(tensors, str(folder / "a.safetensors"))
    save_file(tensors, str(folder / "b.safetensors"))
    with pytest.raises(
        CheckpointError, match="is in both a.safetensors and b.safetensors"
    ):
        open_checkpoint(folder)


@pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")
def test_three_shards_end_to_end(pytester: pytest.Pytester, three_shards: Path) -> None:
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "--setol", str(three_shards), f"--setol-json={report}", "-p", "no:cacheprovider"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("passed", 0) == 13  # 12 + model
    document = json.loads(report.read_text())
    (checkpoint,) = document["checkpoints"]
    names = [layer["name"] for layer in checkpoint["layers"]]
    assert names == [f"layers.{i}.weight" for i in range(12)]
    assert checkpoint["not_analysed"] == {"1-D tensor (bias or norm)": 12}


def test_three_shards_node_ids(pytester: pytest.Pytester, three_shards: Path) -> None:
    result = pytester.runpytest("--setol", str(three_shards), "--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert [i.split("::", 1)[1] for i in ids] == [
        *(f"layers.{i}.weight" for i in range(12)),
        "model",
    ]


def test_safetensors_never_imports_torch(three_shards: Path) -> None:
    code = (
        "import sys\n"
        "from pytest_setol import analyze\n"
        f"analyze({str(three_shards)!r}, device='cpu')\n"
        "print('torch' in sys.modules)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "False"
