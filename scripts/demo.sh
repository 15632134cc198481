#!/usr/bin/env bash
# README command 1: the classic four techniques on the embedded default (offline).
# Extra arguments are Hydra overrides, e.g. `bash scripts/demo.sh image=chelsea`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec python run.py 'method=[vanilla_backprop,guided_backprop,gradcam,guided_gradcam]' "$@"
