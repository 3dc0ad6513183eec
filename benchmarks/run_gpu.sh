#!/usr/bin/env bash
# Reproduces the GPU numbers quoted in README.md: the test suite on the GPU, then the quick benchmarks.
# Run from the repository root on a CUDA machine; no install needed (PYTHONPATH=src):
#   bash benchmarks/run_gpu.sh tests        # GPU test suite (writes gpu-tests.log)
#   bash benchmarks/run_gpu.sh attention    # raggedvit bench attention --quick
#   bash benchmarks/run_gpu.sh e2e          # raggedvit bench e2e --quick
#   bash benchmarks/run_gpu.sh exactness    # raggedvit bench exactness --quick
#   bash benchmarks/run_gpu.sh demo         # raggedvit demo on the GPU (PNG per photo)
# Results go to $OUT (default benchmarks/results).
set -uo pipefail
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
for step in "$@"; do
  case "$step" in
    tests) nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu-tests.log"
           python3 -m pytest -q -p no:cacheprovider 2>&1 | tail -n 40 | tee -a "$OUT/gpu-tests.log" ;;
    attention) python3 -m raggedvit bench attention --quick --out "$OUT" ;;
    e2e) python3 -m raggedvit bench e2e --quick --out "$OUT" ;;
    exactness) python3 -m raggedvit bench exactness --quick --out "$OUT" ;;
    demo) python3 -m raggedvit demo --out "$OUT/demo" 2>&1 | tee "$OUT/demo.log" ;;
    *) echo "unknown step $step (tests, attention, e2e, exactness, demo)"; exit 2 ;;
  esac
done
