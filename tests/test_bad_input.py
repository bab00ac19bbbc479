"""Unreadable checkpoints: each is a CheckpointError naming the file and the culprit."""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from pytest_setol import CheckpointError
from pytest_setol.cli import EXIT_USAGE, main
from pytest_setol.reader import open_checkpoint
from tests.conftest import heavy_tailed_matrix

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 90868376\n"
)

# Inner pytester runs inherit this module's warning filters; a fit-unreliable
# SetolWarning of the good checkpoint must not turn into a failure there.
pytestmark = pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")


def raw_safetensors(
    path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None
) -> Path:  # noqa: E501
    """Write a safetensors file byte by byte: length, header JSON, data."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + text + data)
    return path


def f32(shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


def expect_error(path: Path, *fragments: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return caught.value


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "absent.safetensors", "file not found")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    expect_error(path, "file is empty")


def test_directory_without_weights(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    expect_error(folder, "contains no weights")


@pytest.mark.parametrize("name", ["model.safetensors", "model.bin", "model.gguf"])
def test_git_lfs_pointer(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(LFS_POINTER)
    expect_error(path, "Git LFS pointer", "git lfs pull")


def test_header_length_beyond_file(tmp_path: Path) -> None:
    path = raw_safetensors(tmp_path / "m.safetensors", {}, length=4096)
    expect_error(path, "header length 4096 bytes runs past the end")


def test_header_over_limit(tmp_path: Path) -> None:
    path = raw_safetensors(tmp_path / "m.safetensors", {}, length=100_000_001)
    expect_error(path, "exceeds the 100 MB limit")


def test_header_bad_json(tmp_path: Path) -> None:
    path = raw_safetensors(tmp_path / "m.safetensors", b'{"w": {"dtype": "F32",')
    expect_error(path, "header is not valid JSON")


def test_unknown_dtype(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F128", "shape": [2], "data_offsets": [0, 32]}}
    path = raw_safetensors(tmp_path / "m.safetensors", header, bytes(32))
    expect_error(path, "tensor 'w'", "unknown dtype 'F128'")


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = {"a": f32([4], 0, 16), "b": f32([4], 8, 24)}
    path = raw_safetensors(tmp_path / "m.safetensors", header, bytes(24))
    expect_error(path, "tensor 'b'", "overlaps")


def test_gap_between_tensors(tmp_path: Path) -> None:
    header = {"a": f32([4], 0, 16), "b": f32([4], 20, 36)}
    path = raw_safetensors(tmp_path / "m.safetensors", header, bytes(36))
    expect_error(path, "tensor 'b'", "gap of 4 bytes")


def test_offsets_past_end(tmp_path: Path) -> None:
    header = {"a": f32([4], 0, 16), "b": f32([4], 16, 32)}
    path = raw_safetensors(tmp_path / "m.safetensors", header, bytes(20))
    expect_error(path, "runs past the end of the file", "truncated")


def test_offsets_not_shape_times_size(tmp_path: Path) -> None:
    header = {"a": f32([3, 2], 0, 16)}
    path = raw_safetensors(tmp_path / "m.safetensors", header, bytes(16))
    expect_error(path, "tensor 'a'", "span 16 bytes", "needs 24")


def test_trailing_bytes(tmp_path: Path) -> None:
    path = raw_safetensors(
        tmp_path / "m.safetensors", {"a": f32([4], 0, 16)}, bytes(19)
    )
    expect_error(path, "3 trailing bytes")


def test_index_names_missing_shard(tmp_path: Path) -> None:
    save_file(
        {"a": np.zeros((4, 4), np.float32)}, str(tmp_path / "shard-1.safetensors")
    )
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {"a": "shard-1.safetensors", "b": "shard-2.safetensors"}
    index.write_text(json.dumps({"weight_map": weight_map}))
    expect_error(index, "weight_map['b']", "shard-2.safetensors", "missing")


def test_index_without_weight_map(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    expect_error(index, "weight_map is missing")


def test_truncated_torch_file(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(64, 64)}, whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    expect_error(cut, "truncated or not a torch file")


class Trainer:
    """A class the pickle names as a global, which weights_only loading rejects."""


def test_pickle_needing_globals(tmp_path: Path) -> None:
    path = tmp_path / "trainer.pt"
    torch.save({"w": torch.zeros(4, 4), "trainer": Trainer()}, path)
    error = expect_error(path, "needs globals", "Trainer", "not loaded")
    assert "weights_only" in str(error)


def test_pickle_with_argparse_namespace(tmp_path: Path) -> None:
    """Old training scripts saved their ``args``; loading them needs a global."""
    path = tmp_path / "args.pt"
    torch.save({"w": torch.zeros(4, 4), "args": argparse.Namespace(lr=0.1)}, path)
    expect_error(path, "needs globals", "argparse.Namespace")


EMPTY_ENTRY = b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"x":'
#: Headers that Python's json module accepts but the safetensors library does not
#: (or both reject), each with the data bytes that make the rest valid.
STRICT_JSON_CASES = {
    "nan": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":NaN}}', 4),
    "minus zero": (b'{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', 0),
    "float dim": (b'{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', 4),
    "duplicate field": (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"dtype":"F32"}}',
        4,
    ),
    "lone surrogate": (
        b'{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        4,
    ),
    "huge number": (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1e999}}',
        4,
    ),
    "metadata not strings": (b'{"__metadata__":{"step":1}}', 0),
    "overflowing shape": (
        b'{"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}',
        0,
    ),
    "bool dim": (b'{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', 4),
    "duplicate tensor": (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        4,
    ),
    "padded header": (b'  {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  ', 4),
    "null metadata": (b'{"__metadata__":null}', 0),
    "nested 127 deep": (EMPTY_ENTRY + b"[" * 125 + b"]" * 125 + b"}}", 0),
    "nested 128 deep": (EMPTY_ENTRY + b"[" * 126 + b"]" * 126 + b"}}", 0),
}


@pytest.mark.parametrize("case", sorted(STRICT_JSON_CASES))
def test_same_decision_as_safetensors(tmp_path: Path, case: str) -> None:
    header, size = STRICT_JSON_CASES[case]
    path = raw_safetensors(tmp_path / "m.safetensors", header, bytes(size))
    try:
        with safe_open(str(path), framework="numpy") as reference:
            list(reference.keys())
        accepted = True
    except Exception:  # noqa: BLE001  (the library raises several types)
        accepted = False
    if accepted:
        open_checkpoint(path)
    else:
        expect_error(path)


@pytest.fixture
def good_and_bad(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    good = tmp_path / "good.safetensors"
    save_file({"w": heavy_tailed_matrix(200, 100, rng).astype(np.float32)}, str(good))
    bad = raw_safetensors(
        tmp_path / "bad.safetensors", {"w": f32([4], 0, 16)}, bytes(10)
    )
    return good, bad


def test_plugin_bad_beside_good(
    pytester: pytest.Pytester, good_and_bad: tuple[Path, Path]
) -> None:  # noqa: E501
    good, bad = good_and_bad
    result = pytester.runpytest("--setol", str(bad), "--setol", str(good), "-rf")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1
    assert outcomes["passed"] + outcomes.get("warnings", 0) >= 2
    failure = [line for line in result.outlines if line.startswith("FAILED")]
    assert len(failure) == 1
    assert "bad.safetensors::model" in failure[0]
    result.stdout.fnmatch_lines(["*bad.safetensors*runs past the end of the file*"])


def test_cli_exit_code_two(
    good_and_bad: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = good_and_bad
    code = main(
        [
            "report",
            str(bad),
            str(good),
            "--format",
            "json",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == EXIT_USAGE
    document = json.loads(capsys.readouterr().out)
    first, second = document["checkpoints"]
    assert "runs past the end" in first["error"]
    assert [layer["name"] for layer in second["layers"]] == ["w"]
