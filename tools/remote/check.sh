#!/usr/bin/env bash
# tools/remote/check.sh: the loopback check of remote execution (a CI step).
#
# Starts PostgreSQL + BuildGrid + 2 CPU bots + 1 GPU test-double bot on loopback
# (tools/remote/up), then with a nested Bazel (its own output root, so the
# caller's server and cache are untouched):
#   1. `test --config=remote //parity/...`: every test action is executed by a CPU bot
#      (execution log + the bots' audit log), and the first CPU bot to start a
#      test is killed with SIGKILL mid-action: its lease must be finished by another bot;
#   2. `clean`, the same command again: every test action is a remote cache hit and
#      no bot starts anything;
#   3. the GPU-tagged parity tests (they skip without a GPU): their actions ask for
#      gpu=cuda and only the GPU bot runs them;
#   4. on a fresh stack without a GPU bot (queue timeout 15 s), a GPU test action
#      nobody can take fails after the queue timeout instead of hanging (--remote_retries=0).
# Prints the action counts and times; exits non-zero on any failed check.
#
#   LAB_PYTHON=/path/to/lab/venv/bin/python tools/remote/check.sh [extra bazel flags]
# Without LAB_PYTHON it reuses the caller's @lab_python venv (tools/bazel info
# output_base) when there is one, so the nested Bazel does not reinstall torch.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export LAB_REMOTE_HOME="${LAB_REMOTE_HOME:-${TMPDIR:-/tmp}/lab-remote-check}"
port="${LAB_REMOTE_CHECK_PORT:-50071}"
out_root="${LAB_REMOTE_CHECK_OUTPUT_ROOT:-${TMPDIR:-/tmp}/lab-remote-check-bazel}"
run="$LAB_REMOTE_HOME/run"
logs="$LAB_REMOTE_HOME/check"
queue_timeout=15  # check 4 only; checks 1-3 run with up's default (600 s)
extra=("$@")
t0=$(date +%s)

if [[ -z "${LAB_PYTHON:-}" ]]; then
  base="$(tools/bazel info output_base 2>/dev/null || true)"
  if [[ -n "$base" && -x "$base/external/lab_python/venv/bin/python" ]]; then
    LAB_PYTHON="$base/external/lab_python/venv/bin/python"
  fi
fi
repo_env=()
[[ -n "${LAB_PYTHON:-}" ]] && repo_env=(--repo_env=LAB_PYTHON="$LAB_PYTHON")

bazel=(tools/bazel --output_user_root="$out_root")
common=(--config=remote --remote_executor="grpc://127.0.0.1:$port" "${repo_env[@]}" --color=no --curses=no --symlink_prefix=/
        --show_progress_rate_limit=30 "${extra[@]}")

cleanup() {
  "${bazel[@]}" shutdown >/dev/null 2>&1 || true
  tools/remote/down >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$logs"
mkdir -p "$logs"
tools/remote/up --cpu-bots 2 --gpu-bots 1 --test-double --port "$port"
py="$LAB_REMOTE_HOME/venv/bin/python"
check_logs=("$py" tools/remote/check_logs.py --audit-log "$run/audit.jsonl")
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }

echo "== remote check 0: no //parity test is tagged exclusive (Bazel 4.2.3 would run it locally)"
exclusive="$("${bazel[@]}" query "${repo_env[@]}" 'attr(tags, "\bexclusive\b", tests(//parity/...))' 2>/dev/null)"
[[ -z "$exclusive" ]] || { echo "tagged exclusive, would not run remotely: $exclusive"; exit 1; }

echo "== remote check 1: tools/bazel test --config=remote //parity/... (a CPU bot is killed mid-test)"
# The killer: the first CPU bot to start a test action gets SIGKILL 3 s later.
(
  for _ in $(seq 1 1200); do
    line="$(grep '"event": "start"' "$run/audit.jsonl" 2>/dev/null | grep '"bot": "cpu-' | grep 'test-setup.sh' | head -1 || true)"
    if [[ -n "$line" ]]; then
      sleep 3
      bot="$(sed -E 's/.*"bot": "([^"]+)".*/\1/' <<<"$line")"
      sed -E 's/.*"lease": "([^"]+)".*/\1/' <<<"$line" >"$logs/killed_lease"
      kill -KILL -- "-$(cat "$run/bots/$bot.pid")" && echo "remote check: killed bot $bot mid-action"
      exit 0
    fi
    sleep 0.5
  done
) &
killer=$!
"${bazel[@]}" clean  # a rerun must not be served by the nested Bazel's own local cache
t1=$(date +%s)
"${bazel[@]}" test "${common[@]}" --execution_log_json_file="$logs/exec1.json" //parity/... 2>&1 | tee "$logs/run1.log" \
  | grep -E '^(//|INFO: (Elapsed|Build)|ERROR|FAIL|Executed)|remote check'
rc=${PIPESTATUS[0]}
kill "$killer" 2>/dev/null || true
wait "$killer" 2>/dev/null || true
[[ "$rc" == 0 ]] || { echo "remote check 1: bazel test exited $rc"; exit 1; }
[[ -s "$logs/killed_lease" ]] || { echo "remote check 1: no CPU bot started a test, so none was killed"; exit 1; }
"${check_logs[@]}" executed --exec-log "$logs/exec1.json" --since "$t1" --killed "$logs/killed_lease"
echo "remote check 1: $(elapsed "$t1")"

echo "== remote check 2: bazel clean, then the same run is served from the remote cache"
"${bazel[@]}" clean
t2=$(date +%s)
"${bazel[@]}" test "${common[@]}" --execution_log_json_file="$logs/exec2.json" //parity/... 2>&1 | tee "$logs/run2.log" \
  | grep -E '^(//|INFO: (Elapsed|Build)|ERROR|FAIL|Executed)'
[[ "${PIPESTATUS[0]}" == 0 ]] || { echo "remote check 2: bazel test failed"; exit 1; }
"${check_logs[@]}" cached --exec-log "$logs/exec2.json" --since "$t2"
echo "remote check 2: $(elapsed "$t2")"

echo "== remote check 3: GPU-tagged parity tests go only to the GPU bot"
t3=$(date +%s)
"${bazel[@]}" test "${common[@]}" --test_tag_filters=requires-gpu --execution_log_json_file="$logs/exec3.json" \
  //parity/... 2>&1 | tee "$logs/run3.log" | grep -E '^(//|INFO: (Elapsed|Build)|ERROR|FAIL|Executed)'
[[ "${PIPESTATUS[0]}" == 0 ]] || { echo "remote check 3: bazel test failed"; exit 1; }
"${check_logs[@]}" gpu --exec-log "$logs/exec3.json" --since "$t3"
echo "remote check 3: $(elapsed "$t3")"

echo "== remote check 4: no GPU bot: a GPU action fails after the ${queue_timeout} s queue timeout, not hangs"
# A fresh stack with no GPU bot and a short queue timeout (the first one's 600 s
# keeps real jobs alive while all bots are busy or one was lost).
cp "$run/audit.jsonl" "$logs/audit_checks_1-3.jsonl"
tools/remote/down >/dev/null
tools/remote/up --cpu-bots 1 --gpu-bots 0 --port "$port" --queue-timeout "$queue_timeout"
gpu_test="$("${bazel[@]}" query "${repo_env[@]}" 'attr(tags, "requires-gpu", tests(//parity/...))' 2>/dev/null | head -1)"
t4=$(date +%s)
set +e
timeout 300 "${bazel[@]}" test "${common[@]}" --test_tag_filters=requires-gpu \
  --test_env=LAB_REMOTE_CHECK_NONCE="$(date +%s%N)" "$gpu_test" >"$logs/run4.log" 2>&1
rc=$?
set -e
took=$(( $(date +%s) - t4 ))
if [[ "$rc" == 0 || "$rc" == 124 ]]; then
  echo "remote check 4: expected a prompt failure, got exit $rc after $took s"; tail -20 "$logs/run4.log"; exit 1
fi
if grep -q '"event": "start"' "$run/audit.jsonl" 2>/dev/null; then
  echo "remote check 4: the CPU bot took the GPU action"; exit 1
fi
echo "remote check 4: $gpu_test failed as expected (exit $rc) after $took s: $(grep -m1 -oE '(Job was|queued|timed? ?out|DEADLINE|UNAVAILABLE)[^.]*' "$logs/run4.log" || echo 'see run4.log')"

echo "remote check: all passed in $(elapsed "$t0") (logs and audit_checks_1-3.jsonl: $logs)"
