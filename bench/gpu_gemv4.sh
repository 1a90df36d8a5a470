#!/usr/bin/env bash
# W4A16 g128 decode kernels on the GPU in one go (<= ~5 minutes on an H200, no Bazel):
#   1. builds kernels._C (kernels/_build.py: nvcc, with kernels/csrc/gemv4.cu, the tensor-core W4 GEMV);
#   2. the W4 GPU tests: kernels/tests/test_gemv4.py (every CUDA mma config at 1..8 tokens, both
#      activation / scale dtypes, the tc tiles, planted faults, the tuner offering the mma configs),
#      the W4 skinny / GEMV-layout tests and the W4A16 layers (quant/tests/test_fast_linear.py);
#   3. bench.quant_decode, W4 rows only: the one-layer kernel table at batch 1, 8, 64 (bf16, ours, ours
#      before the GEMV rework `_v1` at batch 1, torch's tinygemm int4pack) and whole Llama-3-8B decode steps
#      at batch 1, 8, 64 (CUDA graphs; W4 with the LM head quantized too as w4a16_g128_triton_lm_head_q), every variant checked against its dequantized reference before
#      it is timed; then every candidate of the W4 tuner (w4g: M <= 16 on the GEMV layout, the CUDA mma
#      configs among them; w4gt: the tc tiles at M > 16) with its time, per shape.
#   OUT=/path/to/dir bash bench/gpu_gemv4.sh            # from the repo root
# Everything lands in $OUT: gpu_gemv4.log, build.log, gpu_tests_mma.log, gpu_tests.log, bench_quant_decode.log,
# results.tar.gz.
# A failing test or build does not stop the bench (the mma candidates then drop out of the tuner, the
# Triton ones remain), but the script then exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/lab-gpu-gemv4}"
log="$OUT/gpu_gemv4.log"
source tools/gpu_session.sh  # strict mode, $LAB_RESULTS_DIR, results packed on exit
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$log"
set +e
echo "== build kernels._C" | tee -a "$log"
timeout 180 python3 -m kernels._build > "$OUT/build.log" 2>&1
build_rc=$?
tail -n 5 "$OUT/build.log" | tee -a "$log"
python3 -c "from kernels.gemv4 import _ext_module; print('CUDA mma W4 kernels available:', _ext_module() is not None)" 2>&1 | tee -a "$log"
echo "== the CUDA mma kernels first (a failure here runs the rest with LAB_W4_MMA=0: Triton candidates only)" | tee -a "$log"
timeout 60 python3 -m pytest -q -p no:cacheprovider kernels/tests/test_gemv4.py -k "mma_every_config or mma_planted" 2>&1 \
  | tee "$OUT/gpu_tests_mma.log" | tail -n 15 | tee -a "$log"
mma_rc=${PIPESTATUS[0]}
if [ "$mma_rc" -ne 0 ]; then
  export LAB_W4_MMA=0
  echo "CUDA mma W4 kernels FAILED their tests (pytest exit $mma_rc): continuing without them" | tee -a "$log"
fi
echo "== W4 GPU tests" | tee -a "$log"
timeout 130 python3 -m pytest -q -p no:cacheprovider kernels/tests/test_gemv4.py -k "not mma_every_config and not mma_planted" kernels/tests/test_quant_matmul.py \
  "kernels/tests/test_quant_gemv.py::test_w4_gemv_layout_every_config" \
  "kernels/tests/test_quant_gemv.py::test_w4_gemv_pack_round_trip_and_prefill_tiles" \
  "kernels/tests/test_quant_gemv.py::test_planted_gemv_layout_faults_fail" \
  "kernels/tests/test_quant_gemv.py::test_tuner_times_every_candidate_and_keeps_one" \
  "quant/tests/test_fast_linear.py::test_triton_layers_match_reference" \
  "quant/tests/test_fast_linear.py::test_torch_kernel_layers_match_reference_gpu" 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -n 25 | tee -a "$log"
tests_rc=${PIPESTATUS[0]}
set -e
echo "== bench.quant_decode (W4 rows)" | tee -a "$log"
timeout 270 python3 -m bench.quant_decode --batches 1,8,64 --iters 20 --decode_batches 1,8,64 --context 128 \
  --layer_variants bf16,w4a16_g128_triton,w4a16_g128_triton_v1,torch_int4pack_g128 \
  --decode_variants bf16,w4a16_g128_triton,w4a16_g128_triton_lm_head_q,w4a16_g128_triton_v1,w4a16_g128_torch_int4pack \
  --print_candidates w4g,w4gt 2>&1 | tee "$OUT/bench_quant_decode.log" | tail -n 250 | tee -a "$log"
date -u +"%Y-%m-%dT%H:%M:%SZ" | tee -a "$log"
if [ "$build_rc" -ne 0 ] || [ "$mma_rc" -ne 0 ] || [ "$tests_rc" -ne 0 ]; then
  echo "build (exit $build_rc), mma tests (exit $mma_rc) or W4 GPU tests (exit $tests_rc) FAILED; see $OUT/build.log," \
    "$OUT/gpu_tests_mma.log, $OUT/gpu_tests.log" | tee -a "$log"
  exit 1
fi
echo "results: $OUT/results.tar.gz" | tee -a "$log"
