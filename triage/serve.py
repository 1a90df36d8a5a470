"""`tools/bazel run //triage:serve -- [--host 127.0.0.1] [--port 8377] [--db URL]`: the triage service.

FastAPI + uvicorn. Loopback by default; bound to any other address it refuses to start
without a bearer token (--token or $LAB_TRIAGE_TOKEN), and then every route but /healthz
needs `Authorization: Bearer <token>`.

  POST /ingest    a failure-log record -> stored (committed before the reply), its suggestions
  POST /suggest   a record, or {"failure_id": N} -> suggestions (nothing stored)
  POST /feedback  {"fix_id", "worked"} | {"failure_id", "my_fix"} | {"failure_id", "kb_id", "worked"}
  POST /reports   {"kind": "divergence" | "advice", "body": {...}} -> stored report id
  GET  /failures/{id}.html   one failure as HTML (every value escaped)
  GET  /metrics   Prometheus: requests, latency histograms, match hit rate, acceptance rate, open failures
  GET  /healthz
Bodies over --max_body bytes get 413, malformed JSON 400; SQL is always parameterized;
log text is data only (never executed, never passed to a shell).
"""

import argparse
import hmac
import html
import json
import os
import sys
import threading
import time
from typing import Any, Optional

from triage import llm
from triage.engine import Triage
from triage.store import StoreError, open_store

MAX_BODY = 256 * 1024  # a record holds at most 12 frames and 4000-char messages: 256 KiB is generous
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Metrics:
    """The service's Prometheus metrics in their own registry (one app, one registry: tests can make many)."""

    def __init__(self, store):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("triage_requests_total", "HTTP requests", ["route", "code"], registry=self.registry)
        self.latency = Histogram("triage_request_seconds", "request latency", ["route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.suggestions = Counter("triage_suggestions_total", "suggestions answered, by status (known/kb/llm/open)",
                                   ["status"], registry=self.registry)
        self.feedback = Counter("triage_feedback_total", "feedback received, by outcome", ["worked"],
                                registry=self.registry)
        self.match_rate = Gauge("triage_match_hit_rate", "fraction of suggestions with a known fix",
                                registry=self.registry)
        self.acceptance = Gauge("triage_suggestion_acceptance_rate", "fraction of feedback that says worked",
                                registry=self.registry)
        open_gauge = Gauge("triage_open_failures", "failures without a known or working fix", registry=self.registry)
        open_gauge.set_function(lambda: store.count_failures("open"))

        self._lock = threading.Lock()
        self._status = {"known": 0, "kb": 0, "llm": 0, "open": 0}
        self._worked = {True: 0, False: 0}

    def observe_suggestion(self, status: str) -> None:
        """Count one answered suggestion; update the hit rate."""
        self.suggestions.labels(status).inc()
        with self._lock:
            self._status[status] = self._status.get(status, 0) + 1
            self.match_rate.set(self._status["known"] / sum(self._status.values()))

    def observe_feedback(self, worked: bool) -> None:
        """Count one feedback; update the acceptance rate."""
        self.feedback.labels("true" if worked else "false").inc()
        with self._lock:
            self._worked[bool(worked)] += 1
            self.acceptance.set(self._worked[True] / (self._worked[True] + self._worked[False]))


def make_app(db: Optional[str] = None, token: Optional[str] = None, max_body: int = MAX_BODY,
             endpoint: Optional[llm.Endpoint] = None):
    """The FastAPI app over the store at `db`."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    tri = Triage(open_store(db), endpoint=endpoint)
    metrics = Metrics(tri.store)
    app = FastAPI(title="lab triage", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.triage = tri

    def error(code: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=code)

    def reply(out: Any) -> Response:
        """The answer as JSON, without FastAPI's recursive jsonable_encoder (our dicts are JSON already)."""
        return Response(json.dumps(out, default=str).encode(), media_type="application/json")

    async def work(fn, *args):
        """Run a store/engine call. Without an LLM endpoint it is CPU and SQLite work under the GIL:
        run inline on the event loop (one thread, one database connection per worker; a thread hop
        buys no parallelism). With an endpoint a suggest may wait on the network: a worker thread."""
        if endpoint is None:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    app.add_middleware(_Guard, token=token, max_body=max_body, metrics=metrics)

    def post(path: str):
        """A plain Starlette route: the handler takes the Request and returns a Response, so FastAPI's
        per-request dependency solving and response encoding are skipped on the hot paths."""
        def register(fn):
            app.add_route(path, fn, methods=["POST"])
            return fn
        return register

    async def body(request: Request) -> Any:
        raw = b""
        async for chunk in request.stream():  # a chunked body without Content-Length is capped too
            raw += chunk
            if len(raw) > max_body:
                raise _HTTPError(413, f"body over {max_body} bytes")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise _HTTPError(400, f"malformed JSON ({e})") from None

    @app.exception_handler(_HTTPError)
    async def http_error(request: Request, exc: _HTTPError):
        return error(exc.code, exc.message)

    def record_of(obj: Any) -> dict:
        if not isinstance(obj, dict) or not isinstance(obj.get("exception", {}), dict):
            raise _HTTPError(400, "expected a failure record: a JSON object with an 'exception' object")
        if "exception" not in obj and "message" not in obj:
            raise _HTTPError(400, "a failure record needs 'exception' {type, message, traceback}")
        return obj

    @app.get("/healthz")
    async def healthz():
        return {"ok": True, "schema": tri.store.version()}

    @post("/ingest")
    async def ingest(request: Request):
        rec = record_of(await body(request))
        out = await work(tri.ingest, rec, "api")
        metrics.observe_suggestion(out["status"])
        return reply(out)

    @post("/suggest")
    async def suggest(request: Request):
        obj = await body(request)
        if isinstance(obj, dict) and set(obj) == {"failure_id"}:
            row = await work(tri.store.failure, _int(obj["failure_id"], "failure_id"))
            if row is None:
                raise _HTTPError(404, "no such failure")
            out = await work(tri.suggest, row["record"], row["id"])
        else:
            out = await work(tri.suggest, record_of(obj))
        metrics.observe_suggestion(out["status"])
        return reply(out)

    @post("/feedback")
    async def feedback(request: Request):
        obj = await body(request)
        if not isinstance(obj, dict):
            raise _HTTPError(400, "expected a JSON object")
        worked = obj.get("worked")
        if worked is not None and not isinstance(worked, bool):
            raise _HTTPError(400, "'worked' must be true or false")
        kwargs = dict(failure_id=_int(obj.get("failure_id"), "failure_id"), fix_id=_int(obj.get("fix_id"), "fix_id"),
                      worked=worked, my_fix=_str(obj.get("my_fix"), "my_fix"), note=_str(obj.get("note"), "note") or "",
                      kb_id=_str(obj.get("kb_id"), "kb_id"))
        try:
            out = await work(lambda: tri.feedback(**kwargs))
        except KeyError as e:
            raise _HTTPError(404, str(e).strip("'\"")) from None
        except ValueError as e:
            raise _HTTPError(400, str(e)) from None
        metrics.observe_feedback(True if worked is None else worked)
        return reply(out)

    @post("/reports")
    async def reports(request: Request):
        obj = await body(request)
        if not isinstance(obj, dict) or obj.get("kind") not in ("divergence", "advice") or \
                not isinstance(obj.get("body"), dict):
            raise _HTTPError(400, "expected {\"kind\": \"divergence\" | \"advice\", \"body\": {...}}")
        rid = await work(tri.store.add_report, obj["kind"], obj["body"])
        return reply({"report_id": rid})

    @app.get("/failures/{fid}.html")
    async def failure_html(fid: int):
        row = await work(tri.store.failure, fid)
        if row is None:
            return HTMLResponse("<p>no such failure</p>", status_code=404)
        out = await work(tri.suggest, row["record"], None, False)
        e = html.escape
        items = "".join(f"<li>{e(f['text'])} <small>({e(f['origin'])}, worked {f['worked']}/{f['tried']})</small></li>"
                        for f in out["fixes"])
        page = (f"<!doctype html><title>failure {row['id']}</title><h1>failure {row['id']}: {e(row['status'])}</h1>"
                f"<p>{e(row['binary_name'])} at {e(row['time'])}</p><pre>{e(row['normalized'])}</pre>"
                f"<pre>{e(json.dumps(row['record'], indent=1))}</pre><h2>known fixes</h2><ul>{items}</ul>")
        return HTMLResponse(page)

    @app.get("/metrics")
    async def prometheus():
        data = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return app


class _Guard:
    """Pure ASGI middleware (cheaper than @app.middleware("http")): the bearer token, a declared
    Content-Length over max_body (413), and per-route request counts and latency."""

    ROUTES = {"/ingest", "/suggest", "/feedback", "/reports", "/metrics", "/healthz"}

    def __init__(self, app, token: Optional[str], max_body: int, metrics: "Metrics"):
        self.app, self.token, self.max_body, self.metrics = app, token, max_body, metrics
        self.expected = f"Bearer {token}".encode() if token else b""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"]
        route = path if path in self.ROUTES else "other"
        headers = dict(scope["headers"])
        if self.token and path != "/healthz" and not hmac.compare_digest(headers.get(b"authorization", b""),
                                                                        self.expected):
            return await self._refuse(send, route, 401, "missing or wrong bearer token")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await self._refuse(send, route, 413, f"body over {self.max_body} bytes")
        code = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                code[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(code[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    async def _refuse(self, send, route: str, code: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        self.metrics.requests.labels(route, str(code)).inc()


class _HTTPError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _int(value: Any, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _HTTPError(400, f"'{name}' must be an integer")
    return value


def _str(value: Any, name: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _HTTPError(400, f"'{name}' must be a string")
    return value


def main(argv=None) -> int:
    """Check flags, then serve until interrupted."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    p.add_argument("--port", type=int, default=8377)
    p.add_argument("--db", help="SQLite path or postgresql:// URL (default $LAB_TRIAGE_DB or ~/.cache/lab/triage.db)")
    p.add_argument("--token", default=os.environ.get("LAB_TRIAGE_TOKEN"), help="bearer token ($LAB_TRIAGE_TOKEN)")
    p.add_argument("--max_body", type=int, default=MAX_BODY, help="largest request body in bytes (413 above)")
    p.add_argument("--llm_url")
    p.add_argument("--llm_key")
    a = p.parse_args(argv)
    if a.host not in LOOPBACK and not a.token:
        print(f"error: --host {a.host} is not loopback: set --token or $LAB_TRIAGE_TOKEN", file=sys.stderr)
        return 2
    if not 0 < a.port < 65536:
        print(f"error: --port {a.port} is not a TCP port", file=sys.stderr)
        return 2
    from triage.cli import db_url

    try:
        app = make_app(db_url(a.db), a.token, a.max_body, llm.from_env(a.llm_url, a.llm_key))
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    # Keep idle connections 75 s (uvicorn's default is 5): a client pacing requests seconds apart
    # otherwise races the server's close of its idle connection.
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False, timeout_keep_alive=75)
    return 0


if __name__ == "__main__":
    sys.exit(main())
