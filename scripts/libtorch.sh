#!/usr/bin/env bash
# libtorch for the `tch` feature (burn's LibTorch backend), from PyPI's torch wheel.
#
#   source scripts/libtorch.sh      # install when missing, then export the build/run variables
#
# burn-tch 0.21 builds against tch 0.22, which expects PyTorch 2.9; we use 2.11.0, the version on
# the GPU machines (torch 2.11.0+cu130), with LIBTORCH_BYPASS_VERSION_CHECK=1. PyPI's Linux wheel
# is the CUDA 13.0 build: pip also installs its NVIDIA libraries (cuDNN, cuBLAS, NCCL, ...; 4.6 GB
# in all), which libtorch loads even on a machine without a GPU. The result runs on the CPU
# here and on CUDA where there is a GPU. Nothing is downloaded at build or run time: only this
# script downloads, from PyPI.
#
# Exports: LIBTORCH (the wheel's torch/ directory: include/ and lib/), LIBTORCH_BYPASS_VERSION_CHECK,
# LIBTORCH_CXX11_ABI=1 (as the wheel), and LD_LIBRARY_PATH (torch/lib first).
# Environment: FULLBATCH_TORCH_VENV (default .deps/torch-2.11.0 in the repository).
TORCH_VERSION=2.11.0
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${FULLBATCH_TORCH_VENV:-$_root/.deps/torch-$TORCH_VERSION}"
if [ ! -x "$_venv/bin/python" ] || ! "$_venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "installing torch==$TORCH_VERSION (PyPI wheel with its CUDA libraries, ~4.6 GB) into $_venv" >&2
  if ! python3 -m venv "$_venv" >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    else
      echo "error: python3 -m venv failed; install python3-venv (sudo apt-get install python3-venv)" >&2
      return 1 2>/dev/null || exit 1
    fi
    python3 -m venv "$_venv" || { return 1 2>/dev/null || exit 1; }
  fi
  "$_venv/bin/pip" install -q "torch==$TORCH_VERSION" || { return 1 2>/dev/null || exit 1; }
fi
LIBTORCH="$("$_venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
if [ ! -f "$LIBTORCH/lib/libtorch_cpu.so" ]; then
  echo "error: no libtorch_cpu.so under $LIBTORCH/lib" >&2
  return 1 2>/dev/null || exit 1
fi
export LIBTORCH
export LIBTORCH_BYPASS_VERSION_CHECK=1
export LIBTORCH_CXX11_ABI=1
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _root _venv
