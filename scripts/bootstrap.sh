#!/usr/bin/env bash
# Create .venv and install the project into it. Usage: scripts/bootstrap.sh [extra]
# torch: the CPU wheel pinned below is installed first unless torch is already importable, so a
# fresh machine does not pull a multi-gigabyte CUDA build; on a GPU machine install the CUDA
# torch you want first and this script keeps it (the package only asks for torch>=2.3).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
fi
spec="."
[ -n "$extra" ] && spec=".[$extra]"
$pip install --quiet --disable-pip-version-check -e "$spec"
