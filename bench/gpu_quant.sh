#!/usr/bin/env bash
# Quantization on the GPU in one go (~4 minutes, no Bazel): the Triton W4A16/W8A16 parity tests,
# the quant tests, then //bench:quant_decode (Llama-3-8B decode linears at batch 1/8/64: bf16,
# ours, torch's int4/int8 pack kernels, FP8 _scaled_mm).
#   OUT=/path/to/dir bash bench/gpu_quant.sh            # from the repo root
# Everything lands in $OUT: gpu_quant.log plus results.tar.gz (bench/results/<device>-<date>/).
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
python3 -m pytest -q -p no:cacheprovider kernels/tests/test_quant_matmul.py quant/tests/test_methods.py \
  2>&1 | tail -n 20 | tee -a "$log"
echo "== bench.quant_decode" | tee -a "$log"
python3 -m bench.quant_decode --batches 1,8,64 2>&1 | tee -a "$log"
