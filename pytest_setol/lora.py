"""Read LoRA adapter folders: each ``lora_B @ lora_A`` pair is one update matrix.

An adapter folder contains ``adapter_config.json`` and ``adapter_model.safetensors``
(or ``adapter_model.bin``). A pair of factors ``A`` ``(r, in)`` and ``B``
``(out, r)`` is read as the update ``scale * B @ A`` named after the weight it
changes (``model.layers.0.self_attn.q_proj.weight``), with ``scale =
lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``). Its at most
``r`` non-zero eigenvalues come exactly from the factors.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .planner import LayerPlan
from .reader import Checkpoint, LowRank, TensorRef, natural_key, open_checkpoint
from .spectra import Spectrum, clean_eigenvalues

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
#: PEFT saves names under the wrapper ``base_model.model.``.
PEFT_PREFIX = "base_model.model."
_FACTOR = re.compile(
    r"^(?P<target>.+)\.lora_(?P<embedding>embedding_)?(?P<side>[AB])"
    r"(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$"
)


def read_adapter(folder: Path) -> Checkpoint:
    """Return the adapter's updates (and any other tensors it saves) as a checkpoint."""
    config_path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(config_path, f"is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(config_path, "is not a JSON object")
    weights = next(
        (folder / n for n in ADAPTER_WEIGHTS if (folder / n).is_file()), None
    )
    if weights is None:
        raise CheckpointError(
            folder, f"LoRA adapter folder has no {' or '.join(ADAPTER_WEIGHTS)}"
        )
    stored = open_checkpoint(weights)
    factors: dict[tuple[str, bool], dict[str, TensorRef]] = {}
    others: list[TensorRef] = []
    for tensor in stored.tensors:
        match = _FACTOR.match(tensor.name)
        if match is None:
            others.append(_renamed(tensor, _target_name(tensor.name)))
            continue
        key = (match["target"], bool(match["embedding"]))
        factors.setdefault(key, {})[match["side"]] = tensor
    refs = [
        _update_ref(weights, config_path, config, target, embedding, pair)
        for (target, embedding), pair in factors.items()
    ]
    tensors = sorted(refs + others, key=lambda tensor: natural_key(tensor.name))
    return Checkpoint(str(folder), "lora", tuple(tensors), {"adapter": weights.name})


def _target_name(name: str) -> str:
    return name.removeprefix(PEFT_PREFIX)


def _renamed(tensor: TensorRef, name: str) -> TensorRef:
    return TensorRef(
        name, tensor.shape, tensor.dtype, tensor.nbytes, tensor.read_rows,
        tensor.quantization, tensor.read_flat_rows, tensor.storage_key,
    )  # fmt: skip


def _update_ref(
    weights: Path,
    config_path: Path,
    config: dict[str, Any],
    target: str,
    embedding: bool,
    pair: dict[str, TensorRef],
) -> TensorRef:
    for side in "AB":
        if side not in pair:
            present = pair["B" if side == "A" else "A"].name
            raise CheckpointError(
                weights, f"tensor {present!r} has no matching lora_{side} factor"
            )
    a = pair["A"].read().astype(np.float64)
    b = pair["B"].read().astype(np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise CheckpointError(
            weights,
            f"tensors {pair['A'].name!r} {a.shape} and {pair['B'].name!r} {b.shape} "
            "are not factors of a matrix: expected A (r, in) and B (out, r); "
            "only Linear and Embedding LoRA layers are supported",
        )
    if embedding:
        # PEFT's embedding update is (B A)^T, of shape (num_embeddings, dim).
        a, b = b.T.copy(), a.T.copy()
    module = _target_name(target)
    name = f"{module}.weight"
    scale = _scale(config_path, config, module, a.shape[0])
    low_rank = LowRank(b, a, scale)

    def read_rows(start: int, stop: int) -> np.ndarray:
        return scale * (b[start:stop] @ a)

    shape = (int(b.shape[0]), int(a.shape[1]))
    nbytes = pair["A"].nbytes + pair["B"].nbytes
    return TensorRef(name, shape, "F64", nbytes, read_rows, low_rank=low_rank)


def _scale(config_path: Path, config: dict[str, Any], module: str, rank: int) -> float:
    """Return ``lora_alpha / r`` for ``module``, honouring ``alpha_pattern``."""
    alpha: Any = config.get("lora_alpha", config.get("r", rank))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = value
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise CheckpointError(config_path, f"lora_alpha: {alpha!r} is not a number")
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(rank)
    return float(alpha) / rank


def low_rank_spectrum(plan: LayerPlan) -> Spectrum:
    """Return the eigenvalues of ``scale * B @ A`` from QR factors of ``B`` and ``A^T``.

    ``B A = Q_B (R_B R_A^T) Q_A^T`` with orthonormal ``Q``, so the singular
    values of the ``r x r`` core are those of the update; the other
    ``M - r`` eigenvalues are zero.
    """
    low_rank = plan.tensor.low_rank
    assert low_rank is not None
    nonfinite = int(np.count_nonzero(~np.isfinite(low_rank.A)))
    nonfinite += int(np.count_nonzero(~np.isfinite(low_rank.B)))
    if nonfinite:
        return Spectrum(None, nonfinite)
    _, r_b = np.linalg.qr(low_rank.B)
    _, r_a = np.linalg.qr(low_rank.A.T)
    singular = np.linalg.svd(r_b @ r_a.T, compute_uv=False) * abs(low_rank.scale)
    values = np.zeros(plan.M)
    top = np.sort(singular**2)[-plan.M :]
    values[plan.M - top.size :] = top
    return Spectrum(clean_eigenvalues(values, plan.M) * plan.scale**2)
