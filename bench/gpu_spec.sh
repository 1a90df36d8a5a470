#!/usr/bin/env bash
# Speculative decoding on the GPU in one go (no Bazel; ~3 min on an H200): the graphed speculative
# test, then bench.speculative on the lab models (fp32, CUDA graphs, 10 prompts per task) with the
# Llama-3-8B / Llama-3.2-1B-shape cost model and its projection. From the repo root:
#   OUT=/path bash bench/gpu_spec.sh
# LAB_SPEC_FLAGS replaces the bench's flags. $OUT gets the log and results.tar.gz. Stops at the first
# failure (a failing test, the bench exiting 1 on a WRONG row); what ran is still packed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
OUT="${OUT:-/tmp/lab-spec-run}"
log="$OUT/spec_run.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
{ date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } 2>&1 | tee "$log"
echo "== GPU tests" | tee -a "$log"
python3 -m pytest -q -p no:cacheprovider decoding/tests/test_speculative_gpu.py decoding/tests/test_fast_gpu.py \
  2>&1 | tail -n 15 | tee -a "$log"
echo "== bench.speculative ${LAB_SPEC_FLAGS:---per_task 10 --cost_model}" | tee -a "$log"
# shellcheck disable=SC2086
timeout "${LAB_SPEC_TIMEOUT:-480}" python3 -m bench.speculative ${LAB_SPEC_FLAGS:---per_task 10 --cost_model} \
  2>&1 | sed '/[Ww][Aa][Rr][Nn]/d' | tee "$OUT/bench_speculative.log" | tail -n 80 >>"$log"
echo "results: $OUT/results.tar.gz" | tee -a "$log"
