#!/usr/bin/env bash
# Set up (idempotent) and run the main job. Extra arguments go to the job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
.venv/bin/ladd example out/example.ladd --overwrite "$@"
.venv/bin/ladd inspect out/example.ladd
.venv/bin/ladd validate out/example.ladd
