#!/usr/bin/env bash
# README command 2: the whole test suite, slow tests included, as CI runs it (sets itself up on first use).
# Extra arguments go to pytest; the quick loop is `scripts/test.sh -m "not slow"`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
