#!/usr/bin/env bash
# One GPU session in one go (no Bazel needed): build the CUDA extension from
# kernels/csrc, check its cubins, run the GPU tests, run the benchmarks.
#   OUT=/path/to/dir bash bench/gpu_run.sh            # from the repo root
# Wheels placed in .whl/ (for example liger-kernel) are installed to /tmp/site first.
# Everything lands in $OUT: logs plus results.tar.gz (bench/results/<device>-<date>/).
# Stops at the first failure (a failing test, a benchmark exiting non-zero on a WRONG or
# FAILED variant): the exit status is that step's, and what ran so far is still packed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/lab-gpu-run}"
log="$OUT/gpu_run.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  echo "== build kernels._C (fallback path, same sources and flags as //kernels:_C.so)"
  so="$(python3 -c 'from kernels import _build; print(_build.build())')"
  cuobjdump --list-elf --list-ptx "$so"
} 2>&1 | tee "$log"
echo "== GPU tests" | tee -a "$log"
python3 -m pytest -q -p no:cacheprovider kernels/tests/test_extension.py kernels/tests/test_vector_add_gpu.py \
  parity/test_kernels_gpu.py ${LAB_GPU_TESTS:-} 2>&1 | tail -n 20 | tee -a "$log"
echo "== bench.kernel_ops" | tee -a "$log"
python3 -m bench.kernel_ops ${LAB_KERNELS_FLAGS:-} 2>&1 | sed '/Warning/d' | tee "$OUT/bench_kernels.log" | tail -n 60 >>"$log"
echo "== bench.host_copy" | tee -a "$log"
python3 -m bench.host_copy 2>&1 | tee "$OUT/bench_host_copy.log" | tail -n 40 >>"$log"
echo "results: $OUT/results.tar.gz" | tee -a "$log"
