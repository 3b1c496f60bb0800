#!/usr/bin/env bash
# GPU checks and GPU benchmarks in one short run: the CUDA tests of the crop function, loader
# and trainer, the loader benchmark at 128 px, and the accuracy benchmark. Results go to $OUT
# (default ./out/gpu). Needs torch with CUDA and the package importable; Fashion-MNIST via
# LADD_DATA_DIR or the usual places.
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c 'import torch; print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)' | tee "$OUT/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_sampler.py tests/test_loader.py tests/test_dsa.py \
  tests/test_pipeline.py tests/test_models.py 2>&1 | tee "$OUT/tests.log" | tail -3
python3 benchmarks/loader.py --size 128 --images 256 --device cuda --json "$OUT/loader.json" 2>&1 | tee "$OUT/loader.log"
timeout "${ACCURACY_SECONDS:-330}" python3 benchmarks/accuracy.py --ipc 1 10 50 --seeds 3 --epochs 300 \
  --device cuda --quiet --json "$OUT/accuracy.json" --markdown "$OUT/accuracy.md" 2>&1 | tee "$OUT/accuracy.log"
