#!/usr/bin/env bash
# Speculative decoding on the GPU in one go (no Bazel; ~3 min on an H200). From the repo root:
#   OUT=/path bash bench/gpu_spec.sh
# 1. The speculative tests: graphed draft/n-gram speculation == plain greedy (CUDA graphs, and its CPU
#    twin with simulated capture), engine n-gram speculation == the plain engine (fp32, preemption) and
#    a bf16 flash + decode-graph engine run; Medusa heads proposing from the hidden states the captured
#    verify graphs copy out (graphed == eager, cycle by cycle); the EAGLE head (decoding/tests/test_eagle.py:
#    == plain greedy, a planted token/feature off-by-one caught).
# 2. bench.speculative: a short Spec-Bench pass (3 prompts per task, at batch 1 and through the engine
#    at up to 8 requests at once, plain vs n-gram) and the Llama-3-8B / Llama-3.2-1B shape cost model
#    with its projection (heads: the 8B-shape heads' proposal time; eagle: an 8B-shape EAGLE head's k draft
#    steps). lab-small + lab-draft + lab-small's Medusa heads (models/lab-small-medusa) and EAGLE head
#    (models/lab-small-eagle) when lab-small's four shards came with the tree, else
#    lab-draft alone with the n-gram strategy (the device gets a 64 MiB tree).
# LAB_SPEC_FLAGS replaces the bench's flags. $OUT gets spec_run.log, bench_speculative.log and
# results.tar.gz. Stops at the first failure (a failing test, the bench exiting 1 on a WRONG row).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
OUT="${OUT:-/tmp/lab-spec-run}"
log="$OUT/spec_run.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
{ date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } 2>&1 | tee "$log"
echo "== speculative tests" | tee -a "$log"
timeout 240 python3 -m pytest -q -p no:cacheprovider -rA -W ignore::DeprecationWarning \
  decoding/tests/test_speculative_gpu.py decoding/tests/test_speculative_graphed.py decoding/tests/test_heads.py \
  decoding/tests/test_eagle.py scheduler/tests/test_speculative_engine_gpu.py scheduler/tests/test_speculative_engine.py \
  2>&1 | tail -n 40 | tee -a "$log"
shards=(models/lab-small/model-0000{1,2,3,4}-of-00004.safetensors)
if ls "${shards[@]}" >/dev/null 2>&1; then
  flags="--per_task 3 --strategies draft,ngram,heads,eagle --ks 2,4 --engine_seqs 8 --engine_rounds 1 --cost_model"
else
  echo "lab-small's shards are not in this tree: lab-draft alone, n-gram only" | tee -a "$log"
  flags="--checkpoint lab-draft --strategies ngram --ks 2,4 --per_task 3 --engine_seqs 8 --engine_rounds 1 --cost_model"
fi
flags="${LAB_SPEC_FLAGS:-$flags}"
echo "== bench.speculative $flags" | tee -a "$log"
# shellcheck disable=SC2086
timeout "${LAB_SPEC_TIMEOUT:-240}" python3 -m bench.speculative $flags \
  2>&1 | sed '/[Ww][Aa][Rr][Nn]/d' | tee "$OUT/bench_speculative.log" | tail -n 80 >>"$log"
echo "results: $OUT/results.tar.gz" | tee -a "$log"
