"""Reads Bazel's JSON execution log and the bots' audit log; asserts where each test action ran.

Used by tools/remote/check.sh, one phase per call:
  executed  every test action ran remotely (no cache hit) on a CPU bot that reports it done, exit 0;
            the lease a killed bot held (--killed) was finished by another bot
  cached    every test action was a remote cache hit and no bot started anything after --since
  gpu       every test action asked for gpu=cuda and only GPU bots ran them
Prints one summary line of counts; exits 1 with the reason when a check fails.
"""

import argparse
import json
import sys


def spawns(path):
    """The SpawnExec records of a --execution_log_json_file (concatenated JSON objects)."""
    text = open(path).read()
    decoder, pos, out = json.JSONDecoder(), 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        obj, pos = decoder.raw_decode(text, pos)
        out.append(obj)


def test_spawns(path):
    """Spawns that run a test (test-setup.sh), each with its target and platform properties."""
    tests = []
    for s in spawns(path):
        args = s.get("commandArgs", [])
        if not args or not args[0].endswith("test-setup.sh"):
            continue
        env = {e["name"]: e.get("value", "") for e in s.get("environmentVariables", [])}
        props = {p["name"]: p.get("value", "") for p in s.get("platform", {}).get("properties", [])}
        tests.append({"target": env.get("TEST_TARGET", "?"), "runner": s.get("runner", ""),
                      "cache_hit": bool(s.get("remoteCacheHit", False)), "exit": s.get("exitCode", 0),
                      "props": props})
    return tests


def audit(path, since=0.0):
    """Audit records (start/done) written at or after `since`."""
    out = []
    try:
        with open(path) as f:
            out = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        pass
    return [r for r in out if r.get("start", 0) >= since]


def fail(msg):
    print(f"check_logs: FAIL: {msg}")
    sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["executed", "cached", "gpu"])
    p.add_argument("--exec-log", required=True)
    p.add_argument("--audit-log", required=True)
    p.add_argument("--since", type=float, default=0.0, help="ignore audit records that started before (epoch s)")
    p.add_argument("--killed", default="", help="file holding the lease id a killed bot held")
    a = p.parse_args()

    tests = test_spawns(a.exec_log)
    if not tests:
        fail(f"no test action in {a.exec_log}")
    records = audit(a.audit_log, a.since)
    done = [r for r in records if r.get("event") == "done" and (r.get("argv") or [""])[0].endswith("test-setup.sh")]
    targets = sorted({t["target"] for t in tests})

    if a.phase in ("executed", "gpu"):
        local = [t["target"] for t in tests if t["runner"] != "remote" or t["cache_hit"]]
        if local:
            fail(f"test actions not executed by a bot (runner/cache hit): {local}")
        for target in targets:
            ok = [r for r in done if r.get("target") == target and r.get("exit_code") == 0]
            if not ok:
                fail(f"{target}: no bot reports it done with exit 0 in {a.audit_log}")
        by_bot = {}
        for r in done:
            by_bot[r["bot"]] = by_bot.get(r["bot"], 0) + 1
        summary = f"{len(tests)} test actions executed remotely for {len(targets)} targets; bot runs: {by_bot}"
        if a.phase == "executed":
            gpu_props = [t["target"] for t in tests if t["props"].get("gpu") != "none"]
            if gpu_props:
                fail(f"CPU test actions without gpu=none in their platform: {gpu_props}")
            on_gpu = [r["target"] for r in done if r.get("target") in targets and r.get("gpu")]
            if on_gpu:
                fail(f"CPU test actions ran on a GPU bot: {on_gpu}")
        if a.phase == "gpu":
            cpu_props = [t["target"] for t in tests if t["props"].get("gpu") != "cuda"]
            if cpu_props:
                fail(f"GPU test actions without gpu=cuda in their platform: {cpu_props}")
            on_cpu = [r["target"] for r in done if r.get("target") in targets and not r.get("gpu")]
            if on_cpu:
                fail(f"GPU test actions ran on a bot without a GPU: {on_cpu}")
        if a.killed:
            lease = open(a.killed).read().strip()
            starts = [r for r in records if r.get("event") == "start" and r.get("lease") == lease]
            if not starts:
                fail(f"the killed bot's lease {lease} never started")
            killed_bot = starts[0]["bot"]
            redone = [r for r in done if r.get("lease") == lease and r["bot"] != killed_bot and r.get("exit_code") == 0]
            if not redone:
                fail(f"lease {lease} of killed bot {killed_bot} was not finished by another bot")
            summary += f"; lease of killed {killed_bot} ({starts[0].get('target') or starts[0]['argv'][0]}) " \
                       f"finished by {redone[0]['bot']}"
        print(f"check_logs: OK: {summary}")
        return

    # cached
    missed = [t["target"] for t in tests if not t["cache_hit"]]
    if missed:
        fail(f"test actions not served from the remote cache: {missed}")
    started = [r for r in records if r.get("event") == "start"]
    if started:
        fail(f"bots started {len(started)} actions during a run that should be all cache hits: "
             f"{[r.get('target') or r['argv'][0] for r in started]}")
    print(f"check_logs: OK: {len(tests)} test actions for {len(targets)} targets all remote cache hits; "
          "no bot ran anything")


if __name__ == "__main__":
    main()
