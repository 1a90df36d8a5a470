#!/usr/bin/env bash
# GPU session for issue 19 (architectures, fused MoE, attention sinks), no Bazel needed, ~3 min:
#   OUT=/path/to/dir bash bench/gpu_arch.sh            # from the repo root
# 1. the fused MoE kernel against the per-expert loop (fp32/fp16/bf16, tiny shapes and the
#    Mixtral-8x7B layer at 1, 77 and 512 tokens), and the planted-fault check of the kernel;
# 2. the architecture parity tests on the GPU machine's transformers (CPU fp32, as in CI);
# 3. bench.moe: fused vs loop at the Mixtral-8x7B layer shape, 1..512 tokens, bf16, against the
#    roofline of the expert weights read (exits 1 if a variant is WRONG).
# Everything lands in $OUT: logs plus results.tar.gz (bench/results/<device>-<date>/).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/lab-gpu-arch}"
log="$OUT/gpu_arch.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$log"
echo "== fused MoE parity (GPU)" | tee -a "$log"
python3 -m pytest -q -p no:cacheprovider -s parity/test_fused_moe.py \
  "parity/test_mutations.py::test_planted_fault_is_rejected[fused_MoE_tokens_sent_to_the_next_expert_(Triton)]" \
  2>&1 | grep -E "err|passed|failed|rejected|Error" | tail -n 40 | tee -a "$log"
echo "== architecture parity (CPU fp32 against transformers)" | tee -a "$log"
OMP_NUM_THREADS=4 python3 -m pytest -q -p no:cacheprovider parity/test_hf_llama.py parity/test_hf_archs.py \
  2>&1 | tail -n 8 | tee -a "$log"
echo "== bench.moe" | tee -a "$log"
python3 -m bench.moe ${LAB_MOE_FLAGS:-} 2>&1 | sed '/Warning/d' | tee "$OUT/bench_moe.log" | tail -n 40 >>"$log"
echo "results: $OUT/results.tar.gz" | tee -a "$log"
