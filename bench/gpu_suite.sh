#!/usr/bin/env bash
# One command for the GPU machine (issue 17), from the repository root: bash bench/gpu_suite.sh [gpu_suite.py flags]
# Writes $OUT (default ./gpu_out): gpu_report.json, gpu_suite.log, a log per part, nvidia_smi.txt (7 files).
set -o pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-gpu_out}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv >"$OUT/nvidia_smi.txt" 2>&1 || true
python3 bench/gpu_suite.py "$@" 2>&1 | tee "$OUT/gpu_suite.log"
