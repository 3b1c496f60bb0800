#!/usr/bin/env bash
# Set up (idempotent) and run the main job: `ladd demo` on Fashion-MNIST. Extra arguments go
# to `ladd demo` (e.g. --seeds 3, --full on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ladd demo "$@"
