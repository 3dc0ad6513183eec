#!/usr/bin/env bash
# One device call of the 2026-11-30 session: GPU tests of the new parts, eval on the GPU, exactness (fp32, fp16).
# Usage on the GPU machine: RAGGEDVIT_DATA=$PWD/.data OUT=... bash benchmarks/gpu_session.sh part1|part2|part3|probe|probe2|s4a|s4b|s4c|aoti1|aoti2|s5a|s5b|s6a|s6b|s6c|s6d|s6e|s7b|s7c|s8a|s8c|s8d|s8e|s9a|s9b|s9c|s9c2|s9d|s10a|s10b|s10ab|s10c|s10d|s10e|s10g|s11a|s11b|s11c|s11d|s11e|s11f|s12a|s12b|s12c..s12h|s13a|s13b|s13c|s13d|s13e|s13f|s14a|s14b|s14c|s14d|s14e|s14f|s14g|s15b|s15c|s15d|s15e|s15f|s15g
# part3 (next session, about 8 minutes): what the second 2026-11-30 session could not re-run for lack of device
# time: the AOTInductor package on the GPU after the lifted-constants fix, torch.compile of both layouts on the
# GPU (tests/test_compile.py), and the live_rows policy A/B.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 RAGGEDVIT_DATA=${RAGGEDVIT_DATA:-$PWD/.data}
OUT=${OUT:-benchmarks/results}; mkdir -p "$OUT"
W=vit_tiny_patch16_224.augreg_in21k_ft_in1k
# one README table column: column BATCH SECONDS DIR (JSON / md / png under DIR/bBATCH, log DIR/frontier-bBATCH.log)
column() { timeout "$2" python3 -m raggedvit bench frontier --quick --batches "$1" --out "$3/b$1" > "$3/frontier-b$1.log" 2>&1; }
# exactness on the trained ViT-Tiny: exactness DTYPE SECONDS DIR (log DIR/exactness-DTYPE.log; prints its table)
exactness() {
  timeout "$2" python3 -m raggedvit bench exactness --sample-data --models $W --checkpoint .data/weights/$W.safetensors \
    --num-images 436 --calib-images 64 --batch-size 128 --dtype "$1" --out "$3" > "$3/exactness-$1.log" 2>&1
  grep -v "it/s\]" "$3/exactness-$1.log" | tail -n 13 | cut -c1-300
}
case "$1" in
  part1)
    timeout 230 python3 -m pytest -q -n 4 -p no:cacheprovider tests/test_pruning_tome.py tests/test_ops_attention.py \
      tests/test_models_graph.py tests/test_apps_eval.py tests/test_models_live_rows.py tests/test_trained_weights.py \
      tests/test_ops_library.py tests/test_pruning_method.py 2>&1 | tail -n 15 | tee "$OUT/gpu-tests-part1.log"
    timeout 120 python3 -m raggedvit eval --data .data/imagenet-sample --checkpoint .data/weights/$W.safetensors \
      --model vit_tiny_patch16_224 --method all --batch-size 250 --workers 8 --json "$OUT/eval-gpu.json" 2>&1 \
      | grep -v "it/s\]" | tail -n 22 | tee "$OUT/eval-gpu.log"
    for dt in float32 float16; do
      timeout 100 python3 -m raggedvit bench exactness --sample-data --models $W --checkpoint .data/weights/$W.safetensors \
        --num-images 436 --calib-images 64 --batch-size 128 --dtype $dt --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 16
    done ;;
  part2)
    timeout 330 python3 -m raggedvit bench frontier --quick --random-models deit_small --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 40
    timeout 230 python3 benchmarks/gpu_compile.py --budget 190 --out "$OUT" 2>&1 | tail -n 40 ;;
  part3)
    timeout 240 python3 -X faulthandler benchmarks/gpu_compile.py --methods evit,threshold_l2 --steps eager,graph,aoti \
      --batches 64 --out "$OUT" 2>&1 | grep -v Warning | tail -n 30
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_compile.py tests/test_export.py 2>&1 \
      | tail -n 8 | tee "$OUT/gpu-tests-compile-export.log"
    timeout 150 python3 benchmarks/live_rows_ab.py --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/live-rows-ab.log" ;;
  probe)  # third 2026-11-30 session: which ingredient crashes AOTInductor's loader; compile/export tests on the GPU
    timeout 330 python3 benchmarks/aoti_probe.py --out "$OUT" 2>&1 | grep -v Warning | tail -n 60
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_compile.py tests/test_export.py 2>&1 \
      | tail -n 8 | tee "$OUT/gpu-tests-compile-export.log" ;;
  probe2)  # next session: the packages built there carry a static libstdc++ (no libstdc++.so for the linker?):
    # print the toolchain, then build and load with a libstdc++.so link on the linker's path
    timeout 60 python3 benchmarks/aoti_probe.py --out "$OUT" --cases linear_cpu --gdb 0 2>&1 | grep -v Warn | tail -n 8
    mkdir -p /tmp/stdcxx && ln -sf "$(ls /lib/x86_64-linux-gnu/libstdc++.so.6* | head -n 1)" /tmp/stdcxx/libstdc++.so
    LIBRARY_PATH=/tmp/stdcxx timeout 400 python3 benchmarks/aoti_probe.py --out "$OUT" --cases linear_cpu,linear,pruned \
      --gdb 0 2>&1 | grep -v Warn | tail -n 30 ;;
  tomefused)  # next session (branch tomefused): ToMe's merge in three kernels (match / decide / apply) vs torch ops
    # (the one-program-per-image version measured slower: tome-ab-tomefused-nvidia-h200-20261130.log)
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_ops_tome.py tests/test_pruning_tome.py 2>&1 | tail -n 4
    timeout 200 python3 benchmarks/tome_ab.py --settings 0,2 --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/tome-ab.log" \
      | tail -n 20 ;;
  lnshift)  # next session: cuBLAS buffers with the residual's bias add in the LayerNorm (branch lnshift)
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_ops_layernorm.py tests/test_models_live_rows.py 2>&1 \
      | tail -n 4
    timeout 220 python3 benchmarks/live_rows_ab.py --batches 1,8,64 --settings 0,1,3 --modes auto,auto-sep-add,auto-cublas-fc1,auto-before --out "$OUT" 2>&1 | grep -v Warn \
      | tee "$OUT/live-rows-ab.log" | tail -n 70 ;;
  s4a)  # fourth 2026-11-30 session: AOTI packages linked to libstdc++.so.6; frontier and fp32 exactness after lnshift
    ls /opt/gcc/bin; head -c 2 /opt/gcc/bin/g++ | grep -q "#!" && head -n 25 /opt/gcc/bin/g++
    REAL_CXX=${CXX:-g++} timeout 100 python3 benchmarks/aoti_probe.py --out "$OUT" --cases linear_cpu,pruned --gdb 0 \
      --cxx "$PWD/benchmarks/cxx_shared_libstdcxx.sh" 2>&1 | grep -v Warn | tail -n 12
    timeout 330 python3 -m raggedvit bench frontier --quick --random-models deit_small --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 40
    timeout 100 python3 -m raggedvit bench exactness --sample-data --models $W --checkpoint .data/weights/$W.safetensors \
      --num-images 436 --calib-images 64 --batch-size 128 --dtype float32 --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 16 ;;
  s4b)  # the AOTI probe of s4a printed nothing within 100 s: again with progress lines and a load time limit; fp16 exactness
    REAL_CXX=${CXX:-g++} timeout 200 python3 benchmarks/aoti_probe.py --out "$OUT" --cases linear_cpu,pruned --gdb 0 \
      --load-timeout 60 --cxx "$PWD/benchmarks/cxx_shared_libstdcxx.sh" 2>&1 | grep --line-buffered -v Warn \
      | tee "$OUT/aoti-probe.log" | tail -n 30
    timeout 100 python3 -m raggedvit bench exactness --sample-data --models $W --checkpoint .data/weights/$W.safetensors \
      --num-images 436 --calib-images 64 --batch-size 128 --dtype float16 --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 16 ;;
  s4c)  # the wrapper no longer hands the library to precompiled-header compiles (the s4a/s4b hang): AOTI on the GPU
    export REAL_CXX=${CXX:-g++} CXX=$PWD/benchmarks/cxx_shared_libstdcxx.sh
    timeout 270 python3 -X faulthandler benchmarks/gpu_compile.py --methods evit,threshold_l2 --steps eager,graph,aoti \
      --batches 64 --budget 240 --out "$OUT" 2>&1 | grep -v Warn | tail -n 14
    timeout 60 python3 benchmarks/aoti_probe.py --out "$OUT" --cases linear_cpu --gdb 0 --load-timeout 40 --cxx "$CXX" \
      2>&1 | grep -v Warn | tail -n 3 ;;
  aoti1|aoti2)  # next session: AOTInductor per method (about 140 s of packaging each), the package's call also
    # captured in a CUDA graph; built with the wrapper that links libstdc++.so.6 (docs/export.md)
    export REAL_CXX=${CXX:-g++} CXX=$PWD/benchmarks/cxx_shared_libstdcxx.sh
    # (aoti1 ran in the fifth 2026-11-30 session: gpu-compile-...-131527; aoti2 is next: the methods not yet packaged)
    pairs=$([ "$1" = aoti1 ] && echo evit:fixed,threshold_l2:adaptive || echo ats:adaptive,tome:fixed,dynamicvit:fixed)
    methods=$([ "$1" = aoti1 ] && echo evit,threshold_l2,ats,tome || echo ats,tome,dynamicvit)
    timeout 420 python3 -X faulthandler benchmarks/gpu_compile.py --methods "$methods" \
      --steps eager,graph,aoti --aoti-methods "$pairs" --batches 64 --budget 400 --out "$OUT" 2>&1 | grep -v Warn \
      | tail -n 24
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_export.py 2>&1 | tail -n 4 ;;
  s5a)  # fifth 2026-11-30 session: GPU tests of the ToMe merge kernels (NaN rows past a length: fixed), frontier and
    # ToMe's exactness with them
    timeout 150 python3 -m pytest -q -n 4 -p no:cacheprovider tests/test_ops_tome.py tests/test_pruning_tome.py \
      tests/test_models_graph.py 2>&1 | tail -n 6 | tee "$OUT/gpu-tests-s5a.log"
    timeout 330 python3 -m raggedvit bench frontier --quick --random-models deit_small --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 40
    for dt in float32 float16; do
      timeout 60 python3 -m raggedvit bench exactness --sample-data --models $W --checkpoint .data/weights/$W.safetensors \
        --methods tome --num-images 436 --calib-images 64 --batch-size 128 --dtype $dt --out "$OUT" 2>&1 \
        | grep -v "it/s\]" | tail -n 8
    done ;;
  s5b)  # the AOTI package loaded single-threaded and captured in a CUDA graph; eval on the GPU
    export REAL_CXX=${CXX:-g++} CXX=$PWD/benchmarks/cxx_shared_libstdcxx.sh
    timeout 240 python3 -X faulthandler benchmarks/gpu_compile.py --methods evit,tome --steps eager,graph,aoti \
      --aoti-methods evit:fixed --batches 64 --budget 220 --out "$OUT" 2>&1 | grep -v Warn | tail -n 10
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_models_graph.py -k tome 2>&1 | tail -n 2
    timeout 110 python3 -m raggedvit eval --data .data/imagenet-sample --checkpoint .data/weights/$W.safetensors \
      --model vit_tiny_patch16_224 --method all --batch-size 250 --workers 8 --json "$OUT/eval-gpu.json" 2>&1 \
      | grep -v "it/s\]" | tail -n 22 | tee "$OUT/eval-gpu.log"
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_export.py 2>&1 | tail -n 4 \
      | tee "$OUT/gpu-tests-export.log" ;;
  s6a)  # sixth 2026-11-30 session: ragged_linear launch configurations on the H200 (the H100 sweeps set them), where
    # the device time of adaptive Threshold-L2 goes at batch 64/256, and tests/test_export.py (GraphedPackage)
    timeout 230 python3 benchmarks/linear_sweep.py --widths 192 --out "$OUT" 2>&1 | grep -v Warn \
      | tee "$OUT/linear-sweep.log" | tail -n 12
    timeout 90 python3 benchmarks/profile_forward.py --settings 0,5 --batches 64,256 --out "$OUT" 2>&1 \
      | grep -v Warn | tee "$OUT/profile-forward.log" | tail -n 34
    export REAL_CXX=${CXX:-g++} CXX=$PWD/benchmarks/cxx_shared_libstdcxx.sh
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_export.py 2>&1 | tail -n 4 \
      | tee "$OUT/gpu-tests-export.log" ;;
  s6b)  # issue 14 in one run: every method exported to an AOTInductor package (run directly and in a CUDA graph)
    # next to eager and our CUDA graph, then torch.compile(mode="reduce-overhead") while the budget lasts
    export REAL_CXX=${CXX:-g++} CXX=$PWD/benchmarks/cxx_shared_libstdcxx.sh
    timeout ${S6B_TIMEOUT:-585} python3 -X faulthandler benchmarks/gpu_compile.py --steps eager,graph,aoti,reduce-overhead \
      --aoti-methods none:-,threshold_l2:adaptive,dynamicvit:fixed,evit:fixed,ats:adaptive,tome:fixed \
      --batches 64 --budget ${S6B_BUDGET:-540} --out "$OUT" 2>&1 | grep -v Warn | tail -n 40 ;;
  s6c)  # the narrow-output GEMM configurations on the GPU (tests), and ragged_attention's launch configurations
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_ops_linear.py 2>&1 | tail -n 3
    timeout 150 python3 benchmarks/attention_sweep.py --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/attention-sweep.log" \
      | tail -n 13 ;;
  s6d)  # the frontier after the narrow-output GEMM configurations; AOTInductor packages of ATS and ToMe (the two
    # methods s6b's budget left out), then their reduce-overhead compile while the budget lasts
    timeout 330 python3 -m raggedvit bench frontier --quick --random-models deit_small --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 22
    export REAL_CXX=${CXX:-g++} CXX=$PWD/benchmarks/cxx_shared_libstdcxx.sh
    timeout 230 python3 -X faulthandler benchmarks/gpu_compile.py --methods ats,tome --steps eager,graph,aoti,reduce-overhead \
      --aoti-methods ats:adaptive,tome:fixed --batches 64 --budget 200 --out "$OUT" 2>&1 | grep -v Warn | tail -n 16 ;;
  s6e|s7b)  # raggedvit_compiled (torch.compile reduce-overhead of the packed model) next to our graph in bench e2e
    # (s6e's 200 s were too few: it printed nothing; s7b, next session, allows 420 after the GraphedPackage test)
    if [ "$1" = s7b ]; then
      REAL_CXX=${CXX:-g++} CXX=$PWD/benchmarks/cxx_shared_libstdcxx.sh timeout 170 python3 -m pytest -q \
        -p no:cacheprovider tests/test_export.py -k replays_in_a_cuda_graph 2>&1 | tail -n 3
    fi
    timeout $([ "$1" = s6e ] && echo 200 || echo 420) python3 -m raggedvit bench e2e --sample-data --methods evit,threshold_l2 --variants fixed,adaptive \
      --batches 64 --pipelines dense_compiled,padded_sdpa,padded_static,raggedvit_graph,raggedvit_compiled \
      --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 30 ;;
  s7c)  # what the seventh 2026-11-30 session ran: the padded baseline compiled, the dense reference's memory
    # format, the frontier with channels-last dense_compiled and the unpruned packed row (README's table)
    timeout 540 python3 -m raggedvit bench e2e --sample-data --methods threshold_l2,evit,ats --variants adaptive \
      --keep-rate 0.85 --batches 64,256 --pipelines dense_compiled,padded_static,padded_compiled,raggedvit_graph,raggedvit_compiled \
      --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 32
    PYTHONPATH=src:benchmarks timeout 150 python3 benchmarks/cudnn_benchmark_ab.py --out "$OUT" 2>&1 | grep -v Warn | tail -n 12
    timeout 400 python3 -m raggedvit bench frontier --quick --random-models deit_small --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 22 ;;
  s8a)  # next session, first (about 9 minutes): the frontier with dense_compiled timing both memory formats
    # (contiguous was ~10 % faster at batch 8 in -152930, channels-last at 64 / 256 in -153648): README's table
    timeout 420 python3 -m raggedvit bench frontier --quick --random-models deit_small --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 24
    # eval with the dense model compiled (DenseCompiled, --dense compiled), and its GPU test
    timeout 150 python3 -m raggedvit eval --data .data/imagenet-sample --checkpoint .data/weights/$W.safetensors \
      --model vit_tiny_patch16_224 --method all --batch-size 250 --workers 8 --json "$OUT/eval-gpu.json" 2>&1 \
      | grep -v "it/s\]" | tail -n 22 | tee "$OUT/eval-gpu.log"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_apps_eval.py tests/test_runtime_graphs.py 2>&1 | tail -n 3 ;;
  s8c)  # ToMe as users would run it compiled: the padded ToMe (static shapes for fixed r) under torch.compile,
    # next to its CUDA graph and raggedvit's packed ToMe, graph and compiled (about 4 minutes)
    timeout 400 python3 -m raggedvit bench e2e --sample-data --methods tome,evit --variants fixed --batches 8,64,256 \
      --pipelines dense_compiled,padded_static,padded_compiled,raggedvit_graph,raggedvit_compiled \
      --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 22 ;;
  s8d)  # eighth session, first call on main: the README's frontier (dense_compiled timing both memory formats per
    # batch) and the fp16 exactness table after the narrow-output GEMM tiles
    timeout 420 python3 -m raggedvit bench frontier --quick --random-models deit_small --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 24
    timeout 120 python3 -m raggedvit bench exactness --sample-data --models $W --checkpoint .data/weights/$W.safetensors \
      --num-images 436 --calib-images 64 --batch-size 128 --dtype float16 --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 18 ;;
  s8e)  # eighth session, second call: eval on the GPU with the dense model compiled, the fp32 exactness table, and
    # ToMe / EViT fixed against their padded baselines compiled (s8c)
    timeout 150 python3 -m raggedvit eval --data .data/imagenet-sample --checkpoint .data/weights/$W.safetensors \
      --model vit_tiny_patch16_224 --method all --batch-size 250 --workers 8 --json "$OUT/eval-gpu.json" 2>&1 \
      | grep -v "it/s\]" | tail -n 22 | tee "$OUT/eval-gpu.log"
    timeout 100 python3 -m raggedvit bench exactness --sample-data --models $W --checkpoint .data/weights/$W.safetensors \
      --num-images 436 --calib-images 64 --batch-size 128 --dtype float32 --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 18
    timeout 320 python3 -m raggedvit bench e2e --sample-data --methods tome,evit --variants fixed --batches 8,64,256 \
      --pipelines dense_compiled,padded_static,padded_compiled,raggedvit_graph,raggedvit_compiled \
      --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 22 ;;
  s9a)  # next session, FIRST: the padded baseline compiled with SDPA (until 2026-11-30 its compiled runs attended
    # with fp32 torch ops), and the GPU compile tests of that path; if it beats padded_static, the frontier's
    # padded best must include it (bench/frontier.py SPEED_PIPELINES)
    timeout 170 python3 -m pytest -q -x -p no:cacheprovider tests/test_compile.py tests/test_apps_demo.py 2>&1 | tail -n 4
    timeout 400 python3 -m raggedvit bench e2e --sample-data --methods threshold_l2,evit,ats --variants adaptive \
      --keep-rate 0.85 --batches 64,256 --pipelines dense_compiled,padded_static,padded_compiled,raggedvit_graph \
      --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 40 ;;
  s9b|s9c)  # the README's table with the padded baseline's best mode including torch.compile (s9a found
    # padded_compiled 1.3-2x faster than padded_static at b64/256): a compile per setting and batch size, so one
    # device call per pair of batch sizes; then locally: raggedvit bench frontier --merge <s9b json>,<s9c json>
    # (s9c at 570 s was killed at 5 of 8 settings: compiles at batch 256 take up to a minute; s9c2 is what the
    # remaining device time allowed, the JSON is now written after every setting)
    B=$([ "$1" = s9b ] && echo 1,8 || echo 64,256)
    timeout 570 python3 -m raggedvit bench frontier --quick --batches $B --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 14 ;;
  s9c2)
    timeout 360 python3 -m raggedvit bench frontier --quick --batches 64,256 --methods evit,threshold_l2,ats,tome \
      --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 14; ls "$OUT" ;;
  s10a|s10b)  # next session: the README table's batch 256 (s10a) and 64 (s10b) columns for every setting (s9c2
    # measured 3 of 8 before its limit; compiles of the padded baseline take up to a minute each at batch 256);
    # the JSON is written after every setting, so a run stopped by the limit keeps its settings. Then locally:
    # raggedvit bench frontier --merge frontier-...-192532.json,<s10a json>,<s10b json>
    B=$([ "$1" = s10a ] && echo 256 || echo 64)
    timeout 560 python3 -m raggedvit bench frontier --quick --batches $B --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 14; ls "$OUT" ;;
  s10ab)  # s10a and s10b at once on the two GPUs of kind nvidia-h200-x2 (one process per GPU, each column's
    # ratios from one GPU; the two processes share the host's 32 cores, mostly for compiling)
    for i in 0 1; do
      B=$([ $i = 0 ] && echo 256 || echo 64)
      CUDA_VISIBLE_DEVICES=$i timeout 560 python3 -m raggedvit bench frontier --quick --batches $B --out "$OUT/b$B" \
        > "$OUT/frontier-b$B.log" 2>&1 &
    done
    wait; for B in 256 64; do grep -v "it/s\]" "$OUT/frontier-b$B.log" | tail -n 13; ls "$OUT/b$B"; done ;;
  s10e)  # tenth 2026-11-30 session, kind nvidia-h200-x2: GPU 0 the table's batch 256 column; GPU 1 first the
    # kernel profile of packed against padded compiled (s10c), then the batch 64 column (each column's ratios from
    # one GPU; the JSON is written after every setting, so a column cut by the limit keeps its settings)
    CUDA_VISIBLE_DEVICES=0 column 256 560 "$OUT" &
    ( export CUDA_VISIBLE_DEVICES=1
      PYTHONPATH=src:benchmarks timeout 200 python3 benchmarks/profile_forward.py --settings 0,1,5 --batches 256 \
        --padded-compiled --out "$OUT" > "$OUT/profile-forward-padded-compiled.log" 2>&1
      column 64 $((560 - SECONDS)) "$OUT" ) &
    wait; grep -v Warn "$OUT/profile-forward-padded-compiled.log" | grep -v "^ *[0-9.]* us .*calls" | tail -n 30
    for B in 256 64; do grep -v "it/s\]" "$OUT/frontier-b$B.log" | tail -n 13; ls "$OUT/b$B"; done ;;
  # s10f (branch fusedmlp): GPU tests of the fused MLP kernel, benchmarks/mlp_sweep.py, live_rows_ab auto vs auto-nomlp
  s10g)  # tenth 2026-11-30 session: fc2 on cuBLAS on every buffer (CUBLAS_NARROWING, new) against fc2 on the
    # Triton GEMM, per batch size; then s10d (eval of both layouts, GPU tests of PaddedCompiled)
    timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_models_live_rows.py 2>&1 | tail -n 3
    timeout 170 python3 benchmarks/live_rows_ab.py --settings 3,1,0,2 --batches 8,64,256 --modes auto,auto-fc2-triton \
      --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/live-rows-ab.log" | tail -n 24
    bash "$0" s10d ;;
  s11a)  # branch embedfast (eleventh session): the patchify kernel and embed_tokens' one-buffer position add (new,
    # CPU-tested only) against reshape / permute + timm's _pos_embed: GPU tests, then the packed graph both ways;
    # then qkv / proj on cuBLAS for buffers without dead rows (auto-cublas-full) or for every buffer (-all)
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_ops_patchify.py tests/test_models_forward.py \
      tests/test_models_live_rows.py tests/test_models_graph.py 2>&1 | tail -n 3
    timeout 170 python3 benchmarks/live_rows_ab.py --settings 3,1,2 --modes auto,auto-slow-embed --out "$OUT/embed" \
      2>&1 | grep -v Warn | tee "$OUT/live-rows-ab-embed.log" | tail -n 24
    timeout 170 python3 benchmarks/live_rows_ab.py --settings 3,0,1,2 --batches 64,256 \
      --modes auto,auto-cublas-full,auto-cublas-all --out "$OUT/gemm" 2>&1 | grep -v Warn \
      | tee "$OUT/live-rows-ab-gemm.log" | tail -n 24
    PYTHONPATH=src:benchmarks timeout $((570 - SECONDS)) python3 benchmarks/profile_forward.py --settings 1 \
      --batches 256 --out "$OUT" 2>&1 | grep -v Warn | tail -n 30 ;;
  s11b)  # eleventh session, second call: launch configurations of the patchify kernel (now specialized on the
    # image strides, grid split); GPU tests of patchify and of live_rows with qkv / proj on cuBLAS for buffers
    # without unused rows (new default); the exactness tables (fp32, fp16) after that and the fc2 change
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_ops_patchify.py tests/test_models_live_rows.py \
      tests/test_models_forward.py 2>&1 | tail -n 3
    timeout 150 python3 benchmarks/patchify_sweep.py --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/patchify-sweep.log" \
      | tail -n 3
    for dt in float32 float16; do
      timeout 120 python3 -m raggedvit bench exactness --sample-data --models $W --checkpoint .data/weights/$W.safetensors \
        --num-images 436 --calib-images 64 --batch-size 128 --dtype $dt --out "$OUT" 2>&1 | grep -v "it/s\]" | tail -n 16
    done ;;
  s11c)  # eleventh session, kind nvidia-h200-x2, after the patchify / cuBLAS-qkv changes: the README table's
    # columns, one GPU each (GPU 0: 256 then 8, GPU 1: 64 then 1; a column cut by the limit keeps its settings)
    ( export CUDA_VISIBLE_DEVICES=0
      column 256 540 "$OUT"
      column 8 $((560 - SECONDS)) "$OUT" ) &
    ( export CUDA_VISIBLE_DEVICES=1
      column 64 540 "$OUT"
      column 1 $((560 - SECONDS)) "$OUT" ) &
    wait; for B in 256 64 8 1; do grep -v "it/s\]" "$OUT/frontier-b$B.log" | tail -n 13; done ;;
  s11d)  # eleventh session, kind nvidia-h200-x2: the batch 64 and 8 columns again (s11c's b64 JSON did not come back,
    # the device tool returns at most 8 files: tar them; its b8 column was cut by the limit)
    mkdir -p "$OUT/b64" "$OUT/b8"
    CUDA_VISIBLE_DEVICES=0 timeout 540 python3 -m raggedvit bench frontier --quick --batches 64 --out "$OUT/b64" \
      > "$OUT/b64/frontier-b64.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 timeout 540 python3 -m raggedvit bench frontier --quick --batches 8 --out "$OUT/b8" \
      > "$OUT/b8/frontier-b8.log" 2>&1 &
    wait; for B in 64 8; do grep -v "it/s\]" "$OUT/b$B/frontier-b$B.log" | tail -n 13; done
    tar czf "$OUT/frontier-s11d.tgz" -C "$OUT" b64 b8 && rm -rf "$OUT/b64" "$OUT/b8" ;;
  s11e)  # eleventh session: compaction, EViT's fused token and ToMe's kernels specialized on the row strides
    # (vector loads); GPU tests, then the kernel profile at batch 256 before (old_head/: a copy of the previous
    # commit's src, not committed) and after
    timeout 80 python3 -m pytest -q -x -p no:cacheprovider tests/test_ops_compact.py tests/test_ops_tome.py \
      tests/test_ops_select.py 2>&1 | tail -n 3
    for V in old_head/src src; do echo "== $V"
      PYTHONPATH=$V:benchmarks timeout 110 python3 benchmarks/profile_forward.py --settings 1,2,6 --batches 256 \
        --out "$OUT/${V%%/*}" 2>&1 | grep -v Warn | grep "==\|compact\|select\|tome\|merge\|gemm [0-9]"
    done ;;
  s11f)  # eleventh session, last 300 s: the batch 256 column of the fixed-count methods after the compaction change
    timeout 240 python3 -m raggedvit bench frontier --quick --batches 256 --methods evit,ats --out "$OUT" 2>&1 \
      | grep -v "it/s\]" | tail -n 8 ;;
  s15b)  # fifteenth session (ran 06:09 on main): where the adaptive tax goes. EViT adaptive (mass
    # 0.92) keeps about as many tokens as EViT fixed (0.78) but ran 10.6 % slower at batch 256 (2,698 / 2,440 us,
    # live-rows-ab-gelu-...-0327): kernel families of both at 64 / 256, then fc2 on the Triton GEMM on buffers
    # with unused rows only (cuBLAS computes their unused rows too) against auto, for the adaptive defaults
    mkdir -p "$OUT/f"
    PYTHONPATH=src:benchmarks timeout 150 python3 benchmarks/profile_forward.py --settings 7,8 --batches 64,256 \
      --out "$OUT/f" > "$OUT/f/profile-forward-evit-fixed-adaptive.log" 2>&1
    grep -v Warn "$OUT/f/profile-forward-evit-fixed-adaptive.log" | grep "==\|gemm [0-9]" | cut -c1-150
    timeout 240 python3 benchmarks/live_rows_ab.py --settings 0,1,2 --batches 8,64,256 \
      --modes auto,auto-fc2-triton-ragged --out "$OUT/f/ab" 2>&1 | grep -v Warn \
      | tee "$OUT/f/live-rows-ab-fc2-ragged.log" | grep "img/s" | cut -c1-120
    tar czf "$OUT/s15b.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s15g)  # fifteenth session: ToMe's matching reads the per-head keys and adds them (pruning.tome.FOLD_HEADS; one
    # torch.mean launch less per block): GPU tests, the A/B against the head mean (auto-tome-mean), fp32
    # exactness, then the README's ToMe rows at batch 1 and 8 with the time left
    mkdir -p "$OUT/f"
    timeout 70 python3 -m pytest -q -p no:cacheprovider tests/test_ops_tome.py tests/test_pruning_tome.py \
      tests/test_trained_weights.py -k "tome or ToMe" 2>&1 | tail -n 3 | tee "$OUT/f/gpu-tests-tomefold.log"
    timeout 120 python3 benchmarks/live_rows_ab.py --settings 4,7 --batches 1,8,64,256 \
      --modes auto,auto-tome-mean --out "$OUT/f/ab" 2>&1 | grep -v Warn \
      | tee "$OUT/f/live-rows-ab-tomefold.log" | grep "img/s" | cut -c1-120
    exactness float32 60 "$OUT/f" | grep "tome\|rows pass"
    timeout $((370 - SECONDS)) python3 -m raggedvit bench frontier --quick --methods tome --batches 1,8 \
      --out "$OUT/f" > "$OUT/f/frontier-tome.log" 2>&1; grep -v "it/s\]" "$OUT/f/frontier-tome.log" | tail -n 6
    tar czf "$OUT/s15g.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s15f)  # fifteenth session (ran 06:49): can CUDA-graph conditional nodes let cuBLAS skip an adaptive buffer's unused rows
    # (benchmarks/conditional_probe.py); fp16 exactness after ToMe's split merge kernels
    mkdir -p "$OUT/f"
    timeout 240 python3 benchmarks/conditional_probe.py --out "$OUT/f" 2>&1 | grep -v Warn \
      | tee "$OUT/f/conditional-probe.log"
    exactness float16 90 "$OUT/f"
    tar czf "$OUT/s15f.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s15e)  # fifteenth session: the README table's ToMe rows at batch 1 and 8 after the split merge kernels (at 64 and
    # 256 the kernels run as before), with their own dense reference and padded baseline in the same run
    mkdir -p "$OUT/f"
    timeout 560 python3 -m raggedvit bench frontier --quick --methods tome --batches 1,8 --out "$OUT/f" \
      > "$OUT/f/frontier-tome.log" 2>&1; grep -v "it/s\]" "$OUT/f/frontier-tome.log" | tail -n 12
    tar czf "$OUT/s15e.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s15d)  # fifteenth session (ran 06:25, SPLIT_BELOW_BATCH then 128): ToMe's merge kernels split into one program per chunk of B columns (matching) and of
    # channels (merge) below ops.tome.SPLIT_BELOW_BATCH: GPU tests, the whole forward against the unsplit kernels
    # (auto-tome-whole) and split at every batch (auto-tome-split-all), exactness fp32, the kernel sweep
    mkdir -p "$OUT/f"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ops_tome.py tests/test_pruning_tome.py \
      tests/test_trained_weights.py 2>&1 | tail -n 4 | tee "$OUT/f/gpu-tests-tomesplit.log"
    timeout 200 python3 benchmarks/live_rows_ab.py --settings 4,7 --batches 1,8,64,256 \
      --modes auto,auto-tome-whole,auto-tome-split-all --out "$OUT/f/ab" 2>&1 | grep -v Warn \
      | tee "$OUT/f/live-rows-ab-tomesplit.log" | grep "img/s" | cut -c1-120
    exactness float32 70 "$OUT/f"
    timeout $((590 - SECONDS)) python3 benchmarks/tome_kernels_sweep.py --batches 1,8,64 --precisions tf32x3 \
      --out "$OUT/f" > "$OUT/f/tome-kernels-sweep.log" 2>&1; grep -v "^ *skipped" "$OUT/f/tome-kernels-sweep.log" | tail -n 40
    tar czf "$OUT/s15d.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s15c)  # fifteenth session (ran 06:20): the attention part of the adaptive tax. Our Triton kernel on ragged stages against
    # torch's FlashAttention-2 varlen kernel: per call (attention_sweep, ViT-Tiny's 3 heads) and in the whole
    # packed graph of the adaptive defaults (live_rows_ab mode auto-fa2-ragged)
    mkdir -p "$OUT/f"
    timeout 150 python3 benchmarks/attention_sweep.py --heads 3 --batches 8,64,256 --out "$OUT/f" 2>&1 \
      | tee "$OUT/f/attention-sweep-fa2.log" | grep -v "^wrote"
    timeout 300 python3 benchmarks/live_rows_ab.py --settings 0,1,2 --batches 1,8,64,256 \
      --modes auto,auto-fa2-ragged --out "$OUT/f/ab" 2>&1 | grep -v Warn \
      | tee "$OUT/f/live-rows-ab-fa2-ragged.log" | grep "img/s" | cut -c1-120
    tar czf "$OUT/s15c.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s14c)  # fourteenth session, after merging atsnorm: the README table's columns on the current code, one GPU, one
    # column per call where it needs most of a call (s14c: 256; s14d: 64 then 1; s14e: 8)
    mkdir -p "$OUT/f"; column 256 585 "$OUT/f"; grep -v "it/s\]" "$OUT/f/frontier-b256.log" | tail -n 13
    tar czf "$OUT/s14c.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s14d)
    mkdir -p "$OUT/f"; column 64 400 "$OUT/f"; column 1 $((588 - SECONDS)) "$OUT/f"
    for B in 64 1; do grep -v "it/s\]" "$OUT/f/frontier-b$B.log" | tail -n 13; done
    tar czf "$OUT/s14d.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s14e)
    mkdir -p "$OUT/f"; column 8 ${S14E:-585} "$OUT/f"; grep -v "it/s\]" "$OUT/f/frontier-b8.log" | tail -n 13
    tar czf "$OUT/s14e.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s14f)  # fourteenth session: the batch 1 column again (s14d's was cut by the call's limit; on the warm machine,
    # with Inductor's cache from s14d, it took 69 s)
    mkdir -p "$OUT/f"; column 1 285 "$OUT/f"; grep -v "it/s\]" "$OUT/f/frontier-b1.log" | tail -n 13
    tar czf "$OUT/s14f.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s14g)  # fourteenth session, last device minutes: s14a's packed half (the padded half, s14h, was cut at 170 s
    # while compiling)
    mkdir -p "$OUT/f"
    timeout 225 python3 -m raggedvit eval --data .data/imagenet-sample --checkpoint .data/weights/$W.safetensors \
      --model vit_tiny_patch16_224 --method all --layout packed --batch-size 250 --workers 8 --passes 3 \
      --json "$OUT/f/eval-gpu-packed.json" > "$OUT/f/eval-gpu-packed.log" 2>&1
    grep -v "it/s\]" "$OUT/f/eval-gpu-packed.log" | tail -n 18
    tar czf "$OUT/s14g.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s14a)  # fifteenth session (ran 06:14): eval of both layouts with --passes 3 on one GPU (speed from passes 2-3,
    # after compilation and capture), the e2e figures of the padded layout then comparable
    mkdir -p "$OUT/f"
    for L in packed padded; do
      timeout 270 python3 -m raggedvit eval --data .data/imagenet-sample --checkpoint .data/weights/$W.safetensors \
        --model vit_tiny_patch16_224 --method all --layout $L --batch-size 250 --workers 8 --passes 3 \
        --json "$OUT/f/eval-gpu-$L.json" > "$OUT/f/eval-gpu-$L.log" 2>&1
      grep -v "it/s\]" "$OUT/f/eval-gpu-$L.log" | tail -n 16
    done
    tar czf "$OUT/s14a.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s14b)  # fourteenth session, branch atsnorm at 13a3744 (its benchmarks/cls_attention_before.py, removed after the
    # merge, held the previous op): main's per-head CLS kernel, then one kernel for the head mean
    # and ATS's value norms (one launch fewer per ATS stage than main, the same count for EViT; clsfused's single
    # kernel lost on EViT): GPU tests, the A/B against main's op in one run, exactness fp32 (and fp16 if time is left)
    mkdir -p "$OUT/f"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ops_cls_attention.py tests/test_ops_select.py \
      tests/test_trained_weights.py tests/test_models_forward.py 2>&1 | tail -n 6 | tee "$OUT/f/gpu-tests-s14b.log"
    timeout 240 python3 benchmarks/live_rows_ab.py --settings 2,6,3,0 --modes auto,auto-cls-before \
      --out "$OUT/f/ab" 2>&1 | grep -v Warn | tee "$OUT/f/live-rows-ab-atsnorm.log" | grep "img/s" | cut -c1-120
    exactness float32 $((570 - SECONDS)) "$OUT/f"
    [ $SECONDS -lt 470 ] && exactness float16 $((580 - SECONDS)) "$OUT/f"
    tar czf "$OUT/s14b.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s13a)  # thirteenth session: fc1's GELU epilogue (rational A&S erf, libdevice erff, the folded A&S form with a
    # division or with rcp / ex2 asm, no GELU as the bound), per config
    timeout 300 python3 benchmarks/gelu_epilogue_ab.py --out "$OUT" 2>&1 | grep -v Warn \
      | tee "$OUT/gelu-epilogue-ab.log" | tail -n 14 ;;
  s13b)  # thirteenth session, after the folded GELU epilogue (kernels/linear._gelu): GPU tests of the kernel and the
    # models, the whole-forward A/B against the previous epilogue (same run), fp32 exactness on trained weights
    mkdir -p "$OUT/f"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ops_linear.py tests/test_models_live_rows.py \
      tests/test_models_forward.py tests/test_trained_weights.py 2>&1 | tail -n 8 | tee "$OUT/f/gpu-tests-s13b.log"
    timeout 240 python3 benchmarks/live_rows_ab.py --settings 3,0,1,2,5 --modes auto,auto-rational-gelu \
      --out "$OUT/f/ab" 2>&1 | grep -v Warn | tee "$OUT/f/live-rows-ab-gelu.log" | tail -n 40
    exactness float32 $((560 - SECONDS)) "$OUT/f"
    tar czf "$OUT/s13b.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s13c)  # thirteenth session: fp32 GELU epilogue as PyTorch's (erff) after s13b's fp32 exactness lost ATS fixed
    # (435/436) and ToMe adaptive (435/436) with the folded form; GPU tests, exactness fp32 and fp16
    mkdir -p "$OUT/f"
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_ops_linear.py tests/test_models_live_rows.py \
      tests/test_trained_weights.py 2>&1 | tail -n 6 | tee "$OUT/f/gpu-tests-s13c.log"
    for dt in float32 float16; do exactness $dt $(((560 - SECONDS) / 2)) "$OUT/f"; done
    tar czf "$OUT/s13c.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s13d)  # thirteenth session, after s13c: the GELU test on the GPU (fp32 bit for bit F.gelu?), then the batch 64
    # column of the README table for the pruning methods (ToMe left out for time), to compare with -021509-b64
    mkdir -p "$OUT/f"
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_ops_linear.py -k gelu 2>&1 | grep -E \
      "passed|failed|differ|Error|assert" | head -n 12 | tee "$OUT/f/gpu-tests-s13d.log"
    timeout $((590 - SECONDS)) python3 -m raggedvit bench frontier --quick --batches 64 \
      --methods evit,threshold_l2,ats --out "$OUT/f/b64" > "$OUT/f/frontier-b64.log" 2>&1
    grep -v "it/s\]" "$OUT/f/frontier-b64.log" | tail -n 10
    tar czf "$OUT/s13d.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s13e)  # thirteenth session, branch clsfused: the CLS attention kernel with the head mean and ATS's value norms in one launch
    # (two launches fewer per ATS stage, one per EViT stage): GPU tests, A/B against the norms apart (same run;
    # the head mean apart is the code of s13b's A/B), exactness fp32 and fp16
    mkdir -p "$OUT/f"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ops_cls_attention.py tests/test_ops_select.py \
      tests/test_trained_weights.py tests/test_models_forward.py 2>&1 | tail -n 6 | tee "$OUT/f/gpu-tests-s13e.log"
    timeout 150 python3 benchmarks/live_rows_ab.py --settings 2,6,3,5 --modes auto,auto-ats-norm-apart \
      --out "$OUT/f/ab" 2>&1 | grep -v Warn | tee "$OUT/f/live-rows-ab-ats-norm.log" | grep "img/s" | cut -c1-100
    for dt in float32 float16; do exactness $dt $(((570 - SECONDS) / 2)) "$OUT/f"; done
    tar czf "$OUT/s13e.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s13f)  # thirteenth session, branch clsfused: the new CLS attention op (head mean, ATS's value norms, one launch) against the one
    # before (per-head programs + a mean kernel, norms apart) in one run, with its column split per SM 2 / 1 /
    # none (one program per sequence)
    timeout 280 python3 benchmarks/live_rows_ab.py --settings 2,6,3,0 \
      --modes auto,auto-cls-before,auto-cls-1-per-sm,auto-cls-no-split --out "$OUT/ab" 2>&1 | grep -v Warn \
      | tee "$OUT/live-rows-ab-cls.log" | grep "img/s" | cut -c1-120 ;;
  s12d)  # twelfth session, kind nvidia-h200-x2, after the uniform-SDPA (from 16,384 rows) and ToMe big-batch tile
    # changes: GPU tests of both, then the README table's columns (GPU 0: 256; GPU 1: 64 then 1), tarred
    mkdir -p "$OUT/f"
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_models_forward.py tests/test_ops_tome.py 2>&1 \
      | tail -n 12 | tee "$OUT/f/gpu-tests-s12d.log"
    ( export CUDA_VISIBLE_DEVICES=0
      column 256 $((565 - SECONDS)) "$OUT/f" ) &
    ( export CUDA_VISIBLE_DEVICES=1
      column 64 400 "$OUT/f"
      column 1 $((565 - SECONDS)) "$OUT/f" ) &
    wait; for B in 256 64 1; do grep -v "it/s\]" "$OUT/f/frontier-b$B.log" | tail -n 13; done
    tar czf "$OUT/s12d.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s12e)  # twelfth session, kind nvidia-h200-x2, same code as s12d: GPU 0 the batch 8 column; GPU 1 the batch 1 column
    # (cut by s12d's limit), then exactness (fp32, fp16)
    mkdir -p "$OUT/f"
    ( export CUDA_VISIBLE_DEVICES=0
      column 8 560 "$OUT/f" ) &
    ( export CUDA_VISIBLE_DEVICES=1
      column 1 330 "$OUT/f"
      for dt in float32 float16; do
        timeout $(((565 - SECONDS) / 2)) python3 -m raggedvit bench exactness --sample-data --models $W \
          --checkpoint .data/weights/$W.safetensors --num-images 436 --calib-images 64 --batch-size 128 --dtype $dt \
          --out "$OUT/f" > "$OUT/f/exactness-$dt.log" 2>&1
      done ) &
    wait; for B in 8 1; do grep -v "it/s\]" "$OUT/f/frontier-b$B.log" | tail -n 13; done
    for dt in float32 float16; do grep -v "it/s\]" "$OUT/f/exactness-$dt.log" | tail -n 14; done
    tar czf "$OUT/s12e.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s12f)  # twelfth session, kind nvidia-h200-x2, same code as s12d: eval of both layouts on the GPU, one GPU each
    mkdir -p "$OUT/f"; G=0
    for L in packed padded; do
      CUDA_VISIBLE_DEVICES=$G timeout 280 python3 -m raggedvit eval --data .data/imagenet-sample \
        --checkpoint .data/weights/$W.safetensors --model vit_tiny_patch16_224 --method all --layout $L \
        --batch-size 250 --workers 8 --json "$OUT/f/eval-gpu-$L.json" > "$OUT/f/eval-gpu-$L.log" 2>&1 &
      G=$((G + 1))
    done
    wait; for L in packed padded; do grep -v "it/s\]" "$OUT/f/eval-gpu-$L.log" | tail -n 16; done
    tar czf "$OUT/s12f.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s12g)  # twelfth session, kind nvidia-h200-x2: s9d at last (is reduce-overhead the dense reference's best mode?),
    # batch 256 on GPU 0 and 64 on GPU 1
    mkdir -p "$OUT/f"; G=0
    for B in 256 64; do
      CUDA_VISIBLE_DEVICES=$G PYTHONPATH=src:benchmarks timeout 360 python3 benchmarks/dense_compile_modes_ab.py \
        --batches $B --formats channels_last --out "$OUT/f/b$B" > "$OUT/f/dense-modes-b$B.log" 2>&1 &
      G=$((G + 1))
    done
    wait; for B in 256 64; do grep -v Warn "$OUT/f/dense-modes-b$B.log" | tail -n 8; done
    tar czf "$OUT/s12g.tgz" -C "$OUT" f && rm -rf "$OUT/f" ;;
  s12h)  # twelfth session, last device minutes: where the padded baseline compiled keeps up with the packed graph
    # on fixed budgets at batch 64 (EViT fixed 1.09x, ATS fixed 1.10x in frontier -023349): kernel by kernel
    PYTHONPATH=src:benchmarks timeout 200 python3 benchmarks/profile_forward.py --settings 1,2 --batches 64 \
      --padded-compiled --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/profile-forward-padded-compiled-b64.log" | tail -n 70 ;;
  s12c)  # twelfth session, kind nvidia-h200-x2: s12a (uniform stages on SDPA, A/B) on GPU 0 and s12b (ToMe's kernel
    # sweep at batch 256) on GPU 1 at the same time; outputs tarred (the device tool returns at most 8 files)
    mkdir -p "$OUT/s12a" "$OUT/s12b"
    CUDA_VISIBLE_DEVICES=0 OUT="$OUT/s12a" bash "$0" s12a > "$OUT/s12a/s12a.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 OUT="$OUT/s12b" bash "$0" s12b > "$OUT/s12b/s12b.log" 2>&1 &
    wait; tail -n 30 "$OUT/s12b/s12b.log"; tail -n 60 "$OUT/s12a/s12a.log"
    tar czf "$OUT/s12c.tgz" -C "$OUT" s12a s12b && rm -rf "$OUT/s12a" "$OUT/s12b" ;;
  s12b)  # next session: ToMe's kernels at batch 256, where they take 68 (match) and 55 (apply) us per block
    # (profile-forward-compact-ab-...-0013) against 17 / 17 at batch 64: the earlier sweep never reached 256
    timeout 300 python3 benchmarks/tome_kernels_sweep.py --batches 256 --precisions tf32x3,ieee --out "$OUT" 2>&1 \
      | grep -v Warn | tee "$OUT/tome-kernels-sweep-b256.log" | tail -n 40 ;;
  s12a)  # branch uniformsdpa (next session, CPU-tested only): stages without unused rows attended by SDPA
    # (cuDNN / flash) instead of our Triton kernel; GPU tests, then the A/B per batch size (EViT fixed: every
    # stage uniform; Threshold-L2 / ATS adaptive: the stages before the first pruning; no pruning), a profile
    timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_models_forward.py tests/test_models_graph.py \
      tests/test_models_live_rows.py tests/test_compile.py 2>&1 | tail -n 3
    timeout 220 python3 benchmarks/live_rows_ab.py --settings 3,1,2,5 --modes auto,auto-triton-uniform \
      --out "$OUT/uniform" 2>&1 | grep -v Warn | tee "$OUT/live-rows-ab-uniform.log" | tail -n 32
    PYTHONPATH=src:benchmarks timeout $((540 - SECONDS)) python3 benchmarks/profile_forward.py --settings 1 \
      --batches 256 --out "$OUT" 2>&1 | grep -v Warn | tail -n 24 ;;
  s10c)  # why the padded baseline compiled matches the packed graph on fixed budgets (EViT fixed, batch 256:
    # 89,745 against 87,549 images/s in frontier -193806): kernel by kernel, packed against padded compiled
    PYTHONPATH=src:benchmarks timeout 300 python3 benchmarks/profile_forward.py --settings 0,1 --batches 256 \
      --padded-compiled --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/profile-forward-padded-compiled.log" | tail -n 60 ;;
  s10d)  # eval --layout padded: the padded baseline compiled at static capacity (PaddedCompiled, new on
    # 2026-11-30, not yet GPU-run): its GPU tests, then eval of both layouts on the sample photos
    timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_runtime_graphs.py tests/test_apps_eval.py \
      2>&1 | tail -n 4
    for L in padded packed; do
      timeout 150 python3 -m raggedvit eval --data .data/imagenet-sample --checkpoint .data/weights/$W.safetensors \
        --model vit_tiny_patch16_224 --method all --layout $L --batch-size 250 --workers 8 \
        --json "$OUT/eval-gpu-$L.json" 2>&1 | grep -v "it/s\]" | tail -n 12
    done ;;
  s9d)  # is reduce-overhead the dense reference's best mode? max-autotune (minutes of compile per batch size)
    PYTHONPATH=src:benchmarks timeout 540 python3 benchmarks/dense_compile_modes_ab.py --batches 64,256 \
      --formats channels_last --out "$OUT" 2>&1 | grep -v Warn | tail -n 8 ;;
esac
