"""CUDA eigenvalues through torch, in float64, for ``--setol-device cuda``.

torch is imported only when a CUDA device is requested or detected, so the
CPU path never pays for it. Gram matrices are accumulated on the GPU in
float64 and solved in batches of equal order, each batch sized to the free
GPU memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SetolError
from .planner import LayerPlan
from .spectra import BLOCK_BYTES, Spectrum, count_nonfinite, pooled_spectrum

#: Share of the free GPU memory that one batch of Gram matrices may take.
MEMORY_FRACTION = 0.5
#: GPU bytes per Gram element while a batch is solved: the float64 matrix, the
#: solver's copy of it, and its workspace (an estimate with room to spare).
SOLVE_BYTES_PER_ELEMENT = 32


def nvidia_driver_present() -> bool:
    """Return True when an NVIDIA kernel driver is loaded (checked without torch)."""
    return Path("/proc/driver/nvidia/version").exists()


def resolve_device(requested: str) -> str:
    """Turn ``auto``, ``cpu`` or ``cuda[:N]`` into the device the analysis uses."""
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        if not nvidia_driver_present():
            return "cpu"
        try:
            import torch
        except ImportError:
            return "cpu"
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    suffix = requested.partition(":")[2]
    if requested == "cuda" or (requested.startswith("cuda:") and suffix.isdigit()):
        try:
            import torch
        except ImportError as exc:
            raise SetolError(
                f"device {requested!r} needs torch; install pytest-setol[torch]"
            ) from exc
        if not torch.cuda.is_available():
            raise SetolError(
                f"device {requested!r} requested but torch finds no CUDA device; "
                "use --setol-device cpu"
            )
        index = int(suffix or 0)
        if index >= torch.cuda.device_count():
            raise SetolError(
                f"device {requested!r} requested but only "
                f"{torch.cuda.device_count()} CUDA devices exist"
            )
        return f"cuda:{index}"
    raise SetolError(f"unknown device {requested!r}; expected auto, cpu or cuda[:N]")


def batch_capacity(m: int, free_bytes: int) -> int:
    """Return how many ``m x m`` Gram matrices one batch may solve (at least 1)."""
    per_matrix = m * m * SOLVE_BYTES_PER_ELEMENT
    return max(1, int(free_bytes * MEMORY_FRACTION) // per_matrix)


def layer_spectra_cuda(plans: Sequence[LayerPlan], device: str) -> list[Spectrum]:
    """Compute the spectra of ``plans`` on ``device``, in the order given.

    Layers are visited by Gram order, so equal orders from anywhere in the
    checkpoint share batches.
    """
    import torch

    results: list[Spectrum | None] = [None] * len(plans)
    batch = _Batch(device)
    for index in sorted(range(len(plans)), key=lambda i: plans[i].M):
        plan = plans[index]
        start = time.perf_counter()
        grams = _grams(plan, device, torch)
        seconds = time.perf_counter() - start
        if isinstance(grams, int):
            results[index] = Spectrum(None, grams, seconds)
            continue
        if not batch.accepts(plan.M, grams.shape[0], torch):
            batch.solve(plans, results, torch)
        batch.add(index, grams, seconds)
    batch.solve(plans, results, torch)
    return [spectrum for spectrum in results if spectrum is not None]


class _Batch:
    """Gram matrices of one order waiting on the GPU for one batched solve."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.members: list[tuple[int, Any, float]] = []
        self.m = 0
        self.count = 0
        self.capacity = 0

    def accepts(self, m: int, count: int, torch: Any) -> bool:
        if not self.members:
            free, _total = torch.cuda.mem_get_info(self.device)
            self.m, self.capacity = m, batch_capacity(m, free)
            return True
        return m == self.m and self.count + count <= self.capacity

    def add(self, index: int, grams: Any, seconds: float) -> None:
        self.members.append((index, grams, seconds))
        self.count += grams.shape[0]

    def solve(
        self, plans: Sequence[LayerPlan], results: list[Spectrum | None], torch: Any
    ) -> None:
        if not self.members:
            return
        start = time.perf_counter()
        stacked = torch.cat([grams for _, grams, _ in self.members])
        values = torch.linalg.eigvalsh(stacked).cpu().numpy()
        share = (time.perf_counter() - start) / stacked.shape[0]
        offset = 0
        for index, grams, seconds in self.members:
            count = grams.shape[0]
            layer_values = values[offset : offset + count]
            offset += count
            results[index] = pooled_spectrum(
                plans[index], layer_values, seconds + share * count
            )
        self.members, self.count = [], 0


def _to_device(array: np.ndarray, device: str, torch: Any) -> Any:
    """Copy ``array`` to ``device`` as float64, sent as float32 unless it is float64.

    float32 represents every float16, bfloat16 and float8 value exactly, and sends
    half the bytes.
    """
    sent = np.float64 if array.dtype == np.float64 else np.float32
    # torch warns about read-only arrays, such as those read from a file.
    host = torch.from_numpy(np.require(array, dtype=sent, requirements=["C", "W"]))
    return host.to(device).to(torch.float64)


def _grams(plan: LayerPlan, device: str, torch: Any) -> Any | int:
    """Return the Gram matrices ``(slices, M, M)`` of ``plan`` on the GPU, scaled.

    Returns the count of NaN and Inf entries instead when the tensor has any.
    """
    if plan.slices > 1:
        kernel = _to_device(plan.tensor.read(), device, torch)
        nonfinite = int((~torch.isfinite(kernel)).sum())
        if nonfinite:
            return nonfinite
        slices = kernel.reshape(plan.rows, plan.cols, plan.slices).permute(2, 0, 1)
        slices = slices * plan.scale
        if plan.rows >= plan.cols:
            return slices.transpose(1, 2) @ slices
        return slices @ slices.transpose(1, 2)
    gram = torch.zeros((plan.M, plan.M), dtype=torch.float64, device=device)
    if plan.rows >= plan.cols:
        for block in plan.tensor.row_blocks(BLOCK_BYTES):
            rows = _to_device(block.reshape(block.shape[0], plan.cols), device, torch)
            gram += rows.T @ rows
    else:
        stored = plan.tensor.read().reshape(plan.rows, plan.cols)
        step = max(1, BLOCK_BYTES // max(1, plan.rows * 8))
        for start in range(0, plan.cols, step):
            columns = _to_device(stored[:, start : start + step], device, torch)
            gram += columns @ columns.T
    if not bool(torch.isfinite(gram.diagonal()).all()):
        return count_nonfinite(plan)
    return (gram * plan.scale**2).unsqueeze(0)
