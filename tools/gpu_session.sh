# Sourced by bench/gpu_run.sh, bench/gpu_engine.sh and train/gpu_train.sh (from the repo root,
# after they set OUT and log): strict mode (a failing command or pipeline stage stops the
# session), a staging folder for results ($LAB_RESULTS_DIR), and an EXIT trap that packs
# whatever ran into $OUT/results.tar.gz and, after a failure, names its exit status, which
# stays the session's exit status.
set -euo pipefail
mkdir -p "$OUT"
stage="$(mktemp -d)"
export LAB_RESULTS_DIR="$stage/results"
pack_results() {
  local rc=$?
  if [ -d "$stage/results" ]; then tar -C "$stage" -czf "$OUT/results.tar.gz" results; fi
  if [ "$rc" -ne 0 ]; then echo "stopped: a step failed (exit $rc); see $log" | tee -a "$log"; fi
  exit "$rc"
}
trap pack_results EXIT
