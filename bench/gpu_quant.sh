#!/usr/bin/env bash
# Quantization on the GPU in one go (<= ~9.5 minutes on an H200, no Bazel), in this order:
#   1. build kernels._C (kernels/_build.py: nvcc, with csrc/gemv4.cu, the tensor-core W4A16 GEMV);
#   2. the CUDA mma W4 kernels' tests (kernels/tests/test_gemv4.py: every mma config at 1..8 tokens vs the
#      fp32 dequantized reference, planted faults); a failure runs the rest with LAB_W4_MMA=0 (Triton only);
#   3. bench.quant_decode: the one-layer kernel table at batch 1 (bf16 cuBLAS and bf16_triton_gemv, W4A16
#      g128 ours / `_v1` / torch int4pack, W8A16 ours / w8a16_triton_splitk (the before set), W8A8 int8 and
#      FP8 fused GEMVs, FP8 weight-only) and whole Llama-3-8B decode steps (batch 1, 8, 64, CUDA graphs:
#      bf16, W4A16 ours / v1 / int4pack, W8A16, W8A8, FP8; at batch 1 also FP8 weight-only and the
#      `_lm_head_q` rows with the LM head quantized), every variant checked against its dequantized
#      reference before it is timed (WRONG -> exit 1); the tuner's picks and every W4 candidate's time;
#   4. the quant GPU tests: kernels/gemv8.py and gemv4.py's Triton tiles (every config), the fused
#      W8A8 / FP8 GEMVs, the W4/W8 prefill and skinny tiles, the GEMV layout, the tuner, quant/fast_linear's
#      layers against quant/'s reference layers, LLM(path) serving a W4A16 checkpoint.
#   OUT=/path/to/dir bash bench/gpu_quant.sh            # from the repo root
# Everything lands in $OUT: gpu_quant.log, build.log, gpu_tests_mma.log, bench_quant_decode.log,
# gpu_tests.log, results.tar.gz (bench/results/<device>-<date>/). Nothing stops the later steps (their
# figures are wanted either way), but the script exits 1 when any step failed. Timeouts 150 + 45 + 230
# (LAB_QUANT_BENCH_TIMEOUT) + 140 s (LAB_QUANT_TESTS_TIMEOUT) keep it inside one 10-minute device call.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/lab-gpu-quant}"
log="$OUT/gpu_quant.log"
source tools/gpu_session.sh  # strict mode, $LAB_RESULTS_DIR, results packed on exit
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$log"
set +e
echo "== build kernels._C (csrc/gemv4.cu: the tensor-core W4 GEMV)" | tee -a "$log"
timeout 150 python3 -m kernels._build > "$OUT/build.log" 2>&1
build_rc=$?
tail -n 3 "$OUT/build.log" | tee -a "$log"
echo "== the CUDA mma W4 kernels first (a failure runs the rest with LAB_W4_MMA=0: Triton candidates only)" | tee -a "$log"
timeout 45 python3 -m pytest -q -p no:cacheprovider kernels/tests/test_gemv4.py -k "mma_every_config or mma_planted" 2>&1 \
  | tee "$OUT/gpu_tests_mma.log" | tail -n 10 | tee -a "$log"
mma_rc=${PIPESTATUS[0]}
if [ "$mma_rc" -ne 0 ]; then
  export LAB_W4_MMA=0
  echo "CUDA mma W4 kernels FAILED their tests (pytest exit $mma_rc): continuing without them" | tee -a "$log"
fi
echo "== bench.quant_decode ${LAB_QUANT_DECODE_FLAGS:-}" | tee -a "$log"
timeout "${LAB_QUANT_BENCH_TIMEOUT:-230}" python3 -m bench.quant_decode --batches 1 --iters 20 --decode_batches 1,8,64 --context 128 \
  --print_candidates w4g,w4gt ${LAB_QUANT_DECODE_FLAGS:-} 2>&1 | tee "$OUT/bench_quant_decode.log" | tail -n 200 | tee -a "$log"
bench_rc=${PIPESTATUS[0]}
echo "== quant GPU tests" | tee -a "$log"
timeout "${LAB_QUANT_TESTS_TIMEOUT:-140}" python3 -m pytest -q -p no:cacheprovider kernels/tests/test_gemv8.py \
  kernels/tests/test_gemv4.py -k "not mma_every_config and not mma_planted" kernels/tests/test_act_quant_gemv.py \
  kernels/tests/test_quant_matmul.py kernels/tests/test_quant_gemv.py quant/tests/test_fast_linear.py \
  quant/tests/test_llm_fast.py ${LAB_QUANT_TESTS:-} 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 25 | tee -a "$log"
tests_rc=${PIPESTATUS[0]}
set -e
date -u +"%Y-%m-%dT%H:%M:%SZ" | tee -a "$log"
if [ "$build_rc" -ne 0 ] || [ "$mma_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ] || [ "$tests_rc" -ne 0 ]; then
  echo "build (exit $build_rc), mma tests ($mma_rc), bench ($bench_rc) or quant GPU tests ($tests_rc) FAILED;" \
    "see $OUT/build.log, gpu_tests_mma.log, bench_quant_decode.log, gpu_tests.log" | tee -a "$log"
  exit 1
fi
echo "results: $OUT/results.tar.gz" | tee -a "$log"
