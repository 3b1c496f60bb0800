#!/usr/bin/env bash
# GPU checks and GPU benchmarks in one bounded run (about 10 minutes on one H100/H200):
#   1. the CUDA tests (crop function, loader, DSA, grouped seeds, fast path);
#   2. profile: where a step's time goes (benchmarks/train.py --profile: the kernels' busy time
#      against the wall time, launches and synchronisations a step, the heaviest kernels), field
#      loop and library at 32 and 128 px, IPC 10, 5 seeds;
#   3. benchmarks/train.py: the field's loop against the library, ConvNetD3 at 32 px and
#      ConvNetD5 at 128 px, IPC 10 and 50, 5 seeds, the library's defaults and float32 (half the
#      epochs of the first H200 run, 150 and 50, so that 128 px IPC 50 fits the step; its
#      channels_last and one-seed-at-a-time rows, answered there, are left out);
#   4. architectures (only when named; measured on an H100 before): benchmarks/accuracy.py across
#      the five architectures at IPC 10 (paper preset, shorter);
#   5. torch.compile's rows (default mode, and reduce-overhead: CUDA graphs) at 128 px, then 32 px,
#      IPC 10, last of the default steps, since their compile time is the least predictable;
#   6. paper (only when named): the paper's full protocol (1,000 epochs, all 25 crops, width 128,
#      five architectures, IPC 10, 3 seeds), about 40 device-minutes, more than one session
#      holds, so it resumes: carry out/paper (the labeler and the JSON so far) and copy
#      $OUT/paper back there after each session.
# Each step has its own time limit (seconds, overridable) and writes as it goes, so a step cut
# short keeps its rows. Arguments name the steps to run (default: tests, profile, train and
# compile, in order: 590 s of limits, within one 600 s device command).
# Results go to $OUT (default ./out/gpu). Needs torch with CUDA and the package importable;
# Fashion-MNIST via LADD_DATA_DIR or the usual places.
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=" ${*:-tests profile train compile} "
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, say how it ended
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  [[ $STEPS == *" $name "* ]] || return 0
  echo "== $name (limit ${limit} s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start)) s"
  tail -n "${TAIL:-25}" "$OUT/$name.log"
}
python3 -c 'import torch, ladd_format; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
"| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version())' | tee "$OUT/device.txt"
step tests "${TESTS_SECONDS:-90}" python3 -m pytest -q -p no:cacheprovider -k "cuda or CUDA" \
  tests/test_sampler.py tests/test_loader.py tests/test_dsa.py tests/test_loader_compact.py tests/test_seeds.py tests/test_models.py
TAIL=12 step profile "${PROFILE_SECONDS:-90}" python3 benchmarks/train.py --device cuda --sizes 32,128 --ipc 10 \
  --seeds 5 --epochs 20,10 --crops 5,0 --test-images 1000 --pool 2000 --labeler-epochs 1 --profile 20 \
  --json "$OUT/profile.json" --out "$OUT/profile.md"
step train "${TRAIN_SECONDS:-230}" python3 benchmarks/train.py --device cuda --sizes 32,128 --ipc 10,50 --seeds 5 \
  --epochs 150,50 --crops 5,0 --test-images 5000 --variants default,fp32 \
  --json "$OUT/train.json" --out "$OUT/train.md"
TAIL=12 step architectures "${ARCH_SECONDS:-140}" python3 benchmarks/accuracy.py --ipc 10 --seeds 3 \
  --models convnet alexnet vgg11 resnet18 vit --epochs 300 --device cuda --quiet \
  --json "$OUT/architectures.json" --markdown "$OUT/architectures.md"
TAIL=10 step compile "${COMPILE_SECONDS:-180}" python3 benchmarks/train.py --device cuda --sizes 128,32 --ipc 10 \
  --seeds 5 --epochs 50,150 --crops 0 --test-images 5000 --variants default,compile,compile-graphs \
  --json "$OUT/compile.json" --out "$OUT/compile.md"
if [[ $STEPS == *" paper "* ]]; then mkdir -p "$OUT/paper"; [[ -d out/paper ]] && cp -r out/paper/. "$OUT/paper/"; fi
TAIL=12 step paper "${PAPER_SECONDS:-420}" python3 benchmarks/accuracy.py --preset paper --epochs 1000 --ipc 10 \
  --seeds 3 --models convnet alexnet vgg11 resnet18 vit --model-lr vgg11=0.005 --device cuda --quiet \
  --labeler-dir "$OUT/paper/labeler" --resume --json "$OUT/paper/architectures.json" \
  --markdown "$OUT/paper/architectures.md"
