#!/usr/bin/env bash
# Create benchmarks/.venv with WeightWatcher 0.7.7, the tool the benchmark
# compares against. It is never a dependency of pytest-setol.
#
# torch is installed first and pinned to the CPU build that the project uses,
# so that weightwatcher's own torch requirement is already met and pip pulls
# no CUDA build (several GB).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${BENCH_VENV:-$here/.venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet weightwatcher==0.7.7
"$venv/bin/python" -c "import weightwatcher, torch; print('weightwatcher', weightwatcher.__version__, 'torch', torch.__version__)"
