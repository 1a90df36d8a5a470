#!/usr/bin/env bash
# The OpenAI-compatible server on the GPU (no Bazel), about 2-3 minutes: in-process engine vs
# the HTTP server (a subprocess) on the same Poisson trace, then a 10x-overload run.
#   OUT=/path/to/dir bash bench/gpu_server.sh          # from the repo root
# Model: llama3-8b shape with random weights in bf16 (the same seed in both), served with the real
# Llama 3 tokenizer (third_party/tokenizers/llama3). LAB_SERVER_FLAGS adds bench.serving flags.
# Needs fastapi, uvicorn, prometheus-client, jinja2 (requirements_lock.txt): wheels placed
# in .whl/ are installed to /tmp/site first. $OUT gets logs and results.tar.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/lab-server-run}"
log="$OUT/server_run.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
{ date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__)"
  python3 -c "import fastapi, uvicorn, prometheus_client, jinja2; print('fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__)" \
    || { echo "missing server packages: put wheels of fastapi, starlette, pydantic, pydantic-core, annotated-types, typing-inspection, uvicorn, h11, click, anyio, sniffio, prometheus-client, jinja2, markupsafe (versions of requirements_lock.txt) in .whl/"; exit 2; }
} 2>&1 | tee "$log"
echo "== bench.serving --backend=compare (in-process vs HTTP, then 10x overload)" | tee -a "$log"
timeout "${LAB_SERVER_TIMEOUT:-420}" python3 -m bench.serving --backend=compare --checkpoint=llama3-8b \
  --server_tokenizer=third_party/tokenizers/llama3/tokenizer.model --num_requests=192 --num_blocks=8192 \
  --overload=10 ${LAB_SERVER_FLAGS:-} 2>&1 | sed '/[Ww][Aa][Rr][Nn]/d' | tee "$OUT/bench_serving_http.log" | tail -n 30 >>"$log"
echo "results: $OUT/results.tar.gz" | tee -a "$log"
