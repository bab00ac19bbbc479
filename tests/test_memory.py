"""Reading streams: linting a sharded checkpoint keeps about one tensor in memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

#: Peak resident memory while linting, above the memory just before, may be at
#: most this multiple of the largest tensor's stored size.
PEAK_FACTOR = 3.0
COLS = 512
#: An embedding of 48,000 x 512 float32 (98 MB), the largest tensor.
EMBEDDING_ROWS = 48_000
#: Eighteen 8,192 x 512 float32 matrices (17 MB each) beside it: the whole
#: checkpoint (400 MB) exceeds the bound, so a reader that held it would fail.
LAYER_ROWS, LAYERS = 8_192, 18

# Runs in a fresh interpreter, so nothing the test process allocated counts.
# VmHWM (the peak) is reset through /proc/self/clear_refs right before reading.
_MEASURE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from pytest_setol import analyze

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    # Load every lazy import and BLAS buffer on a small matrix first.
    warm = {"w": np.random.default_rng(0).standard_normal((600, 300))}
    analyze(warm, device="cpu")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = status("VmRSS:")
    report = analyze(sys.argv[1], device="cpu")
    peak = status("VmHWM:")
    layers = [layer.name for layer in report.checkpoints[0].layers]
    print(json.dumps({"before": before, "peak": peak, "layers": layers}))
    """
)


def write_sharded(folder: Path) -> int:
    """Write three shards with an index; return the largest tensor's stored bytes."""
    rng = np.random.default_rng(21)
    folder.mkdir()
    weight_map = {}
    embedding = rng.standard_normal((EMBEDDING_ROWS, COLS), dtype=np.float32)
    shards: list[dict[str, np.ndarray]] = [{"embed_tokens.weight": embedding}, {}, {}]
    for index in range(LAYERS):
        matrix = rng.standard_t(3, size=(LAYER_ROWS, COLS)).astype(np.float32)
        shards[(index % 3)][f"layers.{index}.weight"] = matrix
    for number, tensors in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-00003.safetensors"
        save_file(tensors, str(folder / name))
        weight_map.update(dict.fromkeys(tensors, name))
    index = {"weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return embedding.nbytes


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read peaks"
)
def test_peak_memory_bounded_by_largest_tensor(tmp_path: Path) -> None:
    largest = write_sharded(tmp_path / "model")
    total = sum(f.stat().st_size for f in (tmp_path / "model").iterdir())
    assert total > PEAK_FACTOR * largest  # holding it all would break the bound
    completed = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "model")],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(completed.stdout)
    assert measured["layers"][0] == "embed_tokens.weight"
    assert len(measured["layers"]) == LAYERS + 1
    growth = measured["peak"] - measured["before"]
    assert growth < PEAK_FACTOR * largest, (
        f"peak grew by {growth / 1e6:.0f} MB while the largest tensor stores "
        f"{largest / 1e6:.0f} MB"
    )
