"""CUDA path: checks against the float64 CPU path where CUDA exists, skips elsewhere.

The CPU-only checks here run everywhere: the CPU path never imports torch,
and asking for CUDA without it is a usage error that names the fix.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pytest_setol.config import Config
from pytest_setol.errors import SetolError
from pytest_setol.gpu import batch_capacity, resolve_device
from pytest_setol.planner import plan_layers
from pytest_setol.powerlaw import fit_power_law
from pytest_setol.reader import open_checkpoint
from pytest_setol.spectra import layer_spectra
from tests.conftest import heavy_tailed_matrix

#: The GPU and CPU solve the same float64 Gram matrix by different
#: algorithms; alpha agrees to this relative tolerance.
ALPHA_RTOL = 1e-6
#: Eigenvalues agree to a few ulps of lambda_max.
EIGENVALUE_ATOL = 1e-10


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA device")


def test_cpu_path_imports_no_torch(make_checkpoint):
    rng = np.random.default_rng(0)
    path = make_checkpoint({"w.weight": heavy_tailed_matrix(200, 80, rng)})
    code = textwrap.dedent(
        f"""
        import contextlib, io, sys
        from pytest_setol.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["report", "--format", "json", "--no-cache", {str(path)!r}])
        print(sorted(m for m in ("torch", "scipy") if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.skipif(cuda_available(), reason="checks the machine without CUDA")
def test_cuda_without_device_is_error():
    with pytest.raises(SetolError, match="cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(cuda_available(), reason="checks the machine without CUDA")
def test_plugin_cuda_without_device_is_usage_error(pytester, make_checkpoint):
    rng = np.random.default_rng(1)
    path = make_checkpoint({"w.weight": heavy_tailed_matrix(200, 80, rng)})
    result = pytester.runpytest("--setol", str(path), "--setol-device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--setol-device*cuda*"])


def test_malformed_device_rejected():
    with pytest.raises(SetolError, match="expected auto, cpu or cuda"):
        resolve_device("cuda:first")


def test_batch_capacity_fits_free_memory():
    # 8 GiB free, half usable, 32 bytes per element of a 4096 x 4096 matrix.
    assert batch_capacity(4096, 8 * 2**30) == 8
    assert batch_capacity(65536, 2**30) == 1


@pytest.fixture
def gpu_checkpoint(make_checkpoint):
    rng = np.random.default_rng(2)
    tensors = {}
    for index in range(4):
        tensors[f"block.{index}.up.weight"] = heavy_tailed_matrix(768, 256, rng)
        tensors[f"block.{index}.down.weight"] = heavy_tailed_matrix(256, 768, rng)
    tensors["conv.weight"] = rng.standard_t(3.0, size=(96, 48, 3, 3))
    tensors["embed.weight"] = heavy_tailed_matrix(5000, 64, rng).astype(np.float32)
    return make_checkpoint(tensors)


@needs_cuda
def test_cuda_matches_cpu(gpu_checkpoint):
    plans = plan_layers(open_checkpoint(gpu_checkpoint), Config()).layers
    on_cpu = layer_spectra(plans, "cpu")
    on_gpu = layer_spectra(plans, "cuda:0")
    for plan, cpu, gpu in zip(plans, on_cpu, on_gpu, strict=True):
        scale = cpu.eigenvalues[-1]
        np.testing.assert_allclose(
            gpu.eigenvalues, cpu.eigenvalues, rtol=0, atol=EIGENVALUE_ATOL * scale
        )
        alpha_cpu = fit_power_law(cpu.eigenvalues).alpha
        alpha_gpu = fit_power_law(gpu.eigenvalues).alpha
        assert alpha_gpu == pytest.approx(alpha_cpu, rel=ALPHA_RTOL), plan.name


@needs_cuda
def test_cuda_batches_equal_single_layers(gpu_checkpoint):
    plans = plan_layers(open_checkpoint(gpu_checkpoint), Config()).layers
    batched = layer_spectra(plans, "cuda:0")
    for plan, spectrum in zip(plans, batched, strict=True):
        (alone,) = layer_spectra([plan], "cuda:0")
        np.testing.assert_allclose(
            spectrum.eigenvalues,
            alone.eigenvalues,
            rtol=0,
            atol=EIGENVALUE_ATOL * alone.eigenvalues[-1],
        )


@needs_cuda
def test_cuda_counts_nonfinite(make_checkpoint):
    rng = np.random.default_rng(3)
    bad = heavy_tailed_matrix(300, 100, rng)
    bad[0, 0] = np.nan
    path = make_checkpoint({"bad.weight": bad})
    plans = plan_layers(open_checkpoint(path), Config()).layers
    (spectrum,) = layer_spectra(plans, "cuda:0")
    assert spectrum.eigenvalues is None
    assert spectrum.nonfinite == 1


@needs_cuda
def test_cuda_device_in_report_header(pytester, make_checkpoint):
    rng = np.random.default_rng(4)
    path = make_checkpoint({"w.weight": heavy_tailed_matrix(400, 200, rng)})
    result = pytester.runpytest("--setol", str(path), "--setol-device", "cuda")
    result.stdout.fnmatch_lines(["setol: device cuda:0, float64*"])
