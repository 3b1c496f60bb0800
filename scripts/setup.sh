#!/usr/bin/env bash
# Idempotent set-up on Debian/Ubuntu with Python >= 3.11: a virtual environment in .venv with
# torch (CPU build pinned first, so nothing pulls a multi-GB CUDA build), ladd_format with its
# test extras, and the Fashion-MNIST data (apt as root, else `apt-get download` + `dpkg -x`).
# Environment: PYTHON (interpreter), TORCH_SPEC (default torch==2.13.0), LADD_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi; }

pick_python() {
  for py in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(pick_python) || { echo "[setup] Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }
  if ! "$py" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    say "installing python3-venv (Debian splits venv out of python3)"
    as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv python3-pip >/dev/null \
      || { echo "[setup] cannot create a venv: install python3-venv" >&2; exit 1; }
    "$py" -m venv .venv
  fi
  say "created .venv with $("$py" --version)"
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)  # stderr filtered of local-index noise
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  say "installing ${TORCH_SPEC:-torch==2.13.0}"
  "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}" 2> >(grep -v "^WARNING: Location" >&2)
fi
say "installing ladd_format and its test extras"
"${pip[@]}" -e ".[test]" 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -c 'import ladd_format, torch, zarr; print(f"[setup] ladd_format {ladd_format.__version__}, torch {torch.__version__}, zarr {zarr.__version__}")'

# Fashion-MNIST, the built-in real dataset.
system_dir=/usr/share/datasets/fashion-mnist
user_dir=${LADD_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/ladd_format}/fashion-mnist
if [ -f "$system_dir/train-images-idx3-ubyte.gz" ] || [ -f "$user_dir/train-images-idx3-ubyte.gz" ]; then
  say "Fashion-MNIST present"
elif as_root true 2>/dev/null; then
  say "installing the Debian package dataset-fashion-mnist"
  { as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { as_root apt-get update -qq && as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; } \
    || say "WARNING: could not install dataset-fashion-mnist; the demo needs it"
else
  say "no root: unpacking dataset-fashion-mnist into $user_dir"
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1) \
     && dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/root"; then
    mkdir -p "$user_dir" && cp "$tmp"/root/usr/share/datasets/fashion-mnist/*.gz "$user_dir"/
  else
    say "WARNING: apt-get download dataset-fashion-mnist failed; the demo needs it (see README)"
  fi
  rm -rf "$tmp"
fi
