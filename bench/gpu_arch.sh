#!/usr/bin/env bash
# GPU session for issue 19 (sliding-window kernels, fused MoE), no Bazel needed, ~3 min on an H200:
#   OUT=/path/to/dir bash bench/gpu_arch.sh            # from the repo root
# 1. sliding-window attention in the Triton kernels against the windowed reference (prefill,
#    varlen, decode, paged decode; the large autotuned shapes too) and end to end: a windowed
#    model's greedy tokens through the kernels == through SDPA, the engine freeing out-of-window
#    blocks token-identical to generate() (parity/test_window.py);
# 2. the fused MoE kernel against the per-expert loop (fp32/fp16/bf16, tiny shapes, every tile
#    config of the token-bucket table, the Mixtral-8x7B layer at 1, 77 and 512 tokens) and the
#    planted-fault check of the kernel;
# 3. bench.moe: fused vs loop at the Mixtral-8x7B layer shape, 1..512 tokens, bf16, against the
#    roofline of the expert weights read (exits 1 if a variant is WRONG).
# LAB_ARCH_CPU_PARITY=1 adds the architecture parity tests against transformers (CPU fp32, as CI).
# Each step runs even if an earlier one failed; the session exits non-zero if any did.
# Everything lands in $OUT: logs plus results.tar.gz (bench/results/<device>-<date>/).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/lab-gpu-arch}"
log="$OUT/gpu_arch.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
failed=()
step() {  # step NAME LOGFILE CMD...: run, keep its whole output in $OUT/LOGFILE, its tail in $log
  local name=$1 file=$2
  shift 2
  echo "== $name" | tee -a "$log"
  local t0=$SECONDS rc=0
  "$@" >"$OUT/$file" 2>&1 || rc=$?
  grep -vE "Warning|warnings.warn" "$OUT/$file" | tail -n 25 | tee -a "$log"
  echo "-- $name: exit $rc, $((SECONDS - t0)) s" | tee -a "$log"
  if [ "$rc" -ne 0 ]; then failed+=("$name"); fi
}
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$log"
step "sliding-window kernels and models (GPU)" window.log \
  python3 -m pytest -q -p no:cacheprovider -rs kernels/tests/test_window_attention.py parity/test_window.py
# LAB_MOE_TUNE=0: each test shape takes its bucket's first candidate untimed (every candidate is
# checked by test_every_config_matches_loop); bench.moe then times the candidates per bucket.
step "fused MoE parity (GPU)" fused_moe.log \
  env LAB_MOE_TUNE=0 python3 -m pytest -q -p no:cacheprovider -s parity/test_fused_moe.py \
  "parity/test_mutations.py::test_planted_fault_is_rejected[fused_MoE_tokens_sent_to_the_next_expert_(Triton)]"
if [ "${LAB_ARCH_CPU_PARITY:-0}" = 1 ]; then
  step "architecture parity (CPU fp32 against transformers)" arch_parity.log \
    env OMP_NUM_THREADS=4 python3 -m pytest -q -p no:cacheprovider parity/test_hf_llama.py parity/test_hf_archs.py
fi
step "bench.moe" bench_moe.log python3 -m bench.moe ${LAB_MOE_FLAGS:-}
echo "results: $OUT/results.tar.gz" | tee -a "$log"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "FAILED: ${failed[*]}" | tee -a "$log"
  exit 1
fi
