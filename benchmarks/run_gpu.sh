#!/usr/bin/env bash
# Reproduces the GPU numbers quoted in README.md: the test suite on the GPU, then the quick benchmarks.
# Run from the repository root on a CUDA machine; no install needed (PYTHONPATH=src):
#   bash benchmarks/run_gpu.sh tests        # GPU test suite (writes gpu-tests.log)
#   bash benchmarks/run_gpu.sh attention    # raggedvit bench attention --quick
#   bash benchmarks/run_gpu.sh e2e          # raggedvit bench e2e --sample-data --quick (trained ViT-Tiny, real photos)
#   bash benchmarks/run_gpu.sh e2e-random   # raggedvit bench e2e --quick (random-weight DeiT-S, calibrated counts)
#   bash benchmarks/run_gpu.sh exactness    # bench exactness, trained ViT-Tiny, 436 labelled photos, fp32 and fp16
#   bash benchmarks/run_gpu.sh frontier     # raggedvit bench frontier --quick (trained ViT-Tiny, labelled photos; about 25 min
#                                           # on an H200, mostly compiling the padded baseline per setting and batch size)
#   bash benchmarks/run_gpu.sh profile      # benchmarks/profile_forward.py: device time per kernel family
#   bash benchmarks/run_gpu.sh demo         # raggedvit demo on the GPU (PNG per photo)
#   bash benchmarks/run_gpu.sh ab           # bench e2e --quick, raggedvit graph, this tree vs .base/src (an older
#                                           # tree: git archive REV src | tar -x -C .base), one run each
#   bash benchmarks/run_gpu.sh safety       # benchmarks/gpu_safety.py: fuzz, context health, attention before/after
#   bash benchmarks/run_gpu.sh sanitize     # compute-sanitizer memcheck (op tests, fuzz) and racecheck
# Results go to $OUT (default benchmarks/results).
set -uo pipefail
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
for step in "$@"; do
  case "$step" in
    tests) nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu-tests.log"
           python3 -m pytest -q -n 4 -p no:cacheprovider 2>&1 | tail -n 40 | tee -a "$OUT/gpu-tests.log" ;;
    attention) python3 -m raggedvit bench attention --quick --out "$OUT" ;;
    e2e) python3 -m raggedvit bench e2e --sample-data --quick --out "$OUT" ;;
    e2e-random) python3 -m raggedvit bench e2e --quick --out "$OUT" ;;
    exactness) W=vit_tiny_patch16_224.augreg_in21k_ft_in1k
          for dt in float32 float16; do
            python3 -m raggedvit bench exactness --sample-data --models $W --checkpoint "${RAGGEDVIT_DATA:-.data}/weights/$W.safetensors" \
              --num-images 436 --calib-images 64 --batch-size 128 --dtype $dt --out "$OUT" 2>&1 | tail -n 16
          done ;;
    frontier) python3 -m raggedvit bench frontier --quick --out "$OUT" ;;
    profile) python3 benchmarks/profile_forward.py --out "$OUT" 2>&1 | tee "$OUT/profile-forward.log" ;;
    demo) python3 -m raggedvit demo --out "$OUT/demo" 2>&1 | tee "$OUT/demo.log" ;;
    ab) for side in base new; do
          src=src; [ "$side" = base ] && src=.base/src
          mkdir -p "$OUT/ab-$side"
          PYTHONPATH=$src python3 -m raggedvit bench e2e --quick --pipelines raggedvit_graph --out "$OUT/ab-$side" \
            2>&1 | tail -n 20
        done ;;
    safety) python3 benchmarks/gpu_safety.py --out "$OUT" --baseline-src .base/src 2>&1 | tee "$OUT/gpu-safety.log" ;;
    sanitize) export PYTORCH_NO_CUDA_MEMORY_CACHING=1
          { compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q -x -p no:cacheprovider \
              tests/test_ops_*.py -k "not graph and not torch_compile" 2>&1 | tail -n 8
            compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/gpu_safety.py --calls 300 \
              --no-bench --out /tmp/sanitizer 2>&1 | tail -n 8
            compute-sanitizer --tool racecheck --error-exitcode 1 python3 -m pytest -q -x -p no:cacheprovider \
              tests/test_ops_attention.py tests/test_ops_cls_attention.py tests/test_ops_linear.py \
              tests/test_ops_layernorm.py tests/test_ops_select.py -k "not graph and not torch_compile" 2>&1 | tail -n 8
          } | tee "$OUT/sanitizer.log"
          unset PYTORCH_NO_CUDA_MEMORY_CACHING ;;
    *) echo "unknown step $step (tests, attention, e2e, e2e-random, exactness, frontier, profile, demo, ab, safety, sanitize)"; exit 2 ;;
  esac
done
