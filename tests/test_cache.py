"""Spectra cache: reuse across runs, and never a stale spectrum."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pytest_setol import cache as cache_module
from pytest_setol.analysis import analyze
from pytest_setol.cache import SpectrumCache, checkpoint_identity
from pytest_setol.config import Config
from pytest_setol.planner import plan_layers
from pytest_setol.reader import open_checkpoint
from pytest_setol.spectra import layer_spectrum
from tests.conftest import heavy_tailed_matrix

#: Gap that lets the file system clock tick between two writes of one file.
CLOCK_TICK_SECONDS = 0.05


def layer_values(report, skip=("seconds",)) -> list[dict]:
    """Return the layer entries of a one-checkpoint report without timings."""
    layers = report.to_dict()["checkpoints"][0]["layers"]
    return [{k: v for k, v in layer.items() if k not in skip} for layer in layers]


def write_model(make_checkpoint, seed: int, name: str = "model.safetensors") -> Path:
    rng = np.random.default_rng(seed)
    return make_checkpoint(
        {
            "a.weight": heavy_tailed_matrix(300, 120, rng).astype(np.float32),
            "b.weight": heavy_tailed_matrix(90, 200, rng).astype(np.float32),
        },
        name,
    )


def entries(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.npy"))


def plant(directory: Path, path: Path, name: str, values: np.ndarray) -> None:
    """Overwrite the cache entry of tensor ``name`` with ``values``."""
    checkpoint = open_checkpoint(path)
    plan = next(p for p in plan_layers(checkpoint, Config()).layers if p.name == name)
    cache = SpectrumCache(directory)
    key = cache.key(plan, checkpoint_identity(checkpoint), "cpu")
    np.save(cache.path(key), values)


@pytest.fixture
def old_files_trusted(monkeypatch):
    """Trust file identity at once, as it is for files older than RACY_SECONDS."""
    monkeypatch.setattr(cache_module, "RACY_SECONDS", 0.0)


def test_second_run_reads_cache(make_checkpoint, tmp_path):
    path = write_model(make_checkpoint, 0)
    directory = tmp_path / "cache"
    first = analyze(path, device="cpu", cache_dir=directory)
    assert len(entries(directory)) == 2
    second = analyze(path, device="cpu", cache_dir=directory)
    assert layer_values(second) == layer_values(first)
    assert len(entries(directory)) == 2


def test_cached_values_are_what_is_served(make_checkpoint, tmp_path):
    # Planting other values under the key proves the second run reads them.
    path = write_model(make_checkpoint, 1)
    directory = tmp_path / "cache"
    analyze(path, device="cpu", cache_dir=directory)
    planted = np.sort(np.random.default_rng(5).pareto(1.5, 120) + 1.0)
    plant(directory, path, "a.weight", planted)
    report = analyze(path, device="cpu", cache_dir=directory)
    layer = report.checkpoints[0].layers[0]
    assert layer.name == "a.weight"
    assert layer.lambda_max == pytest.approx(planted.max(), rel=1e-12)


def test_rewritten_file_not_served(make_checkpoint, tmp_path):
    # Same path, shape and size, new values, written at once: the racy case.
    directory = tmp_path / "cache"
    path = write_model(make_checkpoint, 2)
    analyze(path, device="cpu", cache_dir=directory)
    write_model(make_checkpoint, 3)
    cached = analyze(path, device="cpu", cache_dir=directory)
    fresh = analyze(path, device="cpu")
    assert layer_values(cached) == layer_values(fresh)


def test_rewritten_old_file_not_served(make_checkpoint, tmp_path, old_files_trusted):
    directory = tmp_path / "cache"
    path = write_model(make_checkpoint, 4)
    assert checkpoint_identity(open_checkpoint(path)) is not None
    analyze(path, device="cpu", cache_dir=directory)
    time.sleep(CLOCK_TICK_SECONDS)
    write_model(make_checkpoint, 5)
    cached = analyze(path, device="cpu", cache_dir=directory)
    fresh = analyze(path, device="cpu")
    assert layer_values(cached) == layer_values(fresh)


def test_replaced_file_with_old_mtime_not_served(
    make_checkpoint, tmp_path, old_files_trusted
):
    # cp -p style: another file of the same size moved in with the old mtime.
    directory = tmp_path / "cache"
    path = write_model(make_checkpoint, 6)
    stat = path.stat()
    analyze(path, device="cpu", cache_dir=directory)
    other = write_model(make_checkpoint, 7, "other.safetensors")
    time.sleep(CLOCK_TICK_SECONDS)
    os.replace(other, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert path.stat().st_size == stat.st_size
    cached = analyze(path, device="cpu", cache_dir=directory)
    fresh = analyze(path, device="cpu")
    assert layer_values(cached) == layer_values(fresh)


def test_recent_file_identified_by_content(make_checkpoint):
    path = write_model(make_checkpoint, 8)
    assert checkpoint_identity(open_checkpoint(path)) is None


def test_folder_identified_by_content(make_checkpoint, old_files_trusted):
    path = write_model(make_checkpoint, 9, "folder/model.safetensors")
    checkpoint = open_checkpoint(path.parent)
    assert checkpoint_identity(checkpoint) is None


def test_content_key_follows_values(make_checkpoint, tmp_path):
    first = write_model(make_checkpoint, 10, "one.safetensors")
    second = write_model(make_checkpoint, 11, "two.safetensors")
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(first.read_bytes())
    cache = SpectrumCache(tmp_path / "cache")

    def key(path: Path) -> str:
        checkpoint = open_checkpoint(path)
        plan = plan_layers(checkpoint, Config()).layers[0]
        return cache.key(plan, checkpoint_identity(checkpoint), "cpu")

    assert key(first) == key(copy)
    assert key(first) != key(second)


def test_key_covers_settings(make_checkpoint, tmp_path, monkeypatch):
    path = write_model(make_checkpoint, 12)
    checkpoint = open_checkpoint(path)
    plan = plan_layers(checkpoint, Config()).layers[0]
    cache = SpectrumCache(tmp_path / "cache")
    identity = checkpoint_identity(checkpoint)
    base = cache.key(plan, identity, "cpu")
    assert cache.key(plan, identity, "cuda:0") != base
    assert cache.key(plan, identity, "cuda:1") == cache.key(plan, identity, "cuda:0")
    monkeypatch.setattr(cache_module, "BLOCK_BYTES", 1024)
    assert cache.key(plan, identity, "cpu") != base
    monkeypatch.undo()
    monkeypatch.setattr(cache_module, "CACHE_VERSION", cache_module.CACHE_VERSION + 1)
    assert cache.key(plan, identity, "cpu") != base


def test_changed_conv_scale_not_served(make_checkpoint, tmp_path, monkeypatch):
    rng = np.random.default_rng(13)
    kernel = rng.standard_t(3.0, size=(64, 32, 3, 3)).astype(np.float32)
    path = make_checkpoint({"conv.weight": kernel})
    directory = tmp_path / "cache"
    analyze(path, device="cpu", cache_dir=directory)
    from pytest_setol import planner

    monkeypatch.setattr(planner, "CONV_SLICE_SCALE", 0.25)
    cached = analyze(path, device="cpu", cache_dir=directory)
    fresh = analyze(path, device="cpu")
    assert layer_values(cached) == layer_values(fresh)


def test_fit_options_not_cached(make_checkpoint, tmp_path):
    # Only spectra are cached: another xmin strategy refits the cached spectrum.
    path = write_model(make_checkpoint, 14)
    directory = tmp_path / "cache"
    analyze(path, device="cpu", cache_dir=directory)
    cached = analyze(path, device="cpu", cache_dir=directory, xmin_strategy="median")
    fresh = analyze(path, device="cpu", xmin_strategy="median")
    assert layer_values(cached) == layer_values(fresh)


def test_corrupt_entry_recomputed(make_checkpoint, tmp_path):
    path = write_model(make_checkpoint, 15)
    directory = tmp_path / "cache"
    first = analyze(path, device="cpu", cache_dir=directory)
    for entry in entries(directory):
        entry.write_bytes(entry.read_bytes()[:40])
    second = analyze(path, device="cpu", cache_dir=directory)
    assert layer_values(second) == layer_values(first)


def test_wrong_length_entry_recomputed(make_checkpoint, tmp_path):
    path = write_model(make_checkpoint, 16)
    directory = tmp_path / "cache"
    first = analyze(path, device="cpu", cache_dir=directory)
    plant(directory, path, "a.weight", np.ones(7))
    second = analyze(path, device="cpu", cache_dir=directory)
    assert layer_values(second) == layer_values(first)


def test_invalid_layer_cached_as_invalid(make_checkpoint, tmp_path):
    rng = np.random.default_rng(17)
    weights = heavy_tailed_matrix(200, 80, rng)
    weights[3, 4] = np.nan
    path = make_checkpoint({"bad.weight": weights})
    directory = tmp_path / "cache"
    analyze(path, device="cpu", cache_dir=directory)
    report = analyze(path, device="cpu", cache_dir=directory)
    layer = report.checkpoints[0].layers[0]
    assert layer.status == "invalid"
    assert layer.reason == "1 NaN or Inf entries"


def test_cached_spectrum_equals_computed(make_checkpoint, tmp_path):
    path = write_model(make_checkpoint, 18)
    checkpoint = open_checkpoint(path)
    plans = plan_layers(checkpoint, Config()).layers
    cache = SpectrumCache(tmp_path / "cache")
    cache.spectra(checkpoint, plans, "cpu")
    loaded = cache.spectra(checkpoint, plans, "cpu")
    for plan, spectrum in zip(plans, loaded, strict=True):
        assert np.array_equal(spectrum.eigenvalues, layer_spectrum(plan).eigenvalues)


def test_unwritable_cache_dir_names_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(Exception, match="cannot create the spectra cache directory"):
        SpectrumCache(blocker / "cache")


def run_cli(*args: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_setol.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_cli_cache_dir_and_no_cache(make_checkpoint, tmp_path):
    path = str(write_model(make_checkpoint, 19))
    directory = tmp_path / "cli-cache"
    default = tmp_path / "default-cache"
    env = {"SETOL_CACHE_DIR": str(default)}
    run_cli("report", "--format", "json", "--no-cache", path, env=env)
    assert not default.exists()
    assert not directory.exists()
    run_cli("report", "--format", "json", "--cache-dir", str(directory), path, env=env)
    assert len(entries(directory)) == 2
    run_cli("report", "--format", "json", path, env=env)
    assert len(entries(default)) == 2


def test_cli_settings_omit_cache_dir(make_checkpoint, tmp_path):
    path = str(write_model(make_checkpoint, 20))
    document = run_cli("report", "--format", "json", "--cache-dir", str(tmp_path), path)
    assert "cache_dir" not in document["settings"]


def model_in(pytester, make_checkpoint, seed: int) -> Path:
    """Return a generated checkpoint copied into the pytester run's root folder."""
    target = pytester.path / "model.safetensors"
    shutil.copyfile(write_model(make_checkpoint, seed), target)
    return target


@pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")
def test_plugin_uses_pytest_cache(pytester, make_checkpoint):
    path = model_in(pytester, make_checkpoint, 21)
    result = pytester.runpytest("--setol", str(path), "-v")
    result.stdout.fnmatch_lines(["setol: device cpu, float64; spectra cache *setol"])
    assert len(entries(pytester.path / ".pytest_cache" / "d" / "setol")) == 2


@pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")
def test_plugin_without_cacheprovider(pytester, make_checkpoint):
    path = model_in(pytester, make_checkpoint, 22)
    result = pytester.runpytest("--setol", str(path), "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["setol: device cpu, float64; spectra cache off"])
    assert not (pytester.path / ".pytest_cache").exists()


@pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")
def test_plugin_cache_dir_without_cacheprovider(pytester, make_checkpoint, tmp_path):
    path = model_in(pytester, make_checkpoint, 23)
    directory = tmp_path / "plugin-cache"
    pytester.runpytest(
        "--setol",
        str(path),
        "-p",
        "no:cacheprovider",
        "--setol-cache-dir",
        str(directory),
    )
    assert len(entries(directory)) == 2


@pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")
def test_plugin_no_cache(pytester, make_checkpoint):
    path = model_in(pytester, make_checkpoint, 24)
    result = pytester.runpytest("--setol", str(path), "--setol-no-cache")
    result.stdout.fnmatch_lines(["setol: device cpu, float64; spectra cache off"])
    assert not (pytester.path / ".pytest_cache" / "d" / "setol").exists()
