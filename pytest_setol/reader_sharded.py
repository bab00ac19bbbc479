"""Read sharded checkpoints and model folders as one checkpoint.

A shard index (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``)
maps each tensor name to the shard file that contains it. A folder is read through
its index, its single weights file, or all of its shards; a folder with an
``adapter_config.json`` is a LoRA adapter. Tensors are reported in natural-sort
order of their names across shards, never in shard order.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CheckpointError
from .reader import TORCH_SUFFIXES, Checkpoint, TensorRef, natural_key, open_checkpoint

#: Files a Hugging Face model folder is read from, in order of preference.
_PREFERRED = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
_NO_WEIGHTS = (
    "contains no weights: expected model.safetensors, a *.safetensors.index.json, "
    "pytorch_model.bin, a torch file or a .gguf file"
)


def read_index(path: Path) -> Checkpoint:
    """Open every shard that ``path``'s ``weight_map`` names and merge their tensors."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"index is not valid JSON: {exc}") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            path, "weight_map is missing or empty; a shard index maps tensor names "
            "to shard files under the key weight_map"
        )  # fmt: skip
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(
                path, f"weight_map[{name!r}]: shard {shard!r} is not a file name"
            )
        by_shard.setdefault(shard, []).append(name)
    tensors: list[TensorRef] = []
    formats = set()
    for shard in sorted(by_shard, key=natural_key):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(
                path,
                f"weight_map[{by_shard[shard][0]!r}] names shard {shard!r}, which "
                f"is missing from {path.parent}; download every shard the index "
                "lists",
            )
        checkpoint = open_checkpoint(shard_path)
        formats.add(checkpoint.format)
        found = {tensor.name: tensor for tensor in checkpoint.tensors}
        for name in by_shard[shard]:
            if name not in found:
                raise CheckpointError(
                    path,
                    f"weight_map[{name!r}] names shard {shard!r}, which has no "
                    "tensor of that name",
                )
            tensors.append(found[name])
    tensors.sort(key=lambda tensor: natural_key(tensor.name))
    kind = formats.pop() if len(formats) == 1 else "mixed"
    metadata = index.get("metadata")
    metadata = (
        {k: str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    )
    return Checkpoint(str(path), f"{kind}-sharded", tuple(tensors), metadata)


def read_folder(path: Path) -> Checkpoint:
    """Open a Hugging Face model folder, a LoRA adapter, or a folder of one file."""
    if (path / "adapter_config.json").is_file():
        from .lora import read_adapter

        return read_adapter(path)
    for name in _PREFERRED:
        if (path / name).is_file():
            return _renamed(open_checkpoint(path / name), path)
    files = sorted(
        (f for f in path.iterdir() if f.is_file()), key=lambda f: natural_key(f.name)
    )
    groups = (
        [f for f in files if f.name.endswith(".index.json")],
        [f for f in files if f.suffix == ".safetensors"],
        [f for f in files if f.suffix in TORCH_SUFFIXES],
        [f for f in files if f.suffix == ".gguf"],
    )
    for index, group in enumerate(groups):
        if not group:
            continue
        if index == 0 and len(group) > 1:
            raise CheckpointError(
                path,
                f"holds {len(group)} shard indexes "
                f"({', '.join(f.name for f in group)}); give the path of one of them",
            )
        if len(group) == 1:
            return _renamed(open_checkpoint(group[0]), path)
        return _merge_shards(path, group)
    raise CheckpointError(path, _NO_WEIGHTS)


def _merge_shards(folder: Path, files: list[Path]) -> Checkpoint:
    """Merge shards that have no index; a name found in two shards is an error."""
    owner: dict[str, Path] = {}
    tensors: list[TensorRef] = []
    formats = set()
    for file in files:
        checkpoint = open_checkpoint(file)
        formats.add(checkpoint.format)
        for tensor in checkpoint.tensors:
            if tensor.name in owner:
                raise CheckpointError(
                    folder,
                    f"tensor {tensor.name!r} is in both {owner[tensor.name].name} and "
                    f"{file.name}; give the path of one file",
                )
            owner[tensor.name] = file
            tensors.append(tensor)
    tensors.sort(key=lambda tensor: natural_key(tensor.name))
    kind = formats.pop() if len(formats) == 1 else "mixed"
    return Checkpoint(str(folder), f"{kind}-sharded", tuple(tensors))


def _renamed(checkpoint: Checkpoint, folder: Path) -> Checkpoint:
    """Report a folder's checkpoint under the folder path the user gave."""
    return Checkpoint(
        str(folder), checkpoint.format, checkpoint.tensors, checkpoint.metadata
    )
