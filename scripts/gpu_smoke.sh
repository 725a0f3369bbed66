#!/usr/bin/env bash
# GPU smoke test of the `7b` code path on ONE CUDA GPU, offline (issue 12 item 8, issue 15 item 8).
#
#   ARM_WHEELS=/path/to/wheels scripts/gpu_smoke.sh          # from the repo root or anywhere
#
# The GPU machine has no internet: nothing here downloads anything. If `.venv` (or $VENV) lacks a
# torch that sees the GPU, the CUDA torch wheel is installed from the local wheel folder $ARM_WHEELS
# (torch and its nvidia-* dependency wheels, e.g. filled on a connected machine with
# `pip download torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 -d wheels/`);
# if the project is not installed, it and its dependencies come from that folder too.
# Then `python -m arm.smoke --device cuda` runs, on that one GPU, the lifecycle of a ~1B-parameter
# model with every switch of the 7b preset and writes benchmarks/results/gpu_smoke.json. Phases
# (each prints its time), planned minutes on one H200:
#   peak + stand-ins  ~0.5  bf16 matmul peak; local random-init Qwen2 and text tokenizer (no hub)
#   pretrain          ~3    arm.train.pretrain (qwen2, init_from + vocabulary resize, factorized
#                           image embeddings, ZeRO-3, bf16, sdpa, activation checkpointing):
#                           tokens/s, MFU against the measured peak, loss drop, 15 GB checkpoint
#   resume            ~1.5  stop, resume, same loss curve (smaller model of the same path)
#   sampling          ~1    image tokens/s at batch 1 and 16
#   rl                ~1.5  one GRPO step (arm.rl.trainer on accelerate: ZeRO-3, bf16 with fp32
#                           master weights, activation checkpointing, one process): samples/s,
#                           reward, KL, whether the fp32 master weights moved
#   evaluate          ~1    arm evaluate of ~11 held-out prompts (GenEval, editing, VQA, captions)
#                           in bf16 on the GPU
#   serve             ~0.5  arm package (BentoML store in the work dir, no bento build), a model
#                           worker as the service starts it, one generate request: latency,
#                           the worker's device and dtype, the PNG that came back
# ~9 minutes in all. Extra arguments go to arm.smoke (e.g. --steps 50, --keep).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.arm-cache/torch_extensions}

die() { echo "gpu_smoke: $*" >&2; exit 1; }
wheels() {
    [ -n "${ARM_WHEELS:-}" ] || die "$1, and ARM_WHEELS (a local folder of wheels) is not set: this machine is offline"
    [ -d "$ARM_WHEELS" ] || die "ARM_WHEELS=$ARM_WHEELS is not a folder"
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -x "$PY" ] || python3 -m venv "$VENV"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    wheels "torch in $VENV is missing or cannot see a GPU"
    echo "gpu_smoke: installing the CUDA torch wheel from $ARM_WHEELS"
    "$PY" -m pip install -q --no-index --find-links "$ARM_WHEELS" --force-reinstall torch==2.13.0
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || die "torch $("$PY" -c 'import torch; print(torch.__version__)') from $ARM_WHEELS sees no GPU (a CPU wheel? a driver too old?)"
fi

if ! "$PY" -c 'import arm.smoke, deepspeed, transformers' 2>/dev/null; then
    wheels "the project is not installed in $VENV"
    echo "gpu_smoke: installing the project from $ARM_WHEELS"
    # the torch just checked stays: -c pins the rest, --no-deps is not used so missing deps fail loudly
    "$PY" -m pip install -q --no-index --find-links "$ARM_WHEELS" -c constraints.txt -e .
fi

mkdir -p benchmarks/results
exec "$PY" -m arm.smoke --device cuda --out benchmarks/results/gpu_smoke.json "$@"
