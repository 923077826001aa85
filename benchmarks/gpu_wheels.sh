#!/usr/bin/env bash
# Download, here, the wheels that benchmarks/gpu_suite.sh needs on the lent GPU machine (Python 3.12 with
# torch, lightning, torchmetrics, scipy, opencv, timm already installed; nothing can be fetched there).
# They land in .whl/ (git-ignored); the device call names .whl in its carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
# Same versions as this project's environment; --no-deps, so every missing dependency is named.
PACKAGES=(
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
  omegaconf==2.4.0
  typing_extensions==4.16.0
)
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${PACKAGES[@]}"
du -sh .whl
