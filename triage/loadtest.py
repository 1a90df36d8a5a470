"""Load on loopback: N concurrent clients, M mixed ingest/suggest requests, then kill -9 mid-ingest.

    python3 -m triage.loadtest --clients 200 --requests 10000      (tools/bazel run //triage:loadtest)

Phase 1: the service (its own process, a fresh SQLite database seeded with one fix per class
of the evaluation set) gets `--requests` requests from `--clients` keep-alive connections
(asyncio, raw HTTP/1.1), half ingest of new occurrences (eval records with fresh paths and
sizes), half suggest. Every reply must be 200 with the fields asked for; latency is measured
per request at the client (queueing included). Phase 2: the clients ingest again and the
server is killed with SIGKILL after `--kill_after` acknowledged records; after a restart
every acknowledged failure_id must be in the database with the message that was sent.
Gates: no error, p99 suggest latency < --p99_ms, no acknowledged record lost. Results:
loadtest.{csv,json} + summary.json in the results folder (bench/common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from triage.eval.evaluate import UNRELATED, load_set
from triage.server_proc import Server
from triage.store import open_store


def variant(record: dict, i: int) -> dict:
    """`record` at another path, address and size: a new occurrence of the same failure."""
    rec = json.loads(json.dumps(record))
    exc = rec["exception"]
    exc["message"] = f"{exc['message']} (at /runs/r{i}/step_{i * 7}.py:{i % 900 + 1}, buffer 0x{i * 4099:x})"
    exc["traceback"] = [t.replace("/work", f"/home/u{i % 13}") for t in exc.get("traceback", [])]
    rec["time"] = f"2026-11-29T21:{i % 60:02d}:{(i // 60) % 60:02d}+00:00"
    rec["load_seq"] = i
    return rec


async def _request(reader, writer, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode().partition(":")
        if k.lower() == "content-length":
            length = int(v.strip())
    return status, await reader.readexactly(length)


async def run_clients(port: int, clients: int, jobs: list[tuple[str, dict]], stop_after_acks: int | None = None,
                      acked: dict | None = None, rate: float = 0.0):
    """Send `jobs` over `clients` connections; returns (latencies by kind, errors, acked {id: message}).

    rate 0: closed loop (each client sends its next request as soon as the last is answered).
    rate R > 0: open loop, job j is due at start + j / R whichever client takes it, and its latency
    counts from that due time (a request delayed by a busy client is not excused).
    With stop_after_acks, a dropped connection ends a client quietly (the server is being killed).
    """
    start = time.perf_counter() + 0.5
    queue = [(j, kind, rec) for j, (kind, rec) in reversed(list(enumerate(jobs)))]
    lat: dict[str, list[float]] = {"ingest": [], "suggest": []}
    errors: list[str] = []
    acked = {} if acked is None else acked
    dead = asyncio.Event()

    async def client():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            errors.append(f"connect: {e}")
            return
        while queue and not dead.is_set():
            j, kind, rec = queue.pop()
            body = json.dumps(rec).encode()
            if rate > 0:
                due = start + j / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                t0 = due
            else:
                t0 = time.perf_counter()
            try:
                status, payload = await _request(reader, writer, "POST", f"/{kind}", body)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                if stop_after_acks is not None:
                    break  # phase 2: the server is being killed
                # An idle keep-alive connection the server closed as we wrote: reconnect and send
                # once more (safe: an ingest is idempotent, its row is keyed by the record's content).
                try:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    status, payload = await _request(reader, writer, "POST", f"/{kind}", body)
                except (ConnectionError, asyncio.IncompleteReadError, OSError):
                    errors.append(f"{kind}: {type(e).__name__}")
                    break
            lat[kind].append((time.perf_counter() - t0) * 1000)
            out = json.loads(payload) if payload else {}
            if status != 200 or "status" not in out:
                errors.append(f"{kind}: HTTP {status} {payload[:200]!r}")
                continue
            if kind == "ingest":
                acked[out["failure_id"]] = rec["exception"]["message"]
                if stop_after_acks is not None and len(acked) >= stop_after_acks:
                    dead.set()
        writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return lat, errors, acked


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s))) - 1))] if s else float("nan")


def main(argv=None) -> int:
    """Run both phases, write results, exit 1 when a gate fails."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--requests", type=int, default=10000)
    p.add_argument("--ingest_fraction", type=float, default=0.5)
    p.add_argument("--rate", type=float, default=0.0,
                   help="offered requests/s over all clients (open loop); 0: closed loop, as fast as answered")
    p.add_argument("--kill_after", type=int, default=500, help="acknowledged ingests before kill -9 (0: skip)")
    p.add_argument("--p99_ms", type=float, default=50.0)
    p.add_argument("--no_write", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cases = load_set()
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "load.db")
        server = Server(db).start()
        try:
            seen = set()
            for c in cases:  # one fix per class, as a user would have recorded them
                if c["class"] in UNRELATED or c["class"] in seen:
                    continue
                seen.add(c["class"])
                out = server.client.ingest(c["record"])
                server.client.feedback(failure_id=out["failure_id"], my_fix=f"fix for {c['class']}")
            jobs = []
            for i in range(a.requests):
                rec = variant(rng.choice(cases)["record"], i)
                jobs.append(("ingest" if rng.random() < a.ingest_fraction else "suggest", rec))
            t0 = time.perf_counter()
            lat, errors, acked = asyncio.run(run_clients(server.port, a.clients, jobs, rate=a.rate))
            wall = time.perf_counter() - t0
            stored = open_store(db)
            lost1 = [fid for fid, msg in acked.items()
                     if (row := stored.failure(fid)) is None or row["record"]["exception"]["message"] != msg]
            if a.kill_after:
                jobs2 = [("ingest", variant(rng.choice(cases)["record"], a.requests + i)) for i in range(a.kill_after * 4)]
                acked2: dict[int, str] = {}

                async def phase2():
                    task = asyncio.ensure_future(run_clients(server.port, a.clients, jobs2, a.kill_after, acked2))
                    while not task.done() and len(acked2) < a.kill_after:
                        await asyncio.sleep(0.002)
                    server.kill9()  # mid-stream: other requests are in flight, unacknowledged
                    await task

                asyncio.run(phase2())
                server.start()  # restart on the same database
                stored = open_store(db)
                lost2 = [fid for fid, msg in acked2.items()
                         if (row := stored.failure(fid)) is None or row["record"]["exception"]["message"] != msg]
                after = server.client.suggest(cases[0]["record"])["status"]
            else:
                acked2, lost2, after = {}, [], "skipped"
        finally:
            server.stop()
    n = sum(len(v) for v in lat.values())
    rows = [{"phase": "mixed", "kind": k, "requests": len(v), "p50_ms": pct(v, 50), "p90_ms": pct(v, 90),
             "p99_ms": pct(v, 99), "max_ms": max(v) if v else float("nan")} for k, v in lat.items()]
    summary = {"clients": a.clients, "rate_offered": a.rate or "closed loop", "requests": n, "wall_s": wall, "throughput_rps": n / wall, "errors": len(errors),
               "acked_phase1": len(acked), "lost_phase1": len(lost1), "acked_before_kill": len(acked2),
               "lost_after_kill9": len(lost2), "suggest_after_restart": after}
    from bench import common

    common.print_table(rows, ["phase", "kind", "requests", "p50_ms", "p90_ms", "p99_ms", "max_ms"])
    print(json.dumps(summary))
    if errors:
        print("errors:", errors[:5])
    if not a.no_write:
        out = common.results_dir("loadtest", "cpu")
        name = "triage_loadtest" + (f"_rate{a.rate:g}" if a.rate else "_closed")
        common.write_results(out, name, rows + [{"phase": "summary", **summary}], [
            {"name": f"{name}.suggest_p99_ms", "value": pct(lat["suggest"], 99), "unit": "ms"},
            {"name": f"{name}.throughput", "value": n / wall, "unit": "requests/s"},
            {"name": f"{name}.lost_after_kill9", "value": len(lost2), "unit": "records"}],
            command=common.command_line("loadtest", argv, package="triage"), device=common.device_name("cpu"))
        print(f"results in {out}")
    failures = []
    if errors:
        failures.append(f"{len(errors)} errors")
    if not pct(lat["suggest"], 99) < a.p99_ms:
        failures.append(f"suggest p99 {pct(lat['suggest'], 99):.1f} ms >= {a.p99_ms}")
    if lost1 or lost2:
        failures.append(f"lost {len(lost1)} + {len(lost2)} acknowledged records")
    if a.kill_after and after not in ("known", "kb", "open", "llm"):
        failures.append("no answer after restart")
    common.exit_on_failures("triage.loadtest", failures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
