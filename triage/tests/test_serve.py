"""The service over real HTTP on loopback: routes, 413/400/401, escaping, metrics, kill -9 durability (small)."""

import json
import urllib.request

import pytest

from triage import serve
from triage.client import TriageError
from triage.server_proc import Server


def rec(msg, path="/a/llama.py"):
    return {"binary": "export.aoti", "exception": {"type": "RuntimeError", "message": msg,
                                                   "traceback": [f"{path}:3 in forward: x"]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(str(tmp_path_factory.mktemp("svc") / "t.db"), "--max_body", "4096").start()
    yield s
    s.stop()


def _raw(server, path, data, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_ingest_suggest_feedback_metrics(server):
    c = server.client
    first = c.ingest(rec("mat1 and mat2 shapes cannot be multiplied (4x64 and 32x64)"))
    assert first["status"] == "kb" and first["kb"][0]["id"] == "torch-shape-mismatch-matmul"
    fix = c.feedback(failure_id=first["failure_id"], my_fix="set hidden_size from the checkpoint")["fix"]
    again = c.suggest(rec("mat1 and mat2 shapes cannot be multiplied (8x16 and 9x16)", "/b/llama.py"))
    assert again["status"] == "known" and again["fixes"][0]["fix_id"] == fix["id"]
    c.feedback(fix_id=fix["id"], worked=False, note="not this time")
    assert c.suggest(failure_id=first["failure_id"])["fixes"][0]["tried"] == 2
    assert c.report("advice", {"op": "rms_norm", "bound": "memory"})["report_id"] >= 1
    text = c.metrics()
    for name in ("triage_requests_total", "triage_request_seconds_bucket", "triage_match_hit_rate",
                 "triage_suggestion_acceptance_rate", "triage_open_failures"):
        assert name in text, name
    assert "triage_suggestion_acceptance_rate 0.5" in text  # one "my fix", one "did not work"
    assert 'triage_suggestions_total{status="known"} 2.0' in text and 'triage_suggestions_total{status="kb"} 1.0' in text


def test_bad_requests(server):
    assert _raw(server, "/ingest", b"x" * 5000)[0] == 413
    assert _raw(server, "/ingest", b"{not json")[0] == 400
    assert _raw(server, "/ingest", b"[1, 2]")[0] == 400
    assert _raw(server, "/feedback", json.dumps({"fix_id": "1; DROP TABLE fixes", "worked": True}).encode())[0] == 400
    assert _raw(server, "/feedback", json.dumps({"fix_id": 999, "worked": True}).encode())[0] == 404
    with pytest.raises(TriageError) as e:
        server.client.suggest(failure_id=12345)
    assert e.value.status == 404


def test_html_is_escaped(server):
    out = server.client.ingest(rec("<script>alert(1)</script> & 'quotes'"))
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/failures/{out['failure_id']}.html") as r:
        page = r.read().decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_token_required_off_loopback(tmp_path, capsys):
    assert serve.main(["--host", "0.0.0.0", "--db", str(tmp_path / "x.db")]) == 2
    assert "--token" in capsys.readouterr().err
    s = Server(str(tmp_path / "t.db"), token="s3cret").start()
    try:
        assert s.client.health()["ok"]
        assert s.client.ingest(rec("boom"))["failure_id"] == 1
        assert _raw(s, "/ingest", json.dumps(rec("x")).encode())[0] == 401
        assert _raw(s, "/ingest", json.dumps(rec("x")).encode(), {"Authorization": "Bearer wrong"})[0] == 401
    finally:
        s.stop()


def test_kill9_loses_no_acknowledged_record(tmp_path):
    """The load test's durability phase, small: 40 clients, kill -9 after 60 acknowledged ingests."""
    from triage import loadtest

    assert loadtest.main(["--clients", "40", "--requests", "200", "--kill_after", "60", "--p99_ms", "1e9",
                          "--no_write"]) == 0
