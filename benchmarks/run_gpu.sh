#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md in one command: a thin wrapper of gpu_check.py (one process, at most
# 7.5 minutes on one H100/H200, start-up included; each row is written to results/gpu-check.json as it ends, and
# the tables are printed at the end). Arguments go to gpu_check.py (e.g. --budget-s 300, --only training).
set -uo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1
exec python gpu_check.py "$@"
