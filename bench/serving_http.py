"""bench.serving over HTTP: the same Poisson trace sent to the OpenAI-compatible server (serve/).

  python3 -m bench.serving --backend=http --url=http://127.0.0.1:8000 --rate=8   # a running server
  python3 -m bench.serving --backend=compare --checkpoint=lab-small              # in-process vs HTTP

--backend=http replays the trace (bench.serving's build_trace: the one trace) against --url
the way vLLM's serving benchmark does: each request is POSTed to /v1/completions at its
arrival time with its prompt as token ids, greedy, ignore_eos, streamed (SSE), and the
client timestamps every chunk that carries tokens (return_token_ids tells how many). TTFT
and end-to-end count from the trace's arrival time; ITL is the gap between consecutive
token-carrying chunks as the client sees them (a chunk may carry several tokens when the
server's writer falls behind: one gap, not several); TPOT per request is
(last - first token time) / (outputs - 1), as in-process. A request must return exactly its
drawn length or a 429 (counted); anything else is an error. Afterwards /metrics must show no
KV block in use and no request running or waiting, and /health must answer.

--backend=compare, one run: the correctness gate and the capacity measurement of
bench.serving, the trace in-process under --policies (one policy, default chunked), then a
server subprocess (python3 -m serve.openai_server, the same engine settings and
checkpoint) replaying the same trace over loopback HTTP. The HTTP outputs must equal the
in-process ones (fp32: identical tokens). Reported: HTTP / in-process output tokens/s
(target: the server costs <= 10%) and HTTP ITL p99 / in-process TPOT p99 (target <= 1.1).
With --overload X (default 10) a second server with --max_queue = --max_num_seqs takes the
trace at X times the measured capacity: every request completes or gets a 429, no crash,
the KV pool empty afterwards. The client runs in the benchmark process, so on a small CPU
the client, the server's HTTP loop and its engine thread share the cores: the overhead
figure includes the client's share, as a real deployment on one box would.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from bench import common

TARGET_TOK_COST = 0.10  # the server may cost at most 10% of in-process output tokens/s
TARGET_ITL_RATIO = 1.10  # HTTP ITL p99 within 10% of the engine's TPOT p99


class HTTPReplayError(RuntimeError):
    """A request came back wrong (not its token count, not a 429), or the server was left unclean."""


# ---------------------------------------------------------------------------- the client
async def _post_sse(host: str, port: int, path: str, body: bytes, headers: dict[str, str]):
    """POST body on a fresh connection; yields (status, headers) first, then each SSE `data:` payload
    (bytes) as its chunk arrives. A plain asyncio HTTP/1.1 client (chunked transfer decoding, no
    keep-alive): the benchmark's own cost per chunk stays small next to the server's, which
    matters when the client shares a small CPU with the server."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n{head}\r\n".encode() + body)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        hdrs = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            hdrs[k.strip().lower()] = v.strip()
        yield status, hdrs
        chunked = hdrs.get("transfer-encoding", "").lower() == "chunked"
        buf = b""
        while True:
            if chunked:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                buf += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if line.startswith(b"data: "):
                        yield line[6:]
        for line in buf.split(b"\n"):
            if line.startswith(b"data: "):
                yield line[6:]
    finally:
        writer.close()


async def _one(url: str, model: str, r, t0: float, api_key: Optional[str]) -> dict[str, Any]:
    """One trace request at its arrival time: the time and token ids of each chunk, or its 429."""
    from urllib.parse import urlsplit

    delay = t0 + r.arrival_s - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    body = json.dumps({"model": model, "prompt": r.prompt_ids, "max_tokens": r.max_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True, "return_token_ids": True}).encode()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    u = urlsplit(url)
    times, ids, finish = [], [], None
    events = _post_sse(u.hostname, u.port or 80, (u.path.rstrip("/") or "") + "/v1/completions", body, headers)
    try:
        status, hdrs = await events.__anext__()
        if status == 429:
            return {"status": 429, "retry_after": hdrs.get("retry-after")}
        if status != 200:
            rest = b"".join([e async for e in events])
            raise HTTPReplayError(f"request {r.index}: HTTP {status}: {rest[:300]!r}")
        async for data in events:
            if data == b"[DONE]":
                break
            now = time.perf_counter()
            obj = json.loads(data)
            if "error" in obj:
                raise HTTPReplayError(f"request {r.index}: error event {obj['error']}")
            for c in obj["choices"]:
                if c.get("token_ids"):
                    times.append(now - t0)
                    ids.extend(c["token_ids"])
                finish = c.get("finish_reason") or finish
    finally:
        await events.aclose()
    return {"status": 200, "times": times, "ids": ids, "finish": finish}


async def _replay(url: str, model: str, trace, api_key: Optional[str]) -> tuple[list, float]:
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(_one(url, model, r, t0, api_key)) for r in trace]
    return await asyncio.gather(*tasks), t0


def http_replay(url: str, model: str, trace, label: str, api_key: Optional[str] = None,
                allow_429: bool = False):
    """Replay `trace` against the server at url; a bench.serving.ReplayResult (no step samples:
    the KV is not visible over HTTP) and the number of 429s."""
    from bench.serving import ReplayResult

    before = scrape(url, api_key)
    answers, _ = asyncio.run(_replay(url, model, trace, api_key))
    records, outputs, rejected = [], {}, 0
    for r, a in zip(trace, answers):
        if a["status"] == 429:
            if not allow_429:
                raise HTTPReplayError(f"{label}: request {r.index} got a 429 (queue full); raise --max_queue")
            rejected += 1
            continue
        times, ids = a["times"], a["ids"]
        if len(ids) != r.max_tokens or a["finish"] != "length":
            raise HTTPReplayError(f"{label}: request {r.index} returned {len(ids)} tokens (finish {a['finish']}), "
                                  f"want {r.max_tokens}; a short request is an error")
        first, last = times[0], times[-1]
        records.append({
            "policy": label, "request": r.index, "prompt_tokens": len(r.prompt_ids), "output_tokens": len(ids),
            "arrival_s": r.arrival_s, "first_token_s": first, "finish_s": last, "ttft_s": first - r.arrival_s,
            "e2e_s": last - r.arrival_s, "tpot_s": (last - first) / (len(ids) - 1) if len(ids) > 1 else None,
            "itl_s": [b - a_ for a_, b in zip(times, times[1:])], "chunks": len(times), "preemptions": None})
        outputs[r.index] = ids
    after = wait_clean(url, api_key, label)
    preempt = int(after.get("lab_preemptions_total", 0) - before.get("lab_preemptions_total", 0))
    return ReplayResult(label, records, [], outputs, preempt, 0, 0), rejected


def scrape(url: str, api_key: Optional[str] = None) -> dict[str, float]:
    """The server's unlabelled /metrics samples (name -> value)."""
    text = _get(url + "/metrics", api_key)[1].decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+) ([-+0-9.e]+)$", text, re.M)}


def wait_clean(url: str, api_key: Optional[str], label: str, timeout_s: float = 30.0) -> dict[str, float]:
    """After a replay: /health answers and, within timeout_s, no KV block, running or waiting request."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = scrape(url, api_key)
        busy = {k: m.get(k) for k in ("lab_kv_blocks_in_use", "lab_num_requests_running", "lab_num_requests_waiting")}
        if not any(busy.values()):
            break
        if time.monotonic() > deadline:
            raise HTTPReplayError(f"{label}: the server still holds {busy} {timeout_s:.0f} s after the last response")
        time.sleep(0.1)
    if _get(url + "/health")[0] != 200:
        raise HTTPReplayError(f"{label}: /health does not answer 200 after the replay")
    return m


def server_info(url: str, api_key: Optional[str] = None) -> dict[str, Any]:
    return json.loads(_get(url + "/v1/models", api_key)[1])["data"][0]


def _get(url: str, api_key: Optional[str] = None, timeout_s: float = 30.0) -> tuple[int, bytes]:
    """(status, body) of a GET (urllib: the benchmark side needs no HTTP package)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- the server process
class ServerProcess:
    """`python3 -m serve.openai_server` on a free loopback port, its output in log_path."""

    def __init__(self, args: list[str], log_path: Path, start_timeout_s: float = 600.0):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.command = [sys.executable, "-m", "serve.openai_server", f"--port={self.port}", *args]
        self.proc = subprocess.Popen(self.command, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout_s
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                raise HTTPReplayError(f"the server exited ({self.proc.returncode}) before answering: "
                                      f"{log_path.read_text()[-1500:]}")
            try:
                if _get(self.url + "/health", timeout_s=2)[0] == 200:
                    break
            except OSError:  # not listening yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise HTTPReplayError(f"the server did not answer /health within {start_timeout_s:.0f} s")
            time.sleep(0.25)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def server_args(opts, settings, policy: str, max_queue: int, tokenizer: Optional[str] = None) -> list[str]:
    """The server flags giving the engine the in-process run's settings."""
    args = [f"--checkpoint={opts.checkpoint or 'lab-small'}", f"--device={opts.device}",
            f"--dtype={common.dtype_name(opts.dtype)}", f"--policy={policy}",
            f"--max_num_seqs={settings.max_num_seqs}", f"--max_model_len={settings.max_model_len}",
            f"--block_size={settings.block_size}", f"--admission_batch={settings.admission_batch}",
            f"--max_num_batched_tokens={settings.kwargs(policy)['max_num_batched_tokens']}",
            f"--max_queue={max_queue}", f"--cpu_threads={opts.cpu_threads or 0}", "--log_level=warning"]
    if settings.num_blocks is not None:
        args.append(f"--num_blocks={settings.num_blocks}")
    if tokenizer:
        from model.loader import user_path

        args.append(f"--tokenizer={user_path(tokenizer)}")
    return args


# ---------------------------------------------------------------------------- the two modes
def run_http(opts, url: str, api_key: Optional[str], out_dir: Optional[Path], log: Callable[[str], None] = print):
    """--backend=http: the trace against a running server (--rate > 0 required: no local engine to measure)."""
    from bench import serving

    info = server_info(url, api_key)
    if not opts.rate > 0:
        raise serving.ServingUsageError("--backend=http needs --rate > 0 (or inf): there is no local engine to "
                                        "measure the capacity of")
    longest = opts.prompt.hi + opts.output.hi
    if longest > info["max_model_len"]:
        raise serving.ServingUsageError(f"--prompt_max + --output_max = {longest} exceeds the server's context "
                                        f"{info['max_model_len']}")
    trace = serving.build_trace(opts.num_requests, opts.rate, opts.prompt, opts.output, info["vocab_size"], opts.seed)
    log(f"replaying {len(trace)} requests at {opts.rate:.3g}/s against {url} ({info['id']}) ...")
    res, rejected = http_replay(url, info["id"], trace, "http", api_key, allow_429=True)
    row = _row(res, rejected, len(trace))
    title = (f"bench.serving --backend=http: {info['id']} at {url}, {common.today()}, {len(trace)} requests at "
             f"{opts.rate:.3g}/s")
    common.print_table([row], HTTP_COLUMNS, title="\n" + title)
    log(f"{row['completed']} completed, {rejected} refused with 429; the server is clean afterwards (no KV block "
        f"in use, nothing running or waiting) and /health answers")
    if out_dir is not None:
        common.write_results(out_dir, "serving_http_remote", [row], _records([row], {"url": url}),
                             command=common.command_line("serving"))
    return {"rows": [row], "results": [res]}


def compare(opts, out_dir: Optional[Path], overload: float, log: Callable[[str], None] = print,
            tokenizer: Optional[str] = None, repeats: int = 1) -> dict[str, Any]:
    """--backend=compare: in-process vs HTTP on one trace, then the overload run (module docstring)."""
    import torch

    from bench import serving

    if len(opts.policies) != 1:
        raise serving.ServingUsageError(f"--backend=compare runs one policy (the server's), got --policies="
                                        f"{','.join(opts.policies)}")
    policy = opts.policies[0]
    if not opts.checkpoint:
        raise serving.ServingUsageError("--backend=compare needs --checkpoint (what the server serves, e.g. "
                                        "lab-small)")
    cuda = common.is_cuda(opts.device)
    if cuda and opts.settings_partial.get("num_blocks") is None:
        raise serving.ServingUsageError("--backend=compare on a GPU needs --num_blocks: the server and the "
                                        "in-process engine share the GPU and must get the same KV")
    dev = common.device_name(opts.device)
    model = serving.build_model(opts.preset, None, opts.weights, opts.device, opts.dtype, opts.seed, opts.checkpoint)
    settings = serving.resolve_settings(opts, model)
    vocab = model.config.vocab_size
    exact = opts.dtype == torch.float32

    cases = [serving.CheckCase(p, min(m, opts.check_tokens))
             for p, m in serving.draw_requests(opts.check_requests, opts.prompt, opts.output, vocab, opts.seed + 2)]
    serving.prepare_check(model, cases)
    engine = serving.make_engine(model, policy, settings)
    try:
        outs = serving.engine_outputs(engine, cases, policy)
    finally:
        engine.close()
    check = serving.check_outputs(cases, outs, opts.dtype, policy,
                                  functools.partial(serving.teacher_forced_logits, model))
    log(f"check {policy}: {check['tokens_identical']}/{check['tokens']} tokens identical to single-request decoding")

    trace = serving.build_trace(opts.num_requests, 1.0, opts.prompt, opts.output, vocab, opts.seed)
    rate, capacity = opts.rate, None
    if rate == 0:
        warm = serving.draw_requests(2 * settings.max_num_seqs, opts.prompt, opts.output, vocab, opts.seed + 1)
        capacity, how = serving.measure_capacity(model, settings, warm, serving.trace_stats(trace)["output_mean"])
        rate = opts.load * capacity
        log(f"measured capacity {capacity:.2f} requests/s ({how}); rate = {opts.load:g} x capacity = {rate:.2f}/s")
    trace = serving.with_rate(trace, rate, opts.seed)
    log(f"trace: {len(trace)} requests at {rate:.3g}/s, last arrival {trace[-1].arrival_s:.2f} s; "
        f"in-process {policy} ...")
    logs = out_dir or Path("/tmp")
    # The server is up (idle) during the in-process runs: each repeat is in-process then HTTP on
    # the same trace, so a machine whose load drifts shows it as spread between the repeats.
    server = ServerProcess(server_args(opts, settings, policy, len(trace) + 1, tokenizer),
                           logs / "serving_http_server.log")
    rows, pairs, differ = [], [], []
    try:
        name = server_info(server.url)["id"]
        log(f"server up at {server.url} (pid {server.proc.pid})")
        for k in range(1, repeats + 1):
            tag = f" #{k}" if repeats > 1 else ""
            log(f"in-process{tag} ...")
            engine = serving.make_engine(model, policy, settings)
            try:
                c0 = time.process_time()
                local = serving.replay(engine, trace, "in-process" + tag)
                local_cpu = time.process_time() - c0
            finally:
                engine.close()
            log(f"HTTP{tag} ...")
            s0, c0 = process_cpu_s(server.proc.pid), time.process_time()
            remote, _ = http_replay(server.url, name, trace, "http" + tag)
            server_cpu, client_cpu = process_cpu_s(server.proc.pid) - s0, time.process_time() - c0
            row_l, row_h = _row(local, 0, len(trace)), _row(remote, 0, len(trace))
            tokens = sum(r["output_tokens"] for r in local.records)
            row_l["cpu_ms_per_tok"] = 1e3 * local_cpu / tokens
            row_h["cpu_ms_per_tok"] = 1e3 * server_cpu / tokens
            row_h["client_cpu_ms_per_tok"] = 1e3 * client_cpu / tokens
            bad = [i for i in local.outputs if local.outputs[i] != remote.outputs.get(i)]
            log(f"outputs{tag}: {len(trace) - len(bad)}/{len(trace)} requests identical over HTTP and in-process")
            if exact and bad:
                raise serving.ParityError(f"fp32: HTTP outputs differ from in-process ones for requests {bad[:8]}")
            row_l["check"] = "ok" if not check["near_ties"] else f"ok, {len(check['near_ties'])} near tie(s)"
            row_h["check"] = "= in-process" if not bad else f"{len(bad)} differ (near ties)"
            rows += [row_l, row_h]
            pairs.append((row_l, row_h))
            differ += bad
    finally:
        rc = server.stop()
    if overload > 0:
        base = capacity if capacity is not None else rate
        heavy = serving.with_rate(trace, overload * base, opts.seed + 11)
        log(f"overload: the trace at {overload:g} x {'capacity' if capacity else 'the rate'} = "
            f"{overload * base:.3g}/s against a server with --max_queue={settings.max_num_seqs} ...")
        server = ServerProcess(server_args(opts, settings, policy, settings.max_num_seqs, tokenizer),
                               logs / "serving_http_overload_server.log")
        try:
            over, rejected = http_replay(server.url, name, heavy, f"overload {overload:g}x", allow_429=True)
            alive = server.proc.poll() is None
        finally:
            server.stop()
        if not alive:
            raise HTTPReplayError("overload: the server died")
        rows.append(_row(over, rejected, len(heavy)))
        rows[-1]["check"] = f"{len(over.records)} done + {rejected} 429, KV empty"
        log(f"overload: {len(over.records)} completed with every token, {rejected} refused with 429, the server "
            f"alive and its KV pool empty afterwards")

    med = lambda f: common.percentile([f(e, h) for e, h in pairs], 50)  # noqa: E731 - median over the repeats
    eng, http = pairs[0]
    cost = med(lambda e, h: 1.0 - h["out_tok_per_s"] / e["out_tok_per_s"])
    itl_ratio = med(lambda e, h: h["itl_p99_ms"] / e["tpot_p99_ms"])
    verdict = {
        "repeats": repeats, "tok_s_cost": cost, "tok_s_cost_ok": not cost > TARGET_TOK_COST,
        "tok_s_cost_each": [1.0 - h["out_tok_per_s"] / e["out_tok_per_s"] for e, h in pairs],
        "itl_p99_over_engine_tpot_p99": itl_ratio, "itl_ok": not itl_ratio > TARGET_ITL_RATIO,
        # like for like: the gaps the client sees vs the gaps the engine's steps make (prefill chunks
        # interrupt decoding in both), and TPOT over HTTP vs in-process
        "itl_p99_over_engine_itl_p99": med(lambda e, h: h["itl_p99_ms"] / e["itl_p99_ms"]),
        "tpot_p99_over_engine_tpot_p99": med(lambda e, h: h["tpot_p99_ms"] / e["tpot_p99_ms"]),
        # CPU time per output token (load-independent): the server process vs the in-process run
        "server_cpu_over_engine_cpu": med(lambda e, h: h["cpu_ms_per_tok"] / e["cpu_ms_per_tok"]),
        "client_cpu_ms_per_tok": med(lambda e, h: h["client_cpu_ms_per_tok"]),
        "engine_itl_p99_ms": eng["itl_p99_ms"], "engine_tpot_p99_ms": eng["tpot_p99_ms"],
        "http_itl_p99_ms": http["itl_p99_ms"], "server_exit": rc}
    title = (f"bench.serving --backend=compare: {opts.checkpoint} {common.dtype_name(opts.dtype)} {policy} on {dev}, "
             f"{common.today()}, {len(trace)} requests at {rate:.3g}/s" + ("" if cuda else " (CPU run)"))
    common.print_table(rows, HTTP_COLUMNS, title="\n" + title)
    each = " (median of " + str(repeats) + " pairs)" if repeats > 1 else ""
    log(f"server cost: 1 - HTTP / in-process output tok/s = {100 * cost:+.1f}%{each} (target <= "
        f"{100 * TARGET_TOK_COST:.0f}%: {'met' if verdict['tok_s_cost_ok'] else 'MISSED'}); first pair "
        f"{http['out_tok_per_s']:.1f} vs {eng['out_tok_per_s']:.1f} tok/s")
    log(f"streaming: HTTP ITL p99 / the engine's TPOT p99 (first pair {http['itl_p99_ms']:.2f} / "
        f"{eng['tpot_p99_ms']:.2f} ms) = {itl_ratio:.2f}x{each} (target <= {TARGET_ITL_RATIO:.2f}x: "
        f"{'met' if verdict['itl_ok'] else 'MISSED'}); "
        f"like for like: HTTP ITL p99 / in-process ITL p99 {verdict['itl_p99_over_engine_itl_p99']:.2f}x (the "
        f"engine's own ITL p99 is {eng['itl_p99_ms'] / eng['tpot_p99_ms']:.2f}x its TPOT p99: prefill chunks "
        f"interrupt decoding), HTTP TPOT p99 / in-process TPOT p99 {verdict['tpot_p99_over_engine_tpot_p99']:.2f}x")
    log(f"CPU time per output token: the server process {verdict['server_cpu_over_engine_cpu']:.2f}x the in-process "
        f"run's (the client: {verdict['client_cpu_ms_per_tok']:.2f} ms/token more, in the benchmark process)"
        + (f"; medians over {repeats} repeats, tok/s cost each: "
           + ", ".join(f"{100 * c:+.1f}%" for c in verdict["tok_s_cost_each"]) if repeats > 1 else ""))
    if out_dir is not None:
        extra = {"model": opts.checkpoint, "dtype": common.dtype_name(opts.dtype), "policy": policy,
                 "num_requests": len(trace), "rate_rps": rate}
        records = _records(rows, extra)
        records += [{"name": "serving_http/server tok/s cost", "value": cost, "unit": "fraction", **extra},
                    {"name": "serving_http/http itl p99 / engine tpot p99", "value": itl_ratio, "unit": "x", **extra},
                    {"name": "serving_http/http itl p99 / engine itl p99", "unit": "x", **extra,
                     "value": verdict["itl_p99_over_engine_itl_p99"]},
                    {"name": "serving_http/http tpot p99 / engine tpot p99", "unit": "x", **extra,
                     "value": verdict["tpot_p99_over_engine_tpot_p99"]}]
        paths = common.write_results(out_dir, "serving_http", rows, records, command=common.command_line("serving"),
                                     device=dev)
        (out_dir / "serving_http_meta.json").write_text(json.dumps(
            {"verdict": verdict, "engine": settings.__dict__, "check": check, "capacity_rps": capacity,
             "rate_rps": rate, "server_log": str(logs / "serving_http_server.log")}, indent=1, default=str) + "\n")
        if opts.plot:
            _plot(out_dir / "serving_http.png", rows, title)
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    return {"rows": rows, "verdict": verdict, "differ": differ}


HTTP_COLUMNS = [("policy", "run"), ("completed", "done"), ("rejected_429", "429"), ("req_per_s", "req/s"),
                ("out_tok_per_s", "out tok/s"), ("ttft_p50_ms", "TTFT p50 ms"), ("ttft_p99_ms", "p99"),
                ("tpot_p50_ms", "TPOT p50 ms"), ("tpot_p99_ms", "p99"), ("itl_p50_ms", "ITL p50 ms"),
                ("itl_p99_ms", "p99"), ("e2e_p50_s", "E2E p50 s"), ("e2e_p99_s", "p99"), ("preemptions", "preempt"),
                ("cpu_ms_per_tok", "CPU ms/tok"), ("client_cpu_ms_per_tok", "client"), ("check", "check")]


def _row(res, rejected: int, sent: int) -> dict[str, Any]:
    from bench.serving import summarize

    row = summarize(res) if res.records else {"policy": res.policy, "completed": 0}
    if not res.steps:  # over HTTP: no KV samples
        for k in ("kv_util_mean", "kv_util_peak", "kv_waste_mean", "kv_waste_at_peak", "mean_running", "steps",
                  "usable_blocks"):
            row.pop(k, None)
    row.update({"rejected_429": rejected, "sent": sent})
    return row


def _records(rows: list[dict[str, Any]], extra: dict[str, Any]) -> list[dict[str, Any]]:
    keys = [("out_tok_per_s", "output tok/s", "tok/s"), ("req_per_s", "requests/s", "req/s"),
            ("ttft_p50_ms", "ttft p50 ms", "ms"), ("ttft_p99_ms", "ttft p99 ms", "ms"),
            ("tpot_p99_ms", "tpot p99 ms", "ms"), ("itl_p99_ms", "itl p99 ms", "ms"), ("e2e_p99_s", "e2e p99 s", "s"),
            ("completed", "completed", "count"), ("rejected_429", "rejected 429", "count")]
    return [{"name": f"serving_http/{r['policy']} {suffix}", "value": r[k], "unit": unit, **extra}
            for r in rows for k, suffix, unit in keys if r.get(k) is not None]


def _plot(path: Path, rows: list[dict[str, Any]], title: str) -> Path:
    names = [r["policy"] for r in rows]

    def series(*keys_labels):
        return {label: (names, [r.get(k) for r in rows]) for k, label in keys_labels}

    panels = [
        {"title": "throughput", "ylabel": "output tokens/s", "series": series(("out_tok_per_s", "output tok/s")),
         "hlines": {"0": 0.0}},
        {"title": "time to first token", "ylabel": "ms", "logy": True,
         "series": series(("ttft_p50_ms", "p50"), ("ttft_p99_ms", "p99"))},
        {"title": "time per output token and inter-token gap", "ylabel": "ms",
         "series": series(("tpot_p50_ms", "TPOT p50"), ("tpot_p99_ms", "TPOT p99"), ("itl_p99_ms", "ITL p99"))},
    ]
    return common.plot_panels(path, panels, title=title, ncols=3)
