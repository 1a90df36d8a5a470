#!/usr/bin/env bash
# Train the shipped models on one GPU in one go (no Bazel needed), from the repo root:
#   OUT=/path/to/dir bash train/gpu_train.sh
# 1. bench.train_ablation: each optimization's tokens/s and peak memory (lab-small, 60 steps each);
# 2. lab-small and lab-draft, two schedule lengths each, keeping the lower best held-out loss;
# 3. bench.perplexity of each kept best/ on the held-out split and WikiText-2 test.
# $OUT gets logs, results.tar.gz (bench/results/<device>-<date>/) and models.tgz.part-* (split
# under 16 MiB: cat models.tgz.part-* | tar xz gives models/lab-small and models/lab-draft).
# Stops at the first failing step (exit status that step's); results so far are still packed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
OUT="${OUT:-/tmp/lab-train-run}"
log="$OUT/train_run.log"
source tools/gpu_session.sh  # set -euo pipefail, $LAB_RESULTS_DIR, results packed on exit
strip() { tr '\r' '\n' | sed -E '/^train .*(it|step)\/s|^\s*$/d'; }  # sed: no match is not a failure
{ date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee "$log"
echo "== bench.train_ablation" | tee -a "$log"
python3 -m bench.train_ablation --device cuda --steps ${LAB_ABL_STEPS:-60} 2>&1 | strip | tail -n 12 | tee -a "$log"
train_one() {  # preset steps lr tag
  python3 -m train.train --preset "$1" --device cuda --amp --compile --seq_len 512 --batch_size 32 \
    --max_steps "$2" --warmup_steps 50 --lr "$3" --eval_every 25 --save_every 100000 --max_minutes 3 \
    --out_dir "runs/$4" --noprogress 2>&1 | strip | sed -n -E '/step [0-9]+:|error|Error|reached/p' | tail -n 8
  python3 -c "import json;s=json.load(open('runs/$4/summary.json'));print('$4', 'best', s['best_heldout_loss'], 'at', s['best_step'], 'tok/s', s['tokens_per_s'], 'peak GiB', s['peak_memory_gib'])"
}
pick() {  # name runA runB -> models/name = the run with the lower best held-out loss
  best=$(python3 -c "
import json
a, b = (json.load(open(f'runs/{r}/summary.json')) for r in ('$2', '$3'))
print('$2' if a['best_heldout_loss'] <= b['best_heldout_loss'] else '$3')")
  mkdir -p models && rm -rf "models/$1" && cp -r "runs/$best/best" "models/$1"
  cp "runs/$best/summary.json" "models/$1/train_summary.json"
  echo "kept runs/$best as models/$1"
}
echo "== train lab-small" | tee -a "$log"
{ train_one lab-small 400 1e-3 small-400; train_one lab-small 1200 1e-3 small-1200; pick lab-small small-400 small-1200; } 2>&1 | tee -a "$log"
echo "== train lab-draft" | tee -a "$log"
{ train_one lab-draft 800 2e-3 draft-800; train_one lab-draft 2400 2e-3 draft-2400; pick lab-draft draft-800 draft-2400; } 2>&1 | tee -a "$log"
for m in lab-small lab-draft; do
  echo "== bench.perplexity $m" | tee -a "$log"
  python3 -m bench.perplexity --checkpoint "models/$m" --window 512 --device cuda 2>&1 | strip | tail -n 12 | tee -a "$log"
done
tar -czf - models runs/*/summary.json runs/*/MODEL_CARD.md | split -b 15M - "$OUT/models.tgz.part-"
ls -la "$OUT" | tee -a "$log"
