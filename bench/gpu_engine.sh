#!/usr/bin/env bash
# The engine's GPU session in one go (no Bazel): build the extension, run the engine/decoding
# GPU tests, then the engine benchmarks. From the repo root:  OUT=/path bash bench/gpu_engine.sh
# LAB_ENGINE_BENCHES picks benchmarks (default "decode prefill serving compile"); LAB_<NAME>_FLAGS
# (e.g. LAB_DECODE_FLAGS) passes flags, LAB_<NAME>_TIMEOUT bounds one (seconds). $OUT gets logs and results.tar.gz.
# Stops at the first failure (a failing test, a benchmark exiting non-zero on a WRONG or FAILED
# variant, one cut off by its timeout): the exit status is that step's; results so far are packed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
OUT="${OUT:-/tmp/lab-engine-run}"
log="$OUT/engine_run.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
{ date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 -c 'from kernels import _build; print(_build.build())'; } 2>&1 | tee "$log"
echo "== GPU tests" | tee -a "$log"
python3 -m pytest -q -p no:cacheprovider ${LAB_ENGINE_TESTS:-decoding/tests/test_fast_gpu.py parity/test_paged_attention.py parity/test_engine.py} 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 15 | tee -a "$log"
for b in ${LAB_ENGINE_BENCHES:-decode prefill serving compile}; do
  var="LAB_$(echo "$b" | tr a-z A-Z)_FLAGS" tvar="LAB_$(echo "$b" | tr a-z A-Z)_TIMEOUT"
  echo "== bench.$b ${!var:-}" | tee -a "$log"
  timeout "${!tvar:-${LAB_BENCH_TIMEOUT:-420}}" python3 -m "bench.$b" ${!var:-} 2>&1 | sed '/[Ww][Aa][Rr][Nn]/d' | tee "$OUT/bench_$b.log" | tail -n 40 >>"$log"
  tar -C "$stage" -czf "$OUT/results.tar.gz" results  # after each, so a cut-off run keeps the rest
done
echo "results: $OUT/results.tar.gz" | tee -a "$log"
