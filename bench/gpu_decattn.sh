#!/usr/bin/env bash
# Paged decode attention near KV bandwidth (issue #14) in one GPU session (no Bazel), ~4 minutes,
# much of it Triton compiling the 36 candidate configs:
# the decode attention GPU tests (every autotuner candidate and split policy checked against the
# fp32 reference), then bench.decode_mix (v1 = the kernel before, the kernel now and its policies
# and candidate configs, SDPA, the copy ceiling; B 1, 16, 64 tight and graph-padded, long contexts),
# then bench.flash_attention's quick decode rows. From the repo root:
#   OUT=/path/to/dir bash bench/gpu_decattn.sh
# LAB_DECATTN_TESTS replaces the test list; LAB_DECODE_MIX_FLAGS / LAB_FA_FLAGS pass flags;
# LAB_DECATTN_FA=0 skips bench.flash_attention. $OUT gets the logs and results.tar.gz.
# Stops at the first failure (a failing test, a benchmark exiting non-zero on a WRONG or FAILED
# variant, one cut off by its timeout): the exit status is that step's; results so far are packed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
OUT="${OUT:-/tmp/lab-decattn-run}"
log="$OUT/decattn_run.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
{ date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$log"
echo "== GPU tests (decode attention)" | tee -a "$log"
timeout 200 python3 -m pytest -q -p no:cacheprovider ${LAB_DECATTN_TESTS:-kernels/tests/test_flash_decode.py \
  kernels/tests/test_flash_decode_paths.py kernels/tests/test_window_attention.py parity/test_paged_attention.py} \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -n 15 | tee -a "$log"
echo "== bench.decode_mix ${LAB_DECODE_MIX_FLAGS:-}" | tee -a "$log"
timeout 240 python3 -m bench.decode_mix ${LAB_DECODE_MIX_FLAGS:-} 2>&1 | sed '/[Ww][Aa][Rr][Nn]/d' \
  | tee "$OUT/bench_decode_mix.log" | grep -E "^B=|^  policies|^  configs|^wrote|copy|error|WRONG|FAILED" | tee -a "$log"
tar -C "$stage" -czf "$OUT/results.tar.gz" results
if [ "${LAB_DECATTN_FA:-1}" = 1 ]; then
  echo "== bench.flash_attention --quick --sweeps=decode ${LAB_FA_FLAGS:-}" | tee -a "$log"
  timeout 120 python3 -m bench.flash_attention --quick --sweeps=decode ${LAB_FA_FLAGS:-} 2>&1 \
    | sed '/[Ww][Aa][Rr][Nn]/d' | tee "$OUT/bench_flash_attention.log" | tail -n 30 >>"$log"
fi
echo "results: $OUT/results.tar.gz" | tee -a "$log"
