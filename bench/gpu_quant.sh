#!/usr/bin/env bash
# Quantization on the GPU in one go (~4-5 minutes on an H200, no Bazel):
#   1. the quant GPU tests: Triton W4A16/W8A16 kernels (prefill tiles, every skinny decode config and
#      every config of the GEMV layout's row-streaming kernel) against their dequantized references,
#      the tuner on a 4096x4096 layer (every candidate checked, then timed), the kernel layers of
#      quant/fast_linear.py (ours, torch's int4pack, W8A8 _int_mm, FP8 _scaled_mm) against quant/'s
#      reference layers, the quant methods; LLM(path) on a W4A16 checkpoint serving through the Triton layers
#      (quant/tests/test_llm_fast.py);
#   2. bench.quant_decode: the one-layer kernel table (batch 1: the kernels as they were before the
#      GEMV rework as `_v1` rows beside the new ones, the fused W8A8 / FP8 GEMVs as `_gemv` rows) and whole Llama-3-8B decode steps
#      (batch 1, 8 and 64, CUDA graphs) for bf16, W4A16 g128 (ours, ours v1, torch int4pack), W8A16,
#      W8A8, FP8, each checked against its dequantized reference before it is timed. The tuner's
#      per-shape choice and every candidate's time print at the end (quant_decode_tuned.csv).
#   kernels/gemv8.py (the row-streaming 8/16-bit GEMV): its tests (every config vs the fp32 dequantized
#   reference, the fused W8A8 paths, planted faults); in the bench, W8A16 / W8A8 / FP8 at batch 1 tune it
#   against the older kernels, plus layer rows bf16_triton_gemv (beside cuBLAS bf16),
#   fp8_weight_only_triton_gemv, w8a16_triton_splitk (the split-K set alone: the before row) and decode
#   rows fp8_weight_only_triton, w8a16_triton_lm_head_q, fp8_weight_only_triton_lm_head_q (batch 1).
#   OUT=/path/to/dir bash bench/gpu_quant.sh            # from the repo root
# Everything lands in $OUT: gpu_quant.log, gpu_tests.log (full pytest output), bench_quant_decode.log
# and results.tar.gz (bench/results/<device>-<date>/). A failing test does not stop the bench (its
# figures are wanted either way), but the script then exits with the tests' status. Timeouts (300 s
# for the tests, kernels/tests/test_gemv8.py last so a timeout cuts only it; 270 s for the bench) keep it inside one 10-minute device call; it took 3.6 minutes on the H200
# before kernels/gemv8.py (expected ~5 now: its tests compile each config once, the bench reuses them).
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
echo "== quant GPU tests" | tee -a "$log"
set +e
timeout 300 python3 -m pytest -q -p no:cacheprovider kernels/tests/test_quant_matmul.py kernels/tests/test_quant_gemv.py \
  kernels/tests/test_act_quant_gemv.py \
  quant/tests/test_fast_linear.py quant/tests/test_methods.py quant/tests/test_llm_fast.py kernels/tests/test_gemv8.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 25 | tee -a "$log"
tests_rc=${PIPESTATUS[0]}
set -e
echo "== bench.quant_decode" | tee -a "$log"
timeout 270 python3 -m bench.quant_decode --batches 1 --iters 20 --decode_batches 1,8,64 --context 128 2>&1 \
  | tee "$OUT/bench_quant_decode.log" | tail -n 160 | tee -a "$log"
date -u +"%Y-%m-%dT%H:%M:%SZ" | tee -a "$log"
if [ "$tests_rc" -ne 0 ]; then
  echo "quant GPU tests FAILED (pytest exit $tests_rc); see $OUT/gpu_tests.log" | tee -a "$log"
  exit "$tests_rc"
fi
echo "results: $OUT/results.tar.gz" | tee -a "$log"
