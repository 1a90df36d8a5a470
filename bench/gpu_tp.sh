#!/usr/bin/env bash
# Tensor parallelism's GPU session on the 2-GPU machine (no Bazel), ~4-5 minutes. From the repo root:
#   OUT=/path bash bench/gpu_tp.sh
# 1. parity/test_tp_gpu.py: TP=2 over NCCL vs one GPU (fp32 logits, graphed greedy tokens), the
#    custom all-reduce vs the exact sum; 2. bench.allreduce: NCCL 1 KiB..1 GiB eager and graphed,
#    decode sizes, custom one-shot/two-shot (checked before timed); 3. bench.decode --tp 1,2 at the
#    Llama-3-8B shape, batch 1 and 8, graphs (NCCL and the custom all-reduce). Each spawns its own 2
#    ranks. LAB_TP_ALLREDUCE_FLAGS and LAB_TP_DECODE_FLAGS add flags.
# Unlike the other GPU scripts, every step runs even after one fails (one session on the 2-GPU
# machine should bring back every table it can); the exit status is the first failing step's,
# and the log names each failure. $OUT gets the log and results.tar.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
# NVLink multicast off everywhere (the lab's rule; model.parallel sets them too).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT="${OUT:-/tmp/lab-tp-run}"
log="$OUT/tp_run.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
first_rc=0
step() {  # step NAME CMD...: run it, note a failure, go on
  local name="$1" rc=0; shift
  echo "== $name" | tee -a "$log"
  "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAILED: $name (exit $rc)" | tee -a "$log"
    if [ "$first_rc" -eq 0 ]; then first_rc=$rc; fi
  fi
  if [ -d "$stage/results" ]; then tar -C "$stage" -czf "$OUT/results.tar.gz" results; fi
}
{ date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total --format=csv; nvidia-smi topo -m || true
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version(), 'transformers', transformers.__version__)"
  python3 -c 'from kernels import _build; print(_build.build())'; } 2>&1 | tee "$log"
run_tests() { timeout 240 python3 -m pytest -q -p no:cacheprovider parity/test_tp_gpu.py 2>&1 | tail -n 25 | tee -a "$log"; }
run_allreduce() {
  timeout 300 python3 -m bench.allreduce ${LAB_TP_ALLREDUCE_FLAGS:-} 2>&1 | sed '/[Ww][Aa][Rr][Nn]/d' \
    | tee "$OUT/bench_allreduce.log" | tail -n 60 >>"$log"
}
run_decode() {
  timeout 480 python3 -m bench.decode --tp 1,2 --batch_sizes 1,8 --variants graph --new_tokens 128 \
    ${LAB_TP_DECODE_FLAGS:-} 2>&1 | sed '/[Ww][Aa][Rr][Nn]/d' | tee "$OUT/bench_decode_tp.log" | tail -n 25 >>"$log"
}
step "GPU tests (parity/test_tp_gpu.py)" run_tests
step "bench.allreduce ${LAB_TP_ALLREDUCE_FLAGS:-}" run_allreduce
step "bench.decode --tp 1,2 ${LAB_TP_DECODE_FLAGS:-}" run_decode
echo "results: $OUT/results.tar.gz" | tee -a "$log"
exit "$first_rc"
