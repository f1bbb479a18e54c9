#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md in one command: SD 1.5 shapes with random weights (speed does not
# depend on the weights), 512 px, 50 PNDM steps. Writes benchmarks/results/{generation,samplers,training}-gpu.json
# and prints their tables. Needs nothing but this repository installed (`pip install -e .`) and a CUDA GPU.
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1
out=${1:-results}
mkdir -p "$out"
python bench_generation.py --base sd15 --device cuda --precision bf16 fp32 --batch-size 8 --bcm off on \
    --channels-last --compile --vae-slicing --vae-tiling --reference-pairs 2 --out "$out/generation-gpu.json"
python bench_training.py --base sd15 --device cuda --precision bf16 fp32 --batch-size 4 --bcm off on \
    --gradient-checkpointing off on --out "$out/training-gpu.json"
python bench_generation.py --base sd15 --device cuda --precision bf16 --batch-size 8 --sampler-study \
    --out "$out/samplers-gpu.json"
python tables.py "$out/generation-gpu.json" "$out/training-gpu.json" "$out/samplers-gpu.json"
