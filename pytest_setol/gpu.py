"""CUDA eigenvalues through torch, in float64, for ``--setol-device cuda``.

Only imported when a CUDA device is requested or detected, so the CPU path
never pays for importing torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SetolError
from .planner import LayerPlan
from .spectra import BLOCK_BYTES, Spectrum, clean_eigenvalues


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
    if requested == "cuda" or requested.startswith("cuda:"):
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
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise SetolError(
                f"device {requested!r} requested but only "
                f"{torch.cuda.device_count()} CUDA devices exist"
            )
        return f"cuda:{index}"
    raise SetolError(f"unknown device {requested!r}; expected auto, cpu or cuda[:N]")


def layer_spectrum_cuda(plan: LayerPlan, device: str) -> Spectrum:
    """Accumulate the Gram matrix on the GPU in float64 and solve it there."""
    import torch

    gram = torch.zeros((plan.M, plan.M), dtype=torch.float64, device=device)
    if plan.slices > 1:
        kernel = torch.from_numpy(plan.tensor.read().astype(np.float64)).to(device)
        nonfinite = int((~torch.isfinite(kernel)).sum())
        if nonfinite:
            return Spectrum(None, nonfinite)
        slices = kernel.reshape(plan.rows, plan.cols, plan.slices).permute(2, 0, 1)
        slices = slices * plan.scale
        if plan.rows >= plan.cols:
            grams = slices.transpose(1, 2) @ slices
        else:
            grams = slices @ slices.transpose(1, 2)
        values = torch.linalg.eigvalsh(grams).cpu().numpy()
        pooled = [clean_eigenvalues(v, plan.M) for v in values]
        return Spectrum(np.sort(np.concatenate(pooled)))
    nonfinite = 0
    if plan.rows >= plan.cols:
        for block in plan.tensor.row_blocks(BLOCK_BYTES):
            rows = torch.from_numpy(
                block.reshape(block.shape[0], plan.cols).astype(np.float64)
            ).to(device)
            nonfinite += int((~torch.isfinite(rows)).sum())
            gram += rows.T @ rows
    else:
        stored = torch.from_numpy(
            plan.tensor.read().reshape(plan.rows, plan.cols).astype(np.float64)
        ).to(device)
        nonfinite = int((~torch.isfinite(stored)).sum())
        gram += stored @ stored.T
    if nonfinite:
        return Spectrum(None, nonfinite)
    values = torch.linalg.eigvalsh(gram).cpu().numpy()
    return Spectrum(clean_eigenvalues(values, plan.M) * plan.scale**2)
