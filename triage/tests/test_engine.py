"""Signatures, known-fix ranking and feedback, the knowledge base, the optional LLM endpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


from triage import kb, llm
from triage import signature as sig
from triage.engine import Triage
from triage.similarity import wilson_lower
from triage.store import open_store


def rec(etype, msg, frames=()):
    return {"exception": {"type": etype, "message": msg, "traceback": list(frames)}}


def test_normalization_placeholders_and_signature():
    text = ("mat1 and mat2 shapes cannot be multiplied (4x64 and 32x64) at /home/u/lab/model/llama.py:412, "
            "ptr 0x7f3a2c001e40, torch.float16, Tried to allocate 2.00 GiB, torch.Size([3, 5]), [2, 8, 128], line 33")
    n = sig.normalize_text(text)
    for gone in ("4x64", "/home/u", "412", "0x7f", "float16", "2.00 GiB", "[3, 5]", "[2, 8, 128]", "33"):
        assert gone not in n, (gone, n)
    for kept in ("mat1 and mat2", "llama.py", "<shape>", "<addr>", "<dtype>", "<size>", "line <n>"):
        assert kept in n, (kept, n)
    a = rec("RuntimeError", "mat1 and mat2 shapes cannot be multiplied (4x64 and 32x64)",
            ["/a/model/llama.py:12 in forward: x", "/a/model/layers.py:99 in linear: y"])
    b = rec("RuntimeError", "mat1 and mat2 shapes cannot be multiplied (8x128 and 16x128)",
            ["/c/llama.py:15 in forward: x", "/c/layers.py:98 in linear: y"])
    assert sig.signature(a) == sig.signature(b)
    other_frame = rec("RuntimeError", "mat1 and mat2 shapes cannot be multiplied (8x128 and 16x128)",
                      ["/c/llama.py:15 in forward: x", "/c/mlp.py:98 in gate: y"])
    assert sig.signature(a) != sig.signature(other_frame), "the innermost frames are part of the signature"
    assert sig.signature(a) != sig.signature(rec("ValueError", a["exception"]["message"]))


def test_wilson_lower_bound():
    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(9, 10) > wilson_lower(1, 1) > 0
    assert wilson_lower(90, 100) > wilson_lower(9, 10)
    assert abs(wilson_lower(1, 1) - 0.2065) < 1e-3


def test_feedback_flips_the_order_of_two_fixes(tmp_path):
    tri = Triage(open_store(str(tmp_path / "t.db")))
    failure = tri.ingest(rec("IndexError", "index out of range in self", ["/x/llama.py:3 in forward: e"]))
    fid = failure["failure_id"]
    a = tri.feedback(failure_id=fid, my_fix="clamp token ids to the vocab")["fix"]["id"]
    b = tri.feedback(failure_id=fid, my_fix="use the checkpoint's tokenizer", worked=False)["fix"]["id"]
    new = rec("IndexError", "index out of range in self", ["/y/llama.py:7 in forward: e"])
    order = [f["fix_id"] for f in tri.suggest(new)["fixes"]]
    assert order == [a, b]
    for _ in range(4):
        tri.feedback(fix_id=b, worked=True)
        tri.feedback(fix_id=a, worked=False)
    ranked = tri.suggest(new)["fixes"]
    assert [f["fix_id"] for f in ranked] == [b, a], ranked
    assert ranked[0]["worked"] == 4 and ranked[0]["tried"] == 5


def test_similar_but_not_exact_and_the_threshold(tmp_path):
    tri = Triage(open_store(str(tmp_path / "t.db")))
    out = tri.ingest(rec("model.weights.CheckpointError",
                         "checkpoint directory not found: /data/llama; expected an HF-layout directory"))
    tri.feedback(failure_id=out["failure_id"], my_fix="pass the directory holding config.json")
    near = tri.suggest(rec("model.weights.CheckpointError",
                           "checkpoint directory not found: /other/x; expected an HF-layout directory, or lab-small"))
    assert near["status"] == "known" and near["fixes"][0]["match"] == "similar"
    assert 0.5 <= near["fixes"][0]["similarity"] < 1
    far = tri.suggest(rec("ValueError", "temperature must be 0 (greedy) or a finite value >= 1e-05, got -1"))
    assert far["status"] != "known" and not far["fixes"]
    loose = Triage(tri.store, threshold=0.0)  # planted: no threshold -> anything sharing a word is "known"
    assert loose.suggest(rec("ValueError", "directory must be empty"))["status"] == "known"


def test_knowledge_base_is_complete_and_matches_real_texts():
    entries = kb.load()
    areas = {e["area"] for e in entries}
    for area in ("torch.export", "dynamo", "ONNX", "AOTInductor", "TensorRT", "Torch-TensorRT", "Triton", "NCCL",
                 "CUDA", "Bazel", "pip"):
        assert area in areas, area
    assert all(e["source"].startswith("https://") for e in entries)
    hits = kb.search("triton.runtime.errors.OutOfResources: out of resource: shared memory, Required: 131072, "
                     "Hardware limit: 101376.", "")
    assert hits[0]["id"] == "triton-out-of-shared-memory"
    assert kb.search("RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:839, unhandled system error", "")[0]["id"] \
        == "nccl-unhandled-system-error"
    assert kb.search("ValueError: temperature must be >= 0", "ValueError: temperature must be >= <num>") == []


class _FakeChat(BaseHTTPRequestHandler):
    seen = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeChat.seen.append((self.path, self.headers.get("Authorization"), body))
        out = json.dumps({"model": "fake-1", "choices": [{"message": {"role": "assistant",
                                                                      "content": "Lower num_stages."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_llm_only_when_configured_and_stored_with_provenance(tmp_path, monkeypatch):
    monkeypatch.delenv("LAB_TRIAGE_LLM_URL", raising=False)
    monkeypatch.delenv("LAB_TRIAGE_LLM_KEY", raising=False)
    assert llm.from_env() is None and llm.from_env(url="http://127.0.0.1:1") is None
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = llm.from_env(url=f"http://127.0.0.1:{server.server_port}/v1", key="k123")
        tri = Triage(open_store(str(tmp_path / "t.db")), endpoint=endpoint)
        unknown = rec("my.pkg.WeirdError", "the frobnicator at /tmp/abc/x.py:3 refused 0xdeadbeef")
        out = tri.ingest(unknown)
        assert out["status"] == "llm" and out["llm"]["text"] == "Lower num_stages."
        path, auth, body = _FakeChat.seen[-1]
        assert path == "/v1/chat/completions" and auth == "Bearer k123"
        sent = body["messages"][1]["content"]
        assert "/tmp/abc" not in sent and "0xdeadbeef" not in sent, "only the normalized failure leaves"
        fix = tri.store.fix(out["llm"]["fix_id"])
        assert fix["origin"] == "llm:fake-1" or fix["origin"].startswith("llm:")
        assert fix["provenance"]["endpoint"].endswith("/v1") and fix["provenance"]["prompt_sha1"]
    finally:
        server.shutdown()
    dead = Triage(open_store(str(tmp_path / "u.db")), endpoint=llm.Endpoint("http://127.0.0.1:9", "k", timeout=2))
    out = dead.ingest(rec("my.pkg.WeirdError", "nothing known"))
    assert out["status"] == "open" and "no usable answer" in out["llm"]["error"]


def test_fixes_written_elsewhere_show_up_after_the_refresh(tmp_path, monkeypatch):
    """The in-memory fixes: another writer's fix is seen once REFRESH_S has passed, not before."""
    from triage import engine

    db = str(tmp_path / "t.db")
    tri = Triage(open_store(db))
    r = rec("IndexError", "index out of range in self", ["/x/llama.py:3 in forward: e"])
    out = tri.ingest(r)
    assert out["status"] != "known"
    other = Triage(open_store(db))  # another process (the CLI) on the same database
    other.feedback(failure_id=out["failure_id"], my_fix="clamp token ids to the vocab")
    monkeypatch.setattr(engine, "REFRESH_S", 3600.0)
    assert tri.suggest(r)["status"] != "known", "within REFRESH_S the snapshot is used"
    monkeypatch.setattr(engine, "REFRESH_S", 0.0)
    assert tri.suggest(r)["status"] == "known"
    fix_id = tri.suggest(r)["fixes"][0]["fix_id"]
    other.feedback(fix_id=fix_id, worked=False)
    assert tri.suggest(r)["fixes"][0]["tried"] == 2, "outcomes recorded elsewhere refresh it too"
